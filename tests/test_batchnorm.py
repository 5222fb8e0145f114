"""MaskedBatchNorm1d against independent references.

References: ``torch.nn.BatchNorm1d`` (unmasked parity, and applied to the real positions
gathered into ``(N, C)``), float64 computations, and runs of a sequence without padding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.nn import functional as SF
from seqpad.nn.batchnorm import (
    MaskedBatchNorm1d,
    MaskedSyncBatchNorm1d,
    convert_masked_batchnorm,
    convert_sync_batchnorm,
)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ),
]
TOL = {torch.float32: {"atol": 1e-6, "rtol": 1e-6}, torch.float64: {"atol": 1e-12, "rtol": 1e-12}}


def _pair(c: int, device: str, dtype: torch.dtype, **kw: object) -> tuple[nn.Module, nn.Module]:
    """A MaskedBatchNorm1d and an nn.BatchNorm1d with identical random parameters."""
    ours = MaskedBatchNorm1d(c, device=device, dtype=dtype, **kw)  # type: ignore[arg-type]
    if ours.affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.normal_()
    ref = nn.BatchNorm1d(c, device=device, dtype=dtype, **kw)  # type: ignore[arg-type]
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _gather(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, L) at real positions -> (N, C)."""
    return t.transpose(1, 2)[mask.squeeze(1)]


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    tol = TOL[dtype]
    torch.testing.assert_close(a, b, atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


def _random_mask(b: int, length: int, gen: torch.Generator, device: str) -> torch.Tensor:
    lengths = torch.randint(1, length + 1, (b,), generator=gen)
    lengths[0] = length
    return lengths_to_mask(lengths, length).to(device)


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"momentum": None},
        {"affine": False},
        {"track_running_stats": False},
        {"momentum": 0.3, "affine": False, "eps": 1e-3},
    ],
)
@pytest.mark.parametrize("shape", [(4, 5, 7), (6, 5)])
@pytest.mark.parametrize("all_true_mask", [False, True])
def test_parity_with_native_without_padding(device, dtype, kw, shape, all_true_mask):
    gen = torch.Generator().manual_seed(0)
    ours, ref = _pair(shape[1], device, dtype, **kw)
    for step in range(3):
        x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 0.5).to(device)
        dy = torch.randn(shape, generator=gen, dtype=dtype).to(device)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        mask = None
        if all_true_mask:
            mask = torch.ones(shape[0], 1, *shape[2:], dtype=torch.bool, device=device)
            if len(shape) == 2:
                mask = mask.view(shape[0])
        y1, y2 = ours(x1, mask), ref(x2)
        _close(y1, y2, dtype)
        (y1 * dy).sum().backward()
        (y2 * dy).sum().backward()
        _close(x1.grad, x2.grad, dtype, scale=10)
        if ours.affine:
            _close(ours.weight.grad, ref.weight.grad, dtype, scale=10)
            _close(ours.bias.grad, ref.bias.grad, dtype, scale=10)
        if ours.track_running_stats:
            _close(ours.running_mean, ref.running_mean, dtype)
            _close(ours.running_var, ref.running_var, dtype)
            assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    _close(ours(x, mask), ref(x), dtype)


def test_state_dict_identical_and_loads_both_ways():
    ours, ref = MaskedBatchNorm1d(6), nn.BatchNorm1d(6)
    sd_ours, sd_ref = ours.state_dict(), ref.state_dict()
    assert list(sd_ours) == list(sd_ref)
    assert all(sd_ours[k].shape == sd_ref[k].shape for k in sd_ref)
    with torch.no_grad():
        ref.running_mean.fill_(3.0)
        ref.weight.fill_(2.0)
    ours.load_state_dict(ref.state_dict())
    assert torch.equal(ours.running_mean, ref.running_mean)
    ours.running_var.fill_(5.0)
    ref.load_state_dict(ours.state_dict())
    assert torch.equal(ref.running_var, ours.running_var)
    assert ref.weight[0].item() == 2.0


