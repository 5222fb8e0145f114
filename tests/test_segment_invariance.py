"""Packing invariance: with ``segment_ids`` every sequence gets what it gets alone.

Reference: each sequence run alone, unpadded (eval mode), or the same sequences as a
right-padded batch (train mode: the same batch statistics). Float64 throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from seqpad.collate import Batch, Collator
from seqpad.masks import lengths_to_mask
from seqpad.models import build_model
from seqpad.nn import (
    MaskedBatchNorm1d,
    MaskedConv1d,
    MaskedEmbedding,
    MaskedGRU,
    MaskedLSTM,
    MaskedMaxPool,
    MaskedMeanPool,
    MaskedSumPool,
)
from seqpad.packing import PackingCollator, pack, unpack
from seqpad.tokenizer import Tokenizer

C = 4
TOK = Tokenizer("protein")
LENGTHS = st.lists(st.integers(1, 12), min_size=1, max_size=6)
ROW = st.integers(12, 20)


def _layout(lengths: list[int], row_length: int) -> Batch:
    items = [np.full(n, 5, dtype=np.uint8) for n in lengths]
    return PackingCollator(TOK, row_length)(items)


def _seqs(lengths: list[int], seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(C, n, generator=g, dtype=torch.float64) for n in lengths]


# name -> factory; each takes (B, C, L) float input
BLOCKS: dict[str, Callable[[], nn.Module]] = {
    "conv_k3": lambda: MaskedConv1d(C, 5, 3),
    "conv_k4_d3": lambda: MaskedConv1d(C, 5, 4, dilation=3),
    "conv_causal_groups": lambda: MaskedConv1d(C, 6, 3, dilation=2, groups=2, causal=True),
    "lstm_bi_2": lambda: MaskedLSTM(C, 3, 2, bidirectional=True),
    "gru_bi": lambda: MaskedGRU(C, 3, 1, bidirectional=True),
    "batchnorm": lambda: MaskedBatchNorm1d(C),
}
POOLS = {"mean": MaskedMeanPool, "max": MaskedMaxPool, "sum": MaskedSumPool}


def _build(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    block = factory().double()
    if isinstance(block, MaskedBatchNorm1d):  # non-trivial running statistics
        block.running_mean.uniform_(-1, 1)
        block.running_var.uniform_(0.5, 2)
    return block.eval()


@pytest.mark.parametrize("name", sorted(BLOCKS))
@settings(max_examples=12, deadline=None)
@given(lengths=LENGTHS, row=ROW, seed=st.integers(0, 100))
def test_block_eval_equals_alone(name: str, lengths: list[int], row: int, seed: int) -> None:
    block = _build(BLOCKS[name])
    batch = _layout(lengths, row)
    seqs = _seqs(lengths, seed)
    # Padding holds garbage: no real output may read it.
    x = pack(seqs, batch, value=7.5).requires_grad_(True)
    out = block(x, segment_ids=batch.segment_ids)
    assert out.shape[0] == x.shape[0] and out.shape[-1] == x.shape[-1]
    assert not out.masked_select(~batch.mask).any(), "nonzero output at padding"
    for s, got in zip(seqs, unpack(out, batch)):  # noqa: B905
        ref = block(s[None])[0]
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # No gradient crosses a segment boundary: sequence 0's outputs see only sequence 0.
    unpack(out, batch)[0].sum().backward()
    grad = x.grad
    assert grad is not None
    own = torch.zeros_like(batch.segment_ids, dtype=torch.bool)
    r, o, n = int(batch.rows[0]), int(batch.offsets[0]), int(batch.lengths[0])
    own[r, o:o + n] = True
    assert not grad.masked_select(~own[:, None, :].expand_as(grad)).any()


@pytest.mark.parametrize("rnn", [MaskedLSTM, MaskedGRU])
@settings(max_examples=8, deadline=None)
@given(lengths=LENGTHS, row=ROW, seed=st.integers(0, 100))
def test_rnn_state_per_segment(rnn: type, lengths: list[int], row: int, seed: int) -> None:
    block = _build(lambda: rnn(C, 3, 2, bidirectional=True))
    batch = _layout(lengths, row)
    seqs = _seqs(lengths, seed)
    _, state = block(pack(seqs, batch), segment_ids=batch.segment_ids, return_state=True)
    for i, s in enumerate(seqs):
        _, ref = block(s[None], return_state=True)
        pairs = zip(state, ref) if isinstance(ref, tuple) else [(state, ref)]  # noqa: B905
        for a, b in pairs:
            torch.testing.assert_close(a[:, i], b[:, 0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(POOLS))
@settings(max_examples=12, deadline=None)
@given(lengths=LENGTHS, row=ROW, seed=st.integers(0, 100))
def test_pooling_one_vector_per_segment(kind: str, lengths: list[int], row: int,
                                        seed: int) -> None:
    batch = _layout(lengths, row)
    seqs = _seqs(lengths, seed)
    got = POOLS[kind]()(pack(seqs, batch), segment_ids=batch.segment_ids)
    ref = torch.stack([{"mean": s.mean(-1), "max": s.amax(-1), "sum": s.sum(-1)}[kind]
                       for s in seqs])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(lengths=LENGTHS, row=ROW, seed=st.integers(0, 100))
def test_batchnorm_train_same_statistics(lengths: list[int], row: int, seed: int) -> None:
    """Packed and right-padded batches of the same sequences: same outputs and stats."""
    if sum(lengths) < 2:
        return  # one real value: batch norm raises either way
    packed_bn = _build(lambda: MaskedBatchNorm1d(C)).train()
    padded_bn = _build(lambda: MaskedBatchNorm1d(C)).train()
    batch = _layout(lengths, row)
    seqs = _seqs(lengths, seed)
    out = packed_bn(pack(seqs, batch), segment_ids=batch.segment_ids)
    L = max(lengths)
    padded = torch.stack([nn.functional.pad(s, (0, L - s.shape[-1])) for s in seqs])
    ref = padded_bn(padded, lengths_to_mask(lengths, L))
    for i, got in enumerate(unpack(out, batch)):
        torch.testing.assert_close(got, ref[i, :, :lengths[i]], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(packed_bn.running_mean, padded_bn.running_mean)
    torch.testing.assert_close(packed_bn.running_var, padded_bn.running_var)


def test_conv_ignores_nan_in_padding() -> None:
    conv = _build(lambda: MaskedConv1d(C, 3, 5, dilation=2))
    batch = _layout([3, 6, 2, 5], 9)
    seqs = _seqs([3, 6, 2, 5], 0)
    out = conv(pack(seqs, batch, value=float("nan")), segment_ids=batch.segment_ids)
    assert not out.isnan().any()
    for s, got in zip(seqs, unpack(out, batch)):  # noqa: B905
        torch.testing.assert_close(got, conv(s[None])[0], rtol=1e-10, atol=1e-10)


def test_embedding_segment_ids() -> None:
    emb = MaskedEmbedding(TOK.vocab_size, C)
    batch = PackingCollator(TOK, 10)(["ACDE", "KLM", "W", "PQRSTV"])
    out = emb(batch.tokens, segment_ids=batch.segment_ids)
    for i, got in enumerate(unpack(out, batch)):
        ids = batch.tokens[int(batch.rows[i]), int(batch.offsets[i]):][: int(batch.lengths[i])]
        torch.testing.assert_close(got, emb(ids[None])[0])
    assert not out.masked_select(~batch.mask).any()


MODELS = {
    "cnn_token": {"arch": "cnn", "d_model": 8, "n_layers": 3, "max_dilation": 4},
    "cnn_pooled_max": {"arch": "cnn", "d_model": 8, "n_layers": 2, "head": "pooled",
                       "n_out": 3, "pooling": "max", "bottleneck": False},
    "rnn_token": {"arch": "rnn", "d_model": 8, "n_layers": 2, "rnn": "gru"},
    "hybrid_pooled": {"arch": "hybrid", "d_model": 8, "n_layers": 2, "head": "pooled",
                      "n_out": 2, "causal": True},
}
SEQS = st.lists(st.text("ACDEFGHIKLMNPQRSTVWY", min_size=1, max_size=14), min_size=1,
                max_size=5)


def _model(name: str) -> nn.Module:
    torch.manual_seed(1)
    model = build_model({**MODELS[name], "vocab_size": TOK.vocab_size}).double()
    # Non-trivial running statistics, so eval mode is not the identity.
    model.train()
    with torch.no_grad():
        model(Collator(TOK)(["ACDEFGHIKLMNPQ", "WYV", "KKKRRRDDE"]))
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=3, deadline=None)
@given(seqs=SEQS, row=st.integers(14, 30))
def test_model_eval_equals_alone(name: str, seqs: list[str], row: int) -> None:
    model = _model(name)
    batch = PackingCollator(TOK, row)(seqs)
    out = model(batch)  # model(batch): tokens, mask and segment_ids from the batch
    pooled = MODELS[name].get("head") == "pooled"
    got = list(out) if pooled else unpack(out, batch)
    assert len(got) == len(seqs)
    for s, g in zip(seqs, got):  # noqa: B905
        ref = model(Collator(TOK)([s]).tokens)[0]
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["cnn_token", "hybrid_pooled"])
@settings(max_examples=3, deadline=None)
@given(seqs=SEQS)
def test_model_train_equals_padded(name: str, seqs: list[str]) -> None:
    """Train mode: packed and padded batches of the same sequences give the same outputs."""
    if sum(map(len, seqs)) < 2:
        return
    packed_model, padded_model = _model(name).train(), _model(name).train()
    packed = packed_model(PackingCollator(TOK, 16)(seqs))
    padded = padded_model(Collator(TOK)(seqs))
    if MODELS[name].get("head") == "pooled":
        torch.testing.assert_close(packed, padded, rtol=1e-9, atol=1e-9)
    else:
        batch = PackingCollator(TOK, 16)(seqs)
        for i, g in enumerate(unpack(packed, batch)):
            torch.testing.assert_close(g, padded[i, :, : len(seqs[i])], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("norm", ["instance", "group", "layer"])
@settings(max_examples=3, deadline=None)
@given(seqs=SEQS, row=st.integers(14, 30))
def test_model_per_sample_norm_train_equals_alone(norm: str, seqs: list[str], row: int) -> None:
    """With a per-sample norm, train-mode outputs of a packed sequence equal it run alone:
    the blocks' norms take statistics per segment, not over the whole row."""
    torch.manual_seed(2)
    config = {"arch": "cnn", "d_model": 8, "n_layers": 2, "max_dilation": 2, "norm": norm,
              "vocab_size": TOK.vocab_size}
    if norm == "group":
        config["norm_groups"] = 2
    model = build_model(config).double().train()
    batch = PackingCollator(TOK, row)(seqs)
    for s, g in zip(seqs, unpack(model(batch), batch)):  # noqa: B905
        ref = model(Collator(TOK)([s]).tokens)[0]
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-9)


def test_model_rejects_other_inputs() -> None:
    model = _model("cnn_token")
    with pytest.raises(TypeError, match=r"expects token ids .* or a seqpad Batch"):
        model({"tokens": torch.zeros(1, 3, dtype=torch.long)})
    batch = PackingCollator(TOK, 8)(["ACD"])
    with pytest.raises(TypeError, match="from the batch"):
        model(batch, batch.mask)
