"""Padding invariance of every masked block, end to end.

Reference: each sequence run alone, unpadded (mask=None, i.e. the native path). A
sequence's outputs at real positions must not change when it is padded to ``L + k`` or
batched with others (eval mode), gradients never reach padded inputs, outputs are zero at
padding. Also: train mode with extra padding, CPU bf16 autocast, torch.compile.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from seqpad.masks import lengths_to_mask
from seqpad.nn.conv import MaskedConv1d
from seqpad.nn.embedding import MaskedEmbedding
from seqpad.nn.pooling import MaskedMaxPool, MaskedMeanPool, MaskedSumPool
from seqpad.nn.rnn import MaskedGRU, MaskedLSTM

C_IN = 4
VOCAB = 12


class Stack(nn.Module):
    """Embedding -> conv -> ReLU -> bidirectional GRU -> conv (causal): ids in, (B, 6, L) out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = MaskedEmbedding(VOCAB, C_IN)
        self.conv = MaskedConv1d(C_IN, 5, 4, dilation=2)
        self.rnn = MaskedGRU(5, 3, 2, bidirectional=True, dropout=0.3)
        self.head = MaskedConv1d(6, 6, 3, causal=True)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        h = torch.relu(self.conv(self.embed(ids, mask), mask))
        return self.head(self.rnn(h, mask), mask)