def test_single_value_in_training_raises_like_native():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as native:
        nn.BatchNorm1d(3)(torch.randn(1, 3, 1))
    bn = MaskedBatchNorm1d(3)
    mask = torch.tensor([[[True, False, False]], [[False, False, False]]])
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as ours:
        bn(torch.randn(2, 3, 3), mask)
    assert type(ours.value) is type(native.value)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(torch.randn(1, 3), None)
    bn.eval()  # evaluation with running statistics is fine
    assert bn(torch.randn(2, 3, 3), mask).shape == (2, 3, 3)


def test_rejects_bad_input_dims():
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        MaskedBatchNorm1d(3)(torch.randn(2, 3, 4, 5))


# --------------------------------------------------------------- masked
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"affine": False}])
def test_masked_equals_native_on_gathered_real_positions(device, dtype, kw):
    gen = torch.Generator().manual_seed(1)
    b, c, length = 5, 4, 9
    ours, ref = _pair(c, device, dtype, **kw)
    for _ in range(3):
        mask = _random_mask(b, length, gen, device)
        x = (torch.randn(b, c, length, generator=gen, dtype=dtype) * 3 - 1).to(device)
        x.masked_fill_(~mask, 7.0)  # garbage in padding must not matter
        dy = torch.randn(b, c, length, generator=gen, dtype=dtype).to(device)
        xo = x.clone().requires_grad_()
        y = ours(xo, mask)
        (y * dy).sum().backward()
        xg = _gather(x, mask).clone().requires_grad_()
        yg = ref(xg)
        (yg * _gather(dy, mask)).sum().backward()
        scale = 10 if dtype == torch.float32 else 1
        _close(_gather(y, mask), yg, dtype, scale)
        assert torch.count_nonzero(y.masked_select(~mask)) == 0
        _close(_gather(xo.grad, mask), xg.grad, dtype, scale * 10)
        assert torch.count_nonzero(xo.grad.masked_select(~mask)) == 0
        if ours.affine:
            _close(ours.weight.grad, ref.weight.grad, dtype, scale * 10)
            _close(ours.bias.grad, ref.bias.grad, dtype, scale * 10)
        _close(ours.running_mean, ref.running_mean, dtype, scale)
        _close(ours.running_var, ref.running_var, dtype, scale)
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()
    ours.eval()
    ref.eval()
    mask = _random_mask(b, length, gen, device)
    x = torch.randn(b, c, length, generator=gen, dtype=dtype).to(device)
    y = ours(x, mask)
    _close(_gather(y, mask), ref(_gather(x, mask)), dtype)
    assert torch.count_nonzero(y.masked_select(~mask)) == 0


def test_mask_formats_agree():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 6, generator=gen)
    mask = _random_mask(4, 6, gen, "cpu")
    outs = []
    for m in (mask, mask.squeeze(1), mask.float(), mask.squeeze(1).long()):
        bn = MaskedBatchNorm1d(3)
        outs.append((bn(x, m), bn.running_var.clone()))
    for y, rv in outs[1:]:
        assert torch.equal(y, outs[0][0])
        assert torch.equal(rv, outs[0][1])


def test_two_dim_input_with_mask():
    gen = torch.Generator().manual_seed(3)
    ours, ref = _pair(4, "cpu", torch.float64)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    y = ours(x, keep)
    yg = ref(x.detach()[keep])
    _close(y[keep], yg, torch.float64)
    assert torch.count_nonzero(y[~keep]) == 0
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-12, rtol=1e-12)


