"""Padding invariance of every model and head, end to end.

Reference: each sequence run ALONE and UNPADDED through the same model. In eval mode a
sequence's outputs must not depend on extra padding or on its batch mates; in train mode
(batch statistics) outputs, parameter gradients and running statistics must not depend on
extra padding; no gradient reaches padded positions, the pad embedding or the embedding
rows of tokens that sit in padding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from seqpad.models import build_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is fastest, and steady on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


V = 25  # protein vocab size: 5 specials + 20 symbols
ATOL = 1e-5
RTOL = 1e-5

CONFIGS: dict[str, dict[str, Any]] = {
    "cnn-token": {"arch": "cnn", "n_layers": 3, "kernel_size": 3, "max_dilation": 4},
    "cnn-token-plain-even-causal": {
        "arch": "cnn", "dilations": [1, 2], "kernel_size": 4, "bottleneck": False,
        "causal": True, "activation": "gelu",
    },
    "cnn-pooled-mean": {"arch": "cnn", "n_layers": 2, "kernel_size": 5, "head": "pooled",
                        "n_out": 3},
    "cnn-pooled-max": {"arch": "cnn", "dilations": [1, 2], "kernel_size": 3, "head": "pooled",
                       "n_out": 2, "pooling": "max", "activation": "silu"},
    "rnn-lstm-token": {"arch": "rnn", "n_layers": 2, "rnn": "lstm", "rnn_hidden": 12},
    "rnn-gru-uni-pooled": {"arch": "rnn", "n_layers": 2, "rnn": "gru", "bidirectional": False,
                           "head": "pooled", "n_out": 3},
    "rnn-lstm-pooled-max": {"arch": "rnn", "n_layers": 1, "head": "pooled", "n_out": 1,
                            "pooling": "max"},
    "hybrid-token": {"arch": "hybrid", "dilations": [1, 2], "kernel_size": 3, "rnn": "gru"},
    "hybrid-pooled": {"arch": "hybrid", "dilations": [1, 2], "kernel_size": 5, "rnn": "lstm",
                      "head": "pooled", "n_out": 2, "rnn_layers": 2},
}


def make_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model with randomised (non-trivial) batch-norm statistics and affine params."""
    torch.manual_seed(seed)
    cfg = {"vocab_size": V, "d_model": 16, **CONFIGS[name]}
    model = build_model(cfg)
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "running_mean") and mod.running_mean is not None:
                mod.running_mean.normal_(0, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
            if hasattr(mod, "running_mean") and getattr(mod, "weight", None) is not None:
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.3)
        # A non-zero pad row: the model must not rely on it being zero.
        model.embed.weight[model.pad_id].normal_()
    return model


def random_tokens(lengths: list[int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, V, (n,), generator=g) for n in lengths]


