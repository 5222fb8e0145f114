"""Masked instance / group / layer norm against independent references.

References: the native modules (``nn.InstanceNorm1d``, ``nn.GroupNorm``, ``nn.LayerNorm``)
without padding, the native modules in float64 on each sequence alone (its real
positions cut out of the padded or packed batch), and float64 formulas for the running
statistics.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.models import build_model
from seqpad.nn import MaskedGroupNorm, MaskedInstanceNorm1d, MaskedLayerNorm1d
from seqpad.nn import functional as SF

F64 = torch.float64


def _instance(c: int, **kw: object) -> tuple[nn.Module, nn.Module]:
    ours = MaskedInstanceNorm1d(c, dtype=F64, **kw)  # type: ignore[arg-type]
    ref = nn.InstanceNorm1d(c, dtype=F64, **kw)  # type: ignore[arg-type]
    return _share(ours, ref)


def _group(g: int, c: int, **kw: object) -> tuple[nn.Module, nn.Module]:
    return _share(MaskedGroupNorm(g, c, dtype=F64, **kw), nn.GroupNorm(g, c, dtype=F64, **kw))  # type: ignore[arg-type]


def _layer(c: int) -> tuple[nn.Module, nn.Module]:
    return _share(MaskedLayerNorm1d(c, dtype=F64), nn.LayerNorm(c, dtype=F64))


def _share(ours: nn.Module, ref: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Random affine parameters, copied into the reference (same state_dict keys)."""
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _native(ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The native module on (B, C, L); LayerNorm over C on the transposed input."""
    if isinstance(ref, nn.LayerNorm):
        return ref(x.transpose(1, 2)).transpose(1, 2)
    return ref(x)


def _grads(mod: nn.Module, y: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(y, [x, *mod.parameters()], g))


MODULES = {
    "instance": lambda: _instance(6),
    "instance-affine": lambda: _instance(6, affine=True),
    "instance-running": lambda: _instance(6, affine=True, track_running_stats=True),
    "group-1": lambda: _group(1, 6),
    "group-3": lambda: _group(3, 6),
    "group-6": lambda: _group(6, 6),
    "layer": lambda: _layer(6),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_parity_without_padding(name: str) -> None:
    """An all-True mask gives the native module: forward, backward, running stats."""
    gen = torch.Generator().manual_seed(0)
    ours, ref = MODULES[name]()
    for _step in range(2):
        x = (torch.randn(3, 6, 11, generator=gen, dtype=F64) * 2 + 1).requires_grad_()
        g = torch.randn(3, 6, 11, generator=gen, dtype=F64)
        mask = torch.ones(3, 1, 11, dtype=torch.bool)
        y, y_ref = ours(x, mask), _native(ref, x)
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        for a, b in zip(_grads(ours, y, x, g), _grads(ref, y_ref, x, g), strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    for key, buf in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], buf, atol=1e-12, rtol=1e-12)
    ours.eval(), ref.eval()
    x = torch.randn(2, 6, 5, generator=gen, dtype=F64)
    torch.testing.assert_close(ours(x, torch.ones(2, 5)), _native(ref, x), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours(x), _native(ref, x), atol=1e-12, rtol=1e-12)  # mask=None


def test_defaults_and_state_dict_keys() -> None:
    ours, ref = MaskedInstanceNorm1d(4), nn.InstanceNorm1d(4)
    assert (ours.affine, ours.track_running_stats) == (False, False)
    assert list(ours.state_dict()) == list(ref.state_dict()) == []
    full = MaskedInstanceNorm1d(4, affine=True, track_running_stats=True)
    assert list(full.state_dict()) == list(
        nn.InstanceNorm1d(4, affine=True, track_running_stats=True).state_dict())
    assert list(MaskedGroupNorm(2, 4).state_dict()) == list(nn.GroupNorm(2, 4).state_dict())
    assert list(MaskedLayerNorm1d(4).state_dict()) == list(nn.LayerNorm(4).state_dict())
    assert repr(MaskedGroupNorm(2, 4)).startswith("MaskedGroupNorm(2, 4")
    with pytest.raises(ValueError, match="divisible"):
        SF.masked_group_norm(torch.randn(2, 5, 3), None, 2)


def _per_sequence_reference(ref: nn.Module, x: torch.Tensor, lengths: list[int],
                            g: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Native module on each sequence alone: outputs (zero at padding) and summed grads."""
    y = torch.zeros_like(x)
    dx = torch.zeros_like(x)
    dparams = [torch.zeros_like(p) for p in ref.parameters()]
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        xb = x[b:b + 1, :, :n].detach().clone().requires_grad_()
        yb = _native(ref, xb)
        grads = torch.autograd.grad(yb, [xb, *ref.parameters()], g[b:b + 1, :, :n])
        y[b, :, :n] = yb.detach()[0]
        dx[b, :, :n] = grads[0][0]
        for acc, gp in zip(dparams, grads[1:], strict=True):
            acc += gp
    return y, [dx, *dparams]


@pytest.mark.parametrize("name", list(MODULES))
def test_float64_reference_with_padding(name: str) -> None:
    """Each padded sequence gets what the native module gives it alone."""
    gen = torch.Generator().manual_seed(1)
    ours, ref = MODULES[name]()
    lengths = [9, 4, 2, 7]
    x = (torch.randn(4, 6, 9, generator=gen, dtype=F64) * 3 - 2).requires_grad_()
    g = torch.randn(4, 6, 9, generator=gen, dtype=F64)
    mask = lengths_to_mask(lengths, 9)
    y = ours(x, mask)
    y_ref, grads_ref = _per_sequence_reference(ref, x, lengths, g)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    for a, b in zip(_grads(ours, y, x, g), grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


def test_instance_running_stats_with_padding() -> None:
    """Running stats move towards the average over samples of real-position statistics."""
    gen = torch.Generator().manual_seed(2)
    ours = MaskedInstanceNorm1d(3, momentum=0.3, track_running_stats=True, dtype=F64)
    x = torch.randn(4, 3, 8, generator=gen, dtype=F64) + 5
    lengths = [8, 3, 0, 5]  # an all-padding sample is left out
    ours(x, lengths_to_mask(lengths, 8))
    means = torch.stack([x[b, :, :n].mean(-1) for b, n in enumerate(lengths) if n])
    vars_ = torch.stack([x[b, :, :n].var(-1, unbiased=True) for b, n in enumerate(lengths) if n])
    torch.testing.assert_close(ours.running_mean, 0.3 * means.mean(0), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours.running_var, 0.7 + 0.3 * vars_.mean(0), atol=1e-12, rtol=1e-12)
    assert int(ours.num_batches_tracked) == 0  # as nn.InstanceNorm1d
    before = ours.running_mean.clone()
    ours(x, torch.zeros(4, 8, dtype=torch.bool))  # no real position: no update
    torch.testing.assert_close(ours.running_mean, before, atol=0, rtol=0)
    ours.eval()  # eval: the running statistics normalise, zero at padding
    y = ours(x, lengths_to_mask(lengths, 8))
    want = (x - ours.running_mean.view(1, 3, 1)) / torch.sqrt(ours.running_var.view(1, 3, 1) + 1e-5)
    torch.testing.assert_close(y, want * lengths_to_mask(lengths, 8), atol=1e-12, rtol=1e-12)


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(sorted(MODULES)),
    lengths=st.lists(st.integers(0, 7), min_size=1, max_size=4),
    extra=st.integers(1, 5),
    junk=st.sampled_from([0.0, 1e6, float("nan"), float("inf")]),
    seed=st.integers(0, 2**16),
)
def test_padding_invariance(name: str, lengths: list[int], extra: int, junk: float, seed: int) -> None:
    """More padding, holding anything (NaN, inf), changes nothing at real positions."""
    gen = torch.Generator().manual_seed(seed)
    ours, _ = MODULES[name]()
    length = max(lengths)
    x = torch.randn(len(lengths), 6, length, generator=gen, dtype=F64)
    g = torch.randn(len(lengths), 6, length + extra, generator=gen, dtype=F64)
    mask = lengths_to_mask(lengths, length)
    mask_big = lengths_to_mask(lengths, length + extra)
    xa = x.masked_fill(~mask, 0).requires_grad_()
    xb = torch.cat([x, torch.full((len(lengths), 6, extra), junk, dtype=F64)], dim=2)
    xb = xb.masked_fill(~mask_big, junk).requires_grad_()
    ya, yb = ours(xa, mask), ours(xb, mask_big)
    assert torch.isfinite(yb).all()
    torch.testing.assert_close(yb[:, :, :length], ya, atol=1e-12, rtol=1e-12)
    assert (yb.masked_fill(mask_big, 0) == 0).all()
    ga = _grads(ours, ya, xa, g[:, :, :length])
    gb = _grads(ours, yb, xb, g)
    assert (gb[0].masked_fill(mask_big, 0) == 0).all()  # zero gradient at padding
    torch.testing.assert_close(gb[0][:, :, :length], ga[0], atol=1e-11, rtol=1e-11)
    for a, b in zip(ga[1:], gb[1:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("name", ["instance-affine", "group-3", "layer"])
def test_all_padding_sample_gives_zeros(name: str) -> None:
    ours, _ = MODULES[name]()
    x = torch.randn(2, 6, 5, dtype=F64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [False] * 5])
    y = ours(x, mask)
    assert torch.isfinite(y).all() and (y[1] == 0).all()
    (dx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert torch.isfinite(dx).all() and (dx[1] == 0).all()
    empty = torch.zeros(0, 6, 0, dtype=F64) if name != "layer" else torch.zeros(2, 6, 0, dtype=F64)
    assert ours(empty, torch.zeros(empty.shape[0], 0, dtype=torch.bool)).shape == empty.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["instance", "group", "layer"])
def test_half_input_statistics_in_float32(kind: str, dtype: torch.dtype) -> None:
    """bf16 / fp16 input under autocast: fp32 statistics, output in the input dtype."""
    gen = torch.Generator().manual_seed(3)
    c, lengths = 8, [16, 9, 12]
    # A large offset: statistics taken in bf16 would be off by ~0.5 (bf16 spacing at 256).
    x = (torch.randn(3, c, 16, generator=gen) * 0.5 + 300).to(dtype)
    mask = lengths_to_mask(lengths, 16)
    if kind == "instance":
        mod: nn.Module = MaskedInstanceNorm1d(c, affine=True, track_running_stats=True, momentum=1.0)
    elif kind == "group":
        mod = MaskedGroupNorm(2, c)
    else:
        mod = MaskedLayerNorm1d(c)
    ref = {"instance": lambda: nn.InstanceNorm1d(c), "group": lambda: nn.GroupNorm(2, c, dtype=F64),
           "layer": lambda: nn.LayerNorm(c, dtype=F64)}[kind]().to(F64)
    with torch.autocast("cpu", dtype=dtype):
        y = mod(x, mask)
    assert y.dtype == dtype
    y_ref, _ = _per_sequence_reference(ref, x.to(F64), lengths, torch.zeros(3, c, 16, dtype=F64))
    torch.testing.assert_close(y.to(F64), y_ref, atol=0.05, rtol=0.02)
    if kind == "instance":
        xs = x.to(F64)
        means = torch.stack([xs[b, :, :n].mean(-1) for b, n in enumerate(lengths)]).mean(0)
        assert mod.running_mean.dtype == torch.float32
        torch.testing.assert_close(mod.running_mean.to(F64), means, atol=1e-4, rtol=1e-6)


def _pack(seqs: list[torch.Tensor], rows: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay sequences (C, n) end to end into rows: x (R, C, length), segment_ids (R, length)."""
    c = seqs[0].shape[0]
    x = torch.full((len(rows), c, length), float("nan"), dtype=seqs[0].dtype)
    seg = torch.zeros(len(rows), length, dtype=torch.int32)
    for r, idx in enumerate(rows):
        pos = 0
        for k, i in enumerate(idx):
            n = seqs[i].shape[1]
            x[r, :, pos:pos + n] = seqs[i]
            seg[r, pos:pos + n] = k + 1
            pos += n
    return x, seg


@pytest.mark.parametrize("name", list(MODULES))
def test_segments_equal_each_sequence_alone(name: str) -> None:
    gen = torch.Generator().manual_seed(4)
    ours, ref = MODULES[name]()
    ns = [5, 3, 2, 4, 6]
    seqs = [torch.randn(6, n, generator=gen, dtype=F64) * 2 + i for i, n in enumerate(ns)]
    rows = [[0, 1, 2], [3], [4]]
    x, seg = _pack(seqs, rows, 10)
    x.requires_grad_()
    g = torch.randn(x.shape, generator=gen, dtype=F64)
    y = ours(x, segment_ids=seg)
    grads = _grads(ours, y, x, g)
    assert (y.masked_fill(seg.unsqueeze(1) > 0, 0) == 0).all()
    assert (grads[0].masked_fill(seg.unsqueeze(1) > 0, 0) == 0).all()
    dparams = [torch.zeros_like(p) for p in ref.parameters()]
    for r, idx in enumerate(rows):
        pos = 0
        for i in idx:
            n = ns[i]
            xi = seqs[i].unsqueeze(0).clone().requires_grad_()
            yi = _native(ref, xi)
            gi = torch.autograd.grad(yi, [xi, *ref.parameters()], g[r:r + 1, :, pos:pos + n])
            torch.testing.assert_close(y[r, :, pos:pos + n], yi[0].detach(), atol=1e-12, rtol=1e-12)
            torch.testing.assert_close(grads[0][r, :, pos:pos + n], gi[0][0], atol=1e-11, rtol=1e-11)
            for acc, gp in zip(dparams, gi[1:], strict=True):
                acc += gp
            pos += n
    for a, b in zip(grads[1:], dparams, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


def test_packed_running_stats_equal_padded() -> None:
    """Instance-norm running stats: packed rows update them as the padded batch does."""
    gen = torch.Generator().manual_seed(5)
    ns = [5, 3, 4]
    seqs = [torch.randn(3, n, generator=gen, dtype=F64) + 2 for n in ns]
    packed = MaskedInstanceNorm1d(3, track_running_stats=True, dtype=F64)
    padded = MaskedInstanceNorm1d(3, track_running_stats=True, dtype=F64)
    x, seg = _pack(seqs, [[0, 1], [2]], 9)
    packed(x, segment_ids=seg)
    xp = torch.zeros(3, 3, 5, dtype=F64)
    for i, s in enumerate(seqs):
        xp[i, :, :ns[i]] = s
    padded(xp, lengths_to_mask(ns, 5))
    torch.testing.assert_close(packed.running_mean, padded.running_mean, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(packed.running_var, padded.running_var, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "layer", "hybrid-instance"])
def test_build_model_norm_option_trains(norm: str) -> None:
    torch.manual_seed(0)
    arch = "cnn"
    if norm.startswith("hybrid-"):
        arch, norm = "hybrid", norm.split("-", 1)[1]
    cfg = {"arch": arch, "vocab_size": 8, "d_model": 8, "n_layers": 2, "norm": norm}
    if norm == "group":
        cfg["norm_groups"] = 2
    model = build_model(cfg)
    assert model.config["norm"] == norm
    assert build_model(model.config).config == model.config
    tokens = torch.randint(1, 8, (3, 12))
    tokens[1, 7:] = 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(tokens)
    loss = nn.functional.cross_entropy(logits, tokens, ignore_index=0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if norm != "batch":  # per-sample norms: outputs do not depend on batch mates in train mode
        torch.testing.assert_close(model(tokens)[1:2, :, :7], model(tokens[1:2, :7]),
                                   atol=1e-5, rtol=1e-5)
    model.eval()  # padding invariance holds in eval mode with every norm
    with pytest.raises(ValueError, match="norm"):
        build_model({**cfg, "norm": "weight"})
    alone = model(tokens[1:2, :7])
    torch.testing.assert_close(model(tokens)[1:2, :, :7], alone, atol=1e-5, rtol=1e-5)


def test_build_model_norm_groups_validation() -> None:
    base = {"arch": "cnn", "vocab_size": 8, "d_model": 12}
    with pytest.raises(ValueError, match="norm_groups"):
        build_model({**base, "norm": "group", "norm_groups": 5})
    with pytest.raises(ValueError, match="norm_groups"):
        build_model({**base, "norm": "instance", "norm_groups": 2})
    with pytest.raises(ValueError, match="norm"):
        build_model({"arch": "rnn", "vocab_size": 8, "norm": "layer"})
    assert build_model({**base, "norm": "group", "norm_groups": 3}).config["norm_groups"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["instance", "group", "layer"])
def test_cuda_matches_cpu(kind: str) -> None:
    """The accelerator path (padding always zeroed, no host sync) equals the CPU one."""
    gen = torch.Generator().manual_seed(6)
    make = {"instance": lambda: MaskedInstanceNorm1d(8, affine=True, track_running_stats=True),
            "group": lambda: MaskedGroupNorm(2, 8), "layer": lambda: MaskedLayerNorm1d(8)}[kind]
    cpu, gpu = make(), make().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(3, 8, 10, generator=gen)
    x[2, :, 4:] = float("nan")
    mask = lengths_to_mask([10, 6, 4], 10)
    g = torch.randn(3, 8, 10, generator=gen)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    yc, yg = cpu(xc, mask), gpu(xg, mask.cuda())
    yc.backward(g), yg.backward(g.cuda())
    torch.testing.assert_close(yg.cpu(), yc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, atol=1e-5, rtol=1e-5)
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, atol=1e-5, rtol=1e-5)
    seg = torch.tensor([[1] * 5 + [2] * 5, [1] * 6 + [0] * 4, [1] * 4 + [0] * 6])
    torch.testing.assert_close(gpu(xg, segment_ids=seg.cuda()).cpu(), cpu(xc, segment_ids=seg),
                               atol=1e-5, rtol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yb = gpu(xg.detach().bfloat16(), mask.cuda())
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb).all()