def test_nonfinite_padding_does_not_leak():
    gen = torch.Generator().manual_seed(4)
    mask = _random_mask(4, 8, gen, "cpu")
    mask[1, 0, -1] = False
    x = torch.randn(4, 3, 8, generator=gen)
    clean = MaskedBatchNorm1d(3)
    xc = x.clone().requires_grad_()
    yc = clean(xc, mask)
    yc.pow(2).sum().backward()
    for bad in (float("nan"), float("inf")):
        bn = MaskedBatchNorm1d(3)
        xb = x.masked_fill(~mask, bad).requires_grad_()
        y = bn(xb, mask)
        y.pow(2).sum().backward()
        torch.testing.assert_close(y, yc)
        torch.testing.assert_close(xb.grad, xc.grad)
        torch.testing.assert_close(bn.running_var, clean.running_var)
        assert torch.isfinite(bn.weight.grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 4, 5), (3, 4)])
def test_all_padding_batch(device, shape):
    bn = MaskedBatchNorm1d(4, momentum=None, device=device)
    with torch.no_grad():
        bn.bias.fill_(1.0)
    bn(torch.randn(shape, device=device), torch.ones(shape[0], *shape[2:], device=device))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(shape, device=device).requires_grad_()
    mask = torch.zeros(shape[0], *shape[2:], dtype=torch.bool, device=device)
    y = bn(x, mask)
    assert torch.count_nonzero(y) == 0
    y.sum().backward()
    assert torch.count_nonzero(x.grad) == 0
    assert bn.weight.grad is not None and torch.count_nonzero(bn.weight.grad) == 0
    assert torch.count_nonzero(bn.bias.grad) == 0
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    sync = MaskedSyncBatchNorm1d(4, device=device)  # no process group: same path
    assert torch.count_nonzero(sync(x.detach(), mask)) == 0