class RNNState(nn.Module):
    """A masked RNN's final state as a pooled (B, layers * dirs * H) output."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        _, state = self.rnn(x, mask, return_state=True)
        h = torch.cat(state, dim=-1) if isinstance(state, tuple) else state
        return h.transpose(0, 1).flatten(1)


# name -> (factory, takes ids, pooled output)
BLOCKS: dict[str, tuple[Callable[[], nn.Module], bool, bool]] = {
    "conv_k3": (lambda: MaskedConv1d(C_IN, 5, 3), False, False),
    "conv_k4_d3": (lambda: MaskedConv1d(C_IN, 5, 4, dilation=3), False, False),
    "conv_causal_k2_g2": (lambda: MaskedConv1d(C_IN, 6, 2, groups=2, causal=True), False, False),
    "lstm_bi2": (lambda: MaskedLSTM(C_IN, 3, 2, bidirectional=True, dropout=0.3), False, False),
    "gru_bi": (lambda: MaskedGRU(C_IN, 3, bidirectional=True), False, False),
    "lstm_state": (lambda: RNNState(MaskedLSTM(C_IN, 3, 2, bidirectional=True)), False, True),
    "gru_state": (lambda: RNNState(MaskedGRU(C_IN, 3, 2, dropout=0.3)), False, True),
    "mean_pool": (MaskedMeanPool, False, True),
    "max_pool": (MaskedMaxPool, False, True),
    "sum_pool": (MaskedSumPool, False, True),
    "embedding": (lambda: MaskedEmbedding(VOCAB, C_IN), True, False),
    "stack": (Stack, True, False),
}


def _inputs(lengths: list[int], L: int, ids: bool, seed: int) -> tuple[Tensor, Tensor]:
    """Random real tokens; padding holds large garbage (or the pad id) that must not matter."""
    g = torch.Generator().manual_seed(seed)
    mask = lengths_to_mask(lengths, L)
    if ids:
        x = torch.randint(5, VOCAB, (len(lengths), L), generator=g)
        return x.masked_fill(~mask.squeeze(1), 0), mask
    x = torch.randn(len(lengths), C_IN, L, generator=g)
    garbage = 100 * torch.randn(len(lengths), C_IN, L, generator=g)
    return torch.where(mask, x, garbage), mask


def _real(x: Tensor, b: int, n: int, ids: bool) -> Tensor:
    return x[b : b + 1, :n] if ids else x[b : b + 1, :, :n]


def _pad_to(x: Tensor, L: int, ids: bool, seed: int) -> Tensor:
    """Right-pad a single unpadded sequence to L with garbage."""
    n = x.shape[-1]
    if ids:
        return torch.cat([x, torch.zeros(1, L - n, dtype=x.dtype)], dim=-1)
    g = torch.Generator().manual_seed(seed + 1)
    return torch.cat([x, 50 * torch.randn(1, x.shape[1], L - n, generator=g)], dim=-1)


@pytest.mark.parametrize("name", sorted(BLOCKS))
@settings(max_examples=6, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    extra=st.integers(0, 4),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_eval_output_independent_of_padding_and_batch(
    name: str, lengths: list[int], extra: int, k: int, seed: int
) -> None:
    factory, ids, pooled = BLOCKS[name]
    torch.manual_seed(seed)
    block = factory().eval()
    L = max(max(lengths) + extra, 1)  # L = 0 batches: see test_conv / test_rnn / test_pooling
    x, mask = _inputs(lengths, L, ids, seed)
    if not ids:
        x.requires_grad_(True)
    out = block(x, mask)
    assert torch.isfinite(out).all()
    if not pooled:
        assert torch.equal(out.masked_fill(mask, 0), torch.zeros_like(out)), "padding not zero"
    for b, n in enumerate(lengths):
        got = out[b] if pooled else out[b, :, :n]
        if n == 0:
            assert torch.equal(got, torch.zeros_like(got))
            continue
        real = _real(x.detach(), b, n, ids)
        alone = block(real)  # unpadded, no mask: the native path
        padded = block(_pad_to(real, n + k, ids, seed), lengths_to_mask([n], n + k))
        ref = alone[0]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded[0] if pooled else padded[0, :, :n], ref,
                                   rtol=1e-5, atol=1e-5)
        if not pooled:
            assert torch.equal(padded[0, :, n:], torch.zeros_like(padded[0, :, n:]))
    if not ids:
        out.square().sum().backward()
        grad = torch.zeros_like(x) if x.grad is None else x.grad  # None: nothing was real
        assert torch.equal(grad.masked_fill(mask, 0), torch.zeros_like(grad)), \
            "gradient reached padding"


def _run_train(block: nn.Module, x: Tensor, mask: Tensor, ids: bool, pooled: bool) -> tuple:
    """Train-mode forward + backward of a fixed random projection of the real outputs."""
    x = x.clone()
    if not ids:
        x.requires_grad_(True)
    block.zero_grad()
    torch.manual_seed(1234)  # same dropout draws for both runs
    out = block(x, mask)
    g = torch.Generator().manual_seed(99)
    if pooled:
        weights = torch.randn(out.shape, generator=g)
    else:  # drawn for the real columns only, so both runs use the same numbers
        n = int(mask.squeeze(1).sum(-1).max())
        weights = torch.randn((*out.shape[:-1], n), generator=g)
        weights = torch.nn.functional.pad(weights, (0, out.shape[-1] - n), value=7.0)
    (out * weights).sum().backward()
    grads = {k: p.grad.clone() for k, p in block.named_parameters() if p.grad is not None}
    xg = None if ids else (torch.zeros_like(x) if x.grad is None else x.grad)
    return out, grads, xg


@pytest.mark.parametrize("name", sorted(BLOCKS))
@settings(max_examples=4, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_train_outputs_and_gradients_ignore_extra_padding(
    name: str, lengths: list[int], k: int, seed: int
) -> None:
    """The same batch with k more padding columns: same outputs, same parameter gradients."""
    factory, ids, pooled = BLOCKS[name]
    torch.manual_seed(seed)
    block = factory().train()
    L = max(max(lengths), 1)
    x, mask = _inputs(lengths, L + k, ids, seed)
    short_x = x[..., :L] if not ids else x[:, :L]
    out_s, grads_s, xg_s = _run_train(block, short_x, mask[..., :L], ids, pooled)
    out_l, grads_l, xg_l = _run_train(block, x, mask, ids, pooled)
    if pooled:
        torch.testing.assert_close(out_l, out_s, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out_l[..., :L], out_s, rtol=1e-5, atol=1e-5)
        assert torch.equal(out_l[..., L:], torch.zeros_like(out_l[..., L:]))
    assert grads_s.keys() == grads_l.keys()
    for key in grads_s:
        torch.testing.assert_close(grads_l[key], grads_s[key], rtol=1e-5, atol=1e-5)
    if not ids:
        torch.testing.assert_close(xg_l[..., :L], xg_s, rtol=1e-5, atol=1e-5)
        assert torch.equal(xg_l.masked_fill(mask, 0), torch.zeros_like(xg_l))


def test_no_gradient_into_pad_embedding_row_through_stack() -> None:
    torch.manual_seed(0)
    model = Stack().train()
    lengths = [7, 0, 3, 5]
    ids, mask = _inputs(lengths, 9, True, 0)
    with torch.no_grad():
        model.embed.weight[0] = 3.0  # a pad row that would leak if used
    model(ids, mask).square().sum().backward()
    assert torch.equal(model.embed.weight.grad[0], torch.zeros(C_IN))
    assert model.embed.weight.grad[5:].abs().sum() > 0


# ------------------------------------------------------------------ bf16 autocast
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_bf16_autocast(name: str) -> None:
    factory, ids, pooled = BLOCKS[name]
    torch.manual_seed(0)
    block = factory().eval()
    lengths = [9, 0, 4, 6]
    x, mask = _inputs(lengths, 11, ids, 0)
    ref = block(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Pools meet bf16 activations in an autocast model; feed them bf16 as a conv would.
        inp = x.bfloat16() if pooled and not isinstance(block, RNNState) else x
        out = block(inp, mask)
    assert torch.isfinite(out).all()
    if not pooled:
        assert torch.equal(out.masked_fill(mask, 0), torch.zeros_like(out))
    else:
        assert torch.equal(out[1], torch.zeros_like(out[1]))
    scale = ref.abs().amax().clamp_min(1.0)
    torch.testing.assert_close(out.float() / scale, ref / scale, rtol=0, atol=3e-2)


# ------------------------------------------------------------------ torch.compile
# Dynamo tracing + AOTAutograd (backend="aot_eager") is where our Python can break under
# compile (data-dependent branches, graph breaks, functionalisation of masked_fill /
# index_copy). Inductor's code generation is PyTorch's own and costs ~40 s cold on a
# 2-core runner, so it is not repeated here.
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_conv_embedding_pooling(fresh_dynamo) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = MaskedEmbedding(VOCAB, C_IN)
            self.conv = MaskedConv1d(C_IN, 5, 4, dilation=2)
            self.causal = MaskedConv1d(5, 5, 3, causal=True)
            self.mean = MaskedMeanPool()
            self.max = MaskedMaxPool()
            self.sum = MaskedSumPool()

        def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
            h = self.causal(torch.relu(self.conv(self.embed(ids, mask), mask)), mask)
            return h, self.mean(h, mask) + self.max(h, mask) + self.sum(h, mask)

    torch.manual_seed(0)
    net = Net()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # no graph break
    ids, mask = _inputs([8, 0, 3, 5], 10, True, 0)
    h, pooled = compiled(ids, mask)
    ref_h, ref_pooled = net(ids, mask)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)
    assert torch.equal(h.masked_fill(mask, 0), torch.zeros_like(h))
    assert torch.equal(pooled[1], torch.zeros_like(pooled[1]))
    pooled.sum().backward()
    assert torch.equal(net.embed.weight.grad[0], torch.zeros(C_IN))
    assert net.conv.weight.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("cls", [MaskedLSTM, MaskedGRU], ids=["lstm", "gru"])
def test_compile_rnn(fresh_dynamo, cls) -> None:
    """The packed path runs eagerly behind one graph break; the rest compiles."""
    torch.manual_seed(0)
    rnn = cls(C_IN, 3, bidirectional=True)
    conv = MaskedConv1d(6, 2, 3)

    def f(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out, state = rnn(torch.tanh(x), mask, return_state=True)
        h = state[0] if isinstance(state, tuple) else state
        return conv(out, mask), h

    x, mask = _inputs([6, 0, 2], 7, False, 0)
    x.requires_grad_(True)
    out, h = torch.compile(f, backend="aot_eager")(x, mask)
    ref, ref_h = f(x, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.masked_fill(mask, 0), torch.zeros_like(out))
    out.square().sum().backward()
    assert torch.equal(x.grad.masked_fill(mask, 0), torch.zeros_like(x.grad))
    assert x.grad.abs().sum() > 0


# ------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_cuda_matches_cpu_and_is_padding_invariant(name: str) -> None:
    """On the GPU (cuDNN for conv/RNN, TF32 off): CPU numbers, per-sequence invariance."""
    factory, ids, pooled = BLOCKS[name]
    torch.manual_seed(0)
    block = factory().eval()
    lengths = [13, 0, 5, 1, 9, 13]
    x, mask = _inputs(lengths, 17, ids, 0)
    ref = block(x, mask)
    gpu = block.cuda()
    xc, mc = x.cuda(), mask.cuda()
    if not ids:
        xc.requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out = gpu(xc, mc)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
        if not pooled:
            assert torch.equal(out.masked_fill(mc, 0), torch.zeros_like(out))
        for b, n in enumerate(lengths):
            if n == 0:
                continue
            alone = gpu(_real(xc.detach(), b, n, ids))[0]
            torch.testing.assert_close(out[b] if pooled else out[b, :, :n], alone,
                                       rtol=1e-5, atol=1e-5)
        if not ids:  # cuDNN's RNN backward needs train mode (dropout then applies)
            gpu.train()
            gpu(xc, mc).square().sum().backward()
            gpu.eval()
            grad = torch.zeros_like(xc) if xc.grad is None else xc.grad
            assert torch.equal(grad.masked_fill(mc, 0), torch.zeros_like(grad))
            assert grad.abs().sum() > 0
        with torch.autocast("cuda", dtype=torch.bfloat16):
            inp = xc.detach().bfloat16() if pooled and not isinstance(block, RNNState) else xc
            low = gpu(inp, mc)
        assert torch.isfinite(low).all()
        if not pooled:
            assert torch.equal(low.masked_fill(mc, 0), torch.zeros_like(low))
        scale = ref.abs().amax().clamp_min(1.0)
        torch.testing.assert_close(low.float().cpu() / scale, ref / scale, rtol=0, atol=3e-2)


@cuda
@pytest.mark.parametrize("cls", [MaskedLSTM, MaskedGRU], ids=["lstm", "gru"])
def test_cuda_rnn_edge_cases(cls) -> None:
    rnn = cls(C_IN, 3, 2, bidirectional=True).cuda()
    x = torch.randn(2, C_IN, 5, device="cuda")
    holes = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]], dtype=torch.bool, device="cuda")
    with pytest.raises(ValueError, match="row 1 is not a right-padded prefix"):
        rnn(x, holes)
    out, state = rnn(x, lengths_to_mask([0, 0], 5).cuda(), return_state=True)
    assert torch.equal(out, torch.zeros_like(out))
    h = state[0] if isinstance(state, tuple) else state
    assert h.is_cuda and torch.equal(h, torch.zeros(4, 2, 3, device="cuda"))