def pad_batch(seqs: list[torch.Tensor], total: int, fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to ``total`` with ``fill``; returns tokens (B, L) and mask (B, 1, L)."""
    tokens = torch.full((len(seqs), total), fill, dtype=torch.long)
    mask = torch.zeros(len(seqs), 1, total, dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
        mask[i, 0, : len(s)] = True
    return tokens, mask


def is_token_head(model: torch.nn.Module) -> bool:
    return model.config["head"] == "token"


def check_row(model: torch.nn.Module, out_row: torch.Tensor, ref: torch.Tensor, n: int) -> None:
    """``out_row``: one sequence's output from a padded run; ``ref``: its alone output."""
    if is_token_head(model):
        torch.testing.assert_close(out_row[:, :n], ref, atol=ATOL, rtol=RTOL)
        assert torch.all(out_row[:, n:] == 0), "token-head output not zero at padding"
    else:
        torch.testing.assert_close(out_row, ref, atol=ATOL, rtol=RTOL)


lengths_st = st.lists(st.integers(1, 24), min_size=1, max_size=4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=6, deadline=None)
@given(lengths=lengths_st, extra=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_eval_outputs_match_each_sequence_alone(
    name: str, lengths: list[int], extra: int, seed: int
) -> None:
    model = make_model(name).eval()
    seqs = random_tokens(lengths, seed)
    with torch.no_grad():
        alone = [model(s[None])[0] for s in seqs]
        # 1. each sequence alone, padded by `extra` pad tokens (mask derived from pad_id)
        for s, ref in zip(seqs, alone, strict=True):
            tokens, _ = pad_batch([s], len(s) + extra)
            check_row(model, model(tokens)[0], ref, len(s))
        # 2. batched with the others, padded to max + extra, mask derived from pad_id
        total = max(lengths) + extra
        tokens, mask = pad_batch(seqs, total)
        out = model(tokens)
        for i, (s, ref) in enumerate(zip(seqs, alone, strict=True)):
            check_row(model, out[i], ref, len(s))
        # 3. same batch with non-pad junk in the padding and an explicit (B, L) float mask:
        #    the mask, not the token ids, decides what is padding.
        junk, _ = pad_batch(seqs, total, fill=7)
        out_junk = model(junk, mask.squeeze(1).float())
        torch.testing.assert_close(out_junk, out, atol=ATOL, rtol=RTOL)
        # 4. reversed batch order (a different batch composition for every row)
        rev_tokens, _ = pad_batch(seqs[::-1], total + 3)
        out_rev = model(rev_tokens)
        for i, (s, ref) in enumerate(zip(seqs[::-1], alone[::-1], strict=True)):
            check_row(model, out_rev[i], ref, len(s))


def _train_step(
    model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor | None, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Forward in train mode and backprop a fixed random linear loss.

    Returns the output, the gradient reaching the embedding output ``(B, C, L)`` and the
    parameter gradients.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(_mod: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
        out.retain_grad()
        captured["embed"] = out

    handle = model.embed.register_forward_hook(hook)
    try:
        model.zero_grad(set_to_none=True)
        out = model(tokens, mask)
        (out * weights).sum().backward()
    finally:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, captured["embed"].grad, grads


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=5, deadline=None)
@given(lengths=lengths_st, extra=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_train_mode_extra_padding_changes_nothing(
    name: str, lengths: list[int], extra: int, seed: int
) -> None:
    assume(sum(lengths) >= 2)  # batch norm needs two values per channel in train mode
    # float64: batch norm over as few as two real values per channel amplifies float32
    # rounding (a different summation order with and without padding) past any fixed
    # tolerance, while a padding leak is far above float64 rounding
    base = make_model(name).double().train()  # dropout is 0 in these configs
    seqs = random_tokens(lengths, seed)
    total = max(lengths)
    g = torch.Generator().manual_seed(seed + 1)
    n_out = base.config["n_out"]
    f64 = torch.float64
    if is_token_head(base):
        w_big = torch.randn(len(seqs), n_out, total + extra, generator=g, dtype=f64)
        w_small = w_big[:, :, :total]
    else:
        w_big = w_small = torch.randn(len(seqs), n_out, generator=g, dtype=f64)

    tight = copy.deepcopy(base)
    out_t, gemb_t, grads_t = _train_step(tight, pad_batch(seqs, total)[0], None, w_small)
    loose = copy.deepcopy(base)
    # The padding holds a real amino-acid id (one absent from the sequences where there is
    # one): only the explicit mask marks it as padding.
    used = set(torch.cat(seqs).tolist())
    fill = next((t for t in range(5, V) if t not in used), 7)
    loose_tokens, loose_mask = pad_batch(seqs, total + extra, fill=fill)
    out_l, gemb_l, grads_l = _train_step(loose, loose_tokens, loose_mask, w_big)

    tol = {"atol": 1e-9, "rtol": 1e-7}
    if is_token_head(base):
        torch.testing.assert_close(out_l[:, :, :total], out_t, **tol)
        assert torch.all(out_l[:, :, total:] == 0)
    else:
        torch.testing.assert_close(out_l, out_t, **tol)
    assert grads_t.keys() == grads_l.keys()
    for key in grads_t:
        torch.testing.assert_close(grads_l[key], grads_t[key], **tol, msg=key)
    # running statistics updated identically
    for (key, b_t), (_, b_l) in zip(tight.named_buffers(), loose.named_buffers(), strict=True):
        torch.testing.assert_close(b_l, b_t, **tol, msg=key)

    # no gradient at padded positions, into the pad row, or (with the explicit mask)
    # into the row of the token sitting in padding
    pad = ~loose_mask.expand_as(gemb_l)
    assert torch.all(gemb_l[pad] == 0), "gradient leaked into padded positions"
    pad_t = ~pad_batch(seqs, total)[1].expand_as(gemb_t)
    assert torch.all(gemb_t[pad_t] == 0)
    emb_grad = grads_l["embed.weight"]
    assert torch.all(emb_grad[loose.pad_id] == 0), "gradient reached the pad embedding"
    if fill not in used:
        assert torch.all(emb_grad[fill] == 0), "gradient reached a token sitting in padding"
    torch.testing.assert_close(emb_grad, grads_t["embed.weight"], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", ["cnn-token", "rnn-gru-uni-pooled", "hybrid-pooled"])
def test_empty_row_in_batch(name: str) -> None:
    """An all-padding row neither breaks the batch nor changes the others (eval)."""
    model = make_model(name).eval()
    seqs = random_tokens([6, 9], 3)
    tokens, _ = pad_batch([*seqs, torch.empty(0, dtype=torch.long)], 12)
    with torch.no_grad():
        out = model(tokens)
        assert torch.isfinite(out).all()
        for i, s in enumerate(seqs):
            check_row(model, out[i], model(s[None])[0], len(s))
        if is_token_head(model):
            assert torch.all(out[2] == 0)