# -------------------------------------------------------------- numerics
def test_statistics_accurate_for_large_means():
    gen = torch.Generator().manual_seed(5)
    b, c, length = 8, 6, 300
    mask = _random_mask(b, length, gen, "cpu")
    base = torch.randn(b, c, length, generator=gen, dtype=torch.float64)
    offsets = torch.tensor([1e4, -1e4, 3e3, 0.0, 1e2, 5e3], dtype=torch.float64).view(1, c, 1)
    stds = torch.tensor([1.0, 0.5, 2.0, 1.0, 1e-1, 3.0], dtype=torch.float64).view(1, c, 1)
    x64 = base * stds + offsets
    x32 = x64.float()
    ref = x32.double().transpose(1, 2)[mask.squeeze(1)]  # float64 masked reference
    mean_ref, var_ref = ref.mean(0), ref.var(0, unbiased=True)
    bn = MaskedBatchNorm1d(c, momentum=1.0)  # running stats = this batch's statistics
    y = bn(x32, mask)
    torch.testing.assert_close(bn.running_mean.double(), mean_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(bn.running_var.double(), var_ref, rtol=1e-5, atol=0)
    y_ref = (ref - mean_ref) / torch.sqrt(ref.var(0, unbiased=False) + 1e-5)
    # float32 spacing at 1e4 is ~1e-3, so x - mean carries ~5e-4 absolute error (natively too)
    torch.testing.assert_close(_gather(y, mask).double(), y_ref, rtol=0, atol=5e-3)


def test_merge_batch_stats_equals_pooled_float64():
    """Chan's merge of per-group (count, mean, M2), an empty group included."""
    gen = torch.Generator().manual_seed(11)
    groups = [torch.randn(n, 3, generator=gen, dtype=torch.float64) * 2 + 1e4 for n in (5, 0, 9, 1)]
    counts = torch.tensor([len(g) for g in groups], dtype=torch.float64)
    means = torch.stack([g.mean(0) if len(g) else torch.zeros(3, dtype=torch.float64) for g in groups])
    m2s = torch.stack([((g - g.mean(0)) ** 2).sum(0) if len(g) else torch.zeros(3, dtype=torch.float64)
                       for g in groups])
    n, mean, m2 = SF.merge_batch_stats(counts, means, m2s)
    pooled = torch.cat(groups)
    assert n.item() == len(pooled)
    torch.testing.assert_close(mean, pooled.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(m2, ((pooled - pooled.mean(0)) ** 2).sum(0), rtol=1e-9, atol=0)


def test_gradcheck_float64_random_mask():
    gen = torch.Generator().manual_seed(6)
    mask = torch.rand(3, 1, 6, generator=gen) > 0.4
    mask[0, 0, :2] = True
    x = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return SF.masked_batch_norm(x, mask, None, None, w, b, training=True)

    assert torch.autograd.gradcheck(f, (x, w, b))
    x2 = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool)
    assert torch.autograd.gradcheck(
        lambda x: SF.masked_batch_norm(x, keep, None, None, None, None, training=True), (x2,)
    )


def test_backward_twice_with_retained_graph():
    gen = torch.Generator().manual_seed(7)
    mask = _random_mask(3, 5, gen, "cpu")
    x = torch.randn(3, 2, 5, generator=gen, requires_grad=True)
    y = MaskedBatchNorm1d(2)(x, mask)
    dy = torch.randn(3, 2, 5, generator=gen)
    (g1,) = torch.autograd.grad(y, x, dy, retain_graph=True)
    (g2,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(g1, g2)


# -------------------------------------------------------------- autocast
def _autocast_check(device: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(8)
    mask = _random_mask(4, 16, gen, device)
    x = (torch.randn(4, 6, 16, generator=gen) * 4 + 100).to(device=device, dtype=dtype)
    ours = MaskedBatchNorm1d(6, device=device)
    ref = MaskedBatchNorm1d(6, device=device)
    xr = x.detach().clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y = ours(xr, mask)
    assert y.dtype == dtype
    assert ours.running_mean.dtype == ours.running_var.dtype == torch.float32
    y.float().sum().backward()
    assert xr.grad.dtype == dtype
    # float32 computation on the same (low-precision) values
    y32 = ref(x.float(), mask)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.float(), y32, rtol=2e-2, atol=2e-2)
    # native BatchNorm under autocast keeps the same dtypes
    nat = nn.BatchNorm1d(6, device=device)
    with torch.autocast(device, dtype=dtype):
        assert nat(x).dtype == y.dtype


def test_autocast_cpu_bfloat16():
    _autocast_check("cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda(dtype):
    _autocast_check("cuda", dtype)


def test_float32_input_under_autocast_stays_float32():
    mask = lengths_to_mask([5, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = MaskedBatchNorm1d(3)(torch.randn(2, 3, 5), mask)
    assert y.dtype == torch.float32


# ------------------------------------------------------------ invariance
@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    extra=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_padding_invariance(lengths, extra, seed):
    """Extra padding changes nothing at real positions (train and eval)."""
    gen = torch.Generator().manual_seed(seed)
    if sum(lengths) < 2:
        lengths[0] = 2
    length = max(lengths)
    c = 3
    x = torch.randn(len(lengths), c, length + extra, generator=gen, dtype=torch.float64)
    short_mask = lengths_to_mask(lengths, length)
    long_mask = lengths_to_mask(lengths, length + extra)
    a = MaskedBatchNorm1d(c, dtype=torch.float64)
    b = copy.deepcopy(a)
    ya = a(x[..., :length], short_mask)
    yb = b(x, long_mask)
    torch.testing.assert_close(yb[..., :length], ya, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(b.running_var, a.running_var, atol=1e-12, rtol=1e-12)
    a.eval()
    b.eval()
    # eval: each sequence alone, unpadded, gives the same output
    yb = b(x, long_mask)
    for i, n in enumerate(lengths):
        alone = a(x[i : i + 1, :, :n], None)
        torch.testing.assert_close(yb[i : i + 1, :, :n], alone, atol=1e-12, rtol=1e-12)


# -------------------------------------------------------------- convert
def test_convert_masked_batchnorm_shares_state_and_matches_native():
    model = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
                          nn.Sequential(nn.BatchNorm1d(4, momentum=None)))
    model[1].running_mean.fill_(0.5)
    model.eval()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 6)
    converted = convert_masked_batchnorm(model)
    assert isinstance(converted[1], MaskedBatchNorm1d)
    assert isinstance(converted[3][0], MaskedBatchNorm1d)
    assert converted[3][0].momentum is None
    assert not converted[1].training
    assert converted[1].weight is ref[1].weight or torch.equal(converted[1].weight, ref[1].weight)
    assert list(converted.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(converted(x), ref(x), atol=0, rtol=0)
    lone = convert_masked_batchnorm(nn.BatchNorm1d(4))
    assert type(lone) is MaskedBatchNorm1d


def test_convert_sync_batchnorm_without_process_group():
    model = nn.Sequential(MaskedBatchNorm1d(4, fused=False), nn.Sequential(MaskedBatchNorm1d(4)))
    model[0].running_var.fill_(2.0)
    weight = model[0].weight
    synced = convert_sync_batchnorm(model)
    assert type(synced[0]) is MaskedSyncBatchNorm1d
    assert type(synced[1][0]) is MaskedSyncBatchNorm1d
    assert synced[0].weight is weight
    assert synced[0].running_var[0].item() == 2.0
    gen = torch.Generator().manual_seed(9)
    mask = _random_mask(3, 5, gen, "cpu")
    x = torch.randn(3, 4, 5, generator=gen)
    plain = MaskedBatchNorm1d(4)
    plain.load_state_dict(synced[0].state_dict())
    torch.testing.assert_close(synced[0](x, mask), plain(x, mask))
    torch.testing.assert_close(synced[0].running_var, plain.running_var)
    assert "fused" not in repr(plain)


# ----------------------------------------------------------------- fused
@pytest.mark.slow
def test_fused_path_matches_eager():
    """The one documented switch: MaskedBatchNorm1d(..., fused=True) (the CPU kernel here)."""
    gen = torch.Generator().manual_seed(10)
    mask = _random_mask(4, 12, gen, "cpu")
    x = torch.randn(4, 5, 12, generator=gen) * 2 + 3
    x.masked_fill_(~mask, float("nan"))
    dy = torch.randn(4, 5, 12, generator=gen)
    eager, fused = _pair(5, "cpu", torch.float32)
    fused = MaskedBatchNorm1d(5, fused=True)
    fused.load_state_dict(eager.state_dict())
    assert "fused=True" in repr(fused)
    for _ in range(2):
        xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yf = eager(xe, mask), fused(xf, mask)
        (ye * dy).sum().backward()
        (yf * dy).sum().backward()
        torch.testing.assert_close(yf, ye, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xf.grad, xe.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.weight.grad, eager.weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.bias.grad, eager.bias.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.running_var, eager.running_var)
    one = torch.zeros(4, 12, dtype=torch.bool)
    one[0, 0] = True
    with pytest.raises(ValueError, match="Expected more than 1 value"):
        fused(x, one)


def _holey_mask(b: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Random lengths plus holes inside sequences and one empty row: not only prefixes."""
    mask = _random_mask(b, length, gen, "cpu")
    mask &= torch.rand(b, 1, length, generator=gen) > 0.2
    mask[0, 0, :3] = True
    mask[-1] = False
    return mask


@pytest.mark.skipif(SF._batchnorm_cpu.load() is None, reason="needs a C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"affine": False}])
@pytest.mark.parametrize("holes", [True, False], ids=["holey", "right-padded"])
def test_fused_cpu_kernel_equals_native_on_gathered_real_positions(dtype, kw, holes):
    """fused=True on CPU runs the C++ kernel (checked); reference: native BN on real positions.
    Right-padded rows take the kernel's mask-free loops; rows with holes the masked ones."""
    gen = torch.Generator().manual_seed(12)
    b, c, length = 6, 5, 600  # rows longer than the kernel's 256-value chunks
    ref, _ = _pair(c, "cpu", dtype, **kw)
    ours = MaskedBatchNorm1d(c, dtype=dtype, fused=True, **kw)  # type: ignore[arg-type]
    ours.load_state_dict(ref.state_dict())
    ref = nn.BatchNorm1d(c, dtype=dtype, **kw)  # type: ignore[arg-type]
    ref.load_state_dict(ours.state_dict())
    for _ in range(3):
        if holes:
            mask = _holey_mask(b, length, gen)
        else:
            lengths = torch.randint(1, length + 1, (b,), generator=gen)
            lengths[0], lengths[1], lengths[2] = length, 0, 257
            mask = lengths_to_mask(lengths, length)
        x = torch.randn(b, c, length, generator=gen, dtype=dtype) * 3 - 1
        x.masked_fill_(~mask, float("nan"))  # padding must not matter, nan included
        dy = torch.randn(b, c, length, generator=gen, dtype=dtype)
        dy.masked_fill_(~mask, float("inf"))
        xo = x.clone().requires_grad_()
        y = ours(xo, mask)
        assert type(y.grad_fn).__name__.startswith("_CpuKernelMaskedBatchNormTrain")
        y.backward(dy)
        xg = _gather(x, mask).clone().requires_grad_()
        yg = ref(xg)
        yg.backward(_gather(dy, mask))
        scale = 10 if dtype == torch.float32 else 1
        _close(_gather(y, mask), yg, dtype, scale)
        assert torch.count_nonzero(y.masked_select(~mask)) == 0
        _close(_gather(xo.grad, mask), xg.grad, dtype, scale * 10)
        assert torch.count_nonzero(xo.grad.masked_select(~mask)) == 0
        if ours.affine:
            _close(ours.weight.grad, ref.weight.grad, dtype, scale * 10)
            _close(ours.bias.grad, ref.bias.grad, dtype, scale * 10)
        _close(ours.running_mean, ref.running_mean, dtype, scale)
        _close(ours.running_var, ref.running_var, dtype, scale)
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()


@pytest.mark.skipif(SF._batchnorm_cpu.load() is None, reason="needs a C++ compiler")
def test_fused_cpu_kernel_gradcheck_empty_batch_threads_and_large_means():
    gen = torch.Generator().manual_seed(13)
    mask = _holey_mask(3, 9, gen)
    x = torch.randn(3, 4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return SF.masked_batch_norm(x, mask, None, None, w, b, training=True, fused=True)

    assert type(f(x, w, b).grad_fn).__name__.startswith("_CpuKernelMaskedBatchNormTrain")
    assert torch.autograd.gradcheck(f, (x, w, b))
    # retained graph: a second backward gives the same gradient
    y = f(x, w, b)
    dy = torch.randn_like(y)
    assert torch.equal(*(torch.autograd.grad(y, x, dy, retain_graph=True) * 2))

    # an all-padding batch: zeros, zero gradients, running statistics untouched
    bn = MaskedBatchNorm1d(4, fused=True)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    xe = torch.randn(3, 4, 9, requires_grad=True)
    ye = bn(xe, torch.zeros(3, 9, dtype=torch.bool))
    ye.sum().backward()
    assert torch.count_nonzero(ye) == 0 and torch.count_nonzero(xe.grad) == 0
    assert torch.count_nonzero(bn.weight.grad) == 0 and torch.count_nonzero(bn.bias.grad) == 0
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k

    # channels are independent, so the thread count cannot change a single bit
    # long rows, means far from zero, small spreads
    means = torch.tensor([1e4, -3e3, 100.0], dtype=torch.float64).view(1, 3, 1)
    stds = torch.tensor([0.1, 0.01, 1e-3], dtype=torch.float64).view(1, 3, 1)
    xt = (torch.randn(5, 3, 2000, generator=gen, dtype=torch.float64) * stds + means).float()
    mt = _holey_mask(5, 2000, gen)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            xi = xt.clone().requires_grad_()
            yi = SF.masked_batch_norm(xi, mt, None, None, training=True, fused=True)
            yi.backward(torch.ones_like(yi))
            outs.append((yi, xi.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    # statistics of data with mean 1e4 against float64 (two-pass, no E[x^2] - E[x]^2)
    ref = xt.double().transpose(1, 2)[mt.squeeze(1)]
    bn = MaskedBatchNorm1d(3, momentum=1.0, fused=True)
    bn(xt, mt)
    torch.testing.assert_close(bn.running_mean.double(), ref.mean(0), rtol=1e-7, atol=0)
    torch.testing.assert_close(bn.running_var.double(), ref.var(0), rtol=1e-6, atol=0)


@pytest.mark.skipif(SF._batchnorm_cpu.load() is None, reason="needs a C++ compiler")
def test_fused_cpu_kernel_bfloat16_under_autocast():
    gen = torch.Generator().manual_seed(14)
    mask = _holey_mask(4, 24, gen)
    x = (torch.randn(4, 6, 24, generator=gen) * 4 + 100).to(torch.bfloat16)
    dy = torch.randn(4, 6, 24, generator=gen).to(torch.bfloat16)
    ours, ref = MaskedBatchNorm1d(6, fused=True), MaskedBatchNorm1d(6)
    xo, xr = x.clone().requires_grad_(), x.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(xo, mask)
    assert type(y.grad_fn).__name__.startswith("_CpuKernelMaskedBatchNormTrain")
    assert y.dtype == torch.bfloat16 and ours.running_var.dtype == torch.float32
    y.backward(dy)
    assert xo.grad.dtype == torch.bfloat16
    yr = ref(xr, mask)  # float32 eager on the same values: the reference
    yr.backward(dy.float())
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.float(), yr, rtol=1e-2, atol=1e-2)
    # rounded to nearest: within half a bfloat16 spacing of the float32 result
    m = mask.expand_as(yr)
    ulp = torch.exp2(torch.floor(torch.log2(yr.detach()[m].abs())) - 7)
    assert ((y.float()[m] - yr.detach()[m]).abs() <= 0.5 * ulp + 1e-5).all()
    torch.testing.assert_close(xo.grad.float(), xr.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_fused_compiled_path_for_short_and_two_dim_inputs():
    """L < 8 and (B, C) inputs take the torch.compile form; it equals the eager path."""
    gen = torch.Generator().manual_seed(15)
    for shape in [(16, 5), (4, 5, 3)]:
        x = torch.randn(*shape, generator=gen) * 2 + 3
        mask = torch.rand(shape[0], *shape[2:], generator=gen) > 0.3
        mask.view(-1)[:2] = True
        eager, fused = MaskedBatchNorm1d(5), MaskedBatchNorm1d(5, fused=True)
        xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yf = eager(xe, mask), fused(xf, mask)
        if len(shape) == 3:
            assert type(yf.grad_fn).__name__.startswith("_FusedMaskedBatchNormTrain")
        dy = torch.randn(*shape, generator=gen)
        ye.backward(dy)
        yf.backward(dy)
        torch.testing.assert_close(yf, ye, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xf.grad, xe.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.weight.grad, eager.weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.running_var, eager.running_var)
        # Independent reference: native BatchNorm1d on the gathered real positions.
        native = torch.nn.BatchNorm1d(5)
        xn = x.clone().requires_grad_()
        real = (xn if len(shape) == 2 else xn.transpose(1, 2))[mask]  # (N, C)
        yn = native(real)
        yf_real = (yf if len(shape) == 2 else yf.transpose(1, 2))[mask]
        torch.testing.assert_close(yf_real, yn, atol=1e-5, rtol=1e-5)
        dy_real = (dy if len(shape) == 2 else dy.transpose(1, 2))[mask]
        yn.backward(dy_real)
        torch.testing.assert_close(xf.grad, xn.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.running_mean, native.running_mean)
        torch.testing.assert_close(fused.running_var, native.running_var)
