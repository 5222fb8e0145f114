"""The Triton masked batch norm (CUDA ``fused=True`` path) against independent references.

On CPU the kernels run under Triton's interpreter. ``TRITON_INTERPRET=1`` must be set
before Triton is first imported (torch and other tests import it), so
``test_kernels_under_triton_interpreter`` reruns this file in a fresh subprocess with it
set; there the ``interpret`` tests run (elsewhere they are skipped). References: float64 math on the real
positions, ``nn.BatchNorm1d`` applied to the real positions gathered into ``(N, C)``, and
native batch norm for ``mask=None``. The tests named ``test_cuda_*`` need a GPU and run
the compiled kernels (``bash bench/gpu_check.sh`` runs them).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from seqpad.nn import _batchnorm_triton as BT
from seqpad.nn.batchnorm import MaskedBatchNorm1d

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Output / gradient tolerance per input dtype (values are O(1); fp16 / bf16 round the output).
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


# Set for the whole process (the subprocess below), never toggled inside one.
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    if not INTERPRETING:
        pytest.skip("runs in the TRITON_INTERPRET=1 subprocess of the test below")
    monkeypatch.setattr(BT, "_CPU_INTERPRETER", True)


@pytest.mark.skipif(INTERPRETING, reason="this process already interprets")
def test_kernels_under_triton_interpreter():
    """Run this file's interpreter tests in a subprocess with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "not cuda and not under_triton_interpreter and not sm90"],
        env=env, cwd=root, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    assert " passed" in out and "skipped" not in out, out


def _mask(lengths: list[int], length: int, holes: bool = True) -> torch.Tensor:
    """Right-padded rows of the given lengths; with ``holes`` also a row with a hole and
    a left-padded row (the rows read with mask loads)."""
    m = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    if holes:
        m[1, 2] = False
        m[-1] = torch.arange(length) >= length - lengths[-1]
    return m.unsqueeze(1)


def _pair(c: int, dtype: torch.dtype = torch.float32, device: str = "cpu", **kw: object):
    ours = MaskedBatchNorm1d(c, device=device, fused=True, **kw)  # type: ignore[arg-type]
    if ours.affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.normal_()
    ref = nn.BatchNorm1d(c, device=device, **kw)  # type: ignore[arg-type]
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _gather(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)[mask.squeeze(1)]


def _reference64(x, mask, weight, bias, dy, eps=1e-5):
    """Float64 forward and backward on the real positions (autograd of the plain formula)."""
    xr = _gather(x.double(), mask).requires_grad_()
    w = weight.double().detach().requires_grad_()
    b = bias.double().detach().requires_grad_()
    mean = xr.mean(0)
    var = xr.var(0, unbiased=False)
    y = (xr - mean) / torch.sqrt(var + eps) * w + b
    y.backward(_gather(dy.double(), mask))
    return y.detach(), xr.grad, w.grad, b.grad, mean.detach(), xr.detach().var(0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_running_stats_match_float64_and_native(interpret, dtype):
    gen = torch.Generator().manual_seed(0)
    b, c, length = 4, 5, 21
    mask = _mask([21, 13, 7, 9], length)
    x = (torch.randn(b, c, length, generator=gen) * 2 + 3).to(dtype)
    x[~mask.expand_as(x)] = float("nan")  # padding must never leak
    dy = torch.randn(b, c, length, generator=gen).to(dtype)
    ours, native = _pair(c)
    xin = x.clone().requires_grad_()
    y = ours(xin, mask)
    y.backward(dy)
    assert y.dtype == dtype

    yr, dxr, dwr, dbr, mean, uvar = _reference64(x, mask, ours.weight, ours.bias, dy)
    tol = TOL[dtype]
    pad = ~mask.expand_as(x)
    assert torch.equal(y[pad], torch.zeros_like(y[pad]))
    assert torch.equal(xin.grad[pad], torch.zeros_like(xin.grad[pad]))
    torch.testing.assert_close(_gather(y, mask).double(), yr, atol=tol, rtol=tol)
    torch.testing.assert_close(_gather(xin.grad, mask).double(), dxr, atol=tol, rtol=tol)
    torch.testing.assert_close(ours.weight.grad.double(), dwr, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(ours.bias.grad.double(), dbr, atol=tol * 10, rtol=tol)
    # Running statistics: unbiased variance, momentum 0.1, from the (rounded) input.
    torch.testing.assert_close(ours.running_mean.double(), 0.1 * mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.running_var.double(), 0.9 + 0.1 * uvar, atol=1e-6, rtol=1e-5)
    assert int(ours.num_batches_tracked) == 1

    # Native BatchNorm1d on the gathered real positions (float32).
    xg = _gather(x, mask).float().requires_grad_()
    yn = native(xg)
    yn.backward(_gather(dy, mask).float())
    torch.testing.assert_close(_gather(y, mask).float(), yn, atol=tol, rtol=tol)
    torch.testing.assert_close(_gather(xin.grad, mask).float(), xg.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(ours.running_mean, native.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, native.running_var, atol=1e-6, rtol=1e-5)


def test_equals_eager_path_over_steps_cumulative_and_empty_batch(interpret):
    """momentum=None (cumulative average) over several batches, one of them all padding,
    against the eager path: same outputs, gradients and buffers."""
    gen = torch.Generator().manual_seed(1)
    c, length = 3, 17
    ours, _ = _pair(c, momentum=None)
    eager = copy.deepcopy(ours)
    eager.fused = False
    for lengths in ([17, 5, 11], [0, 0, 0], [3, 17, 1]):
        mask = _mask(lengths, length, holes=False)
        x = torch.randn(3, c, length, generator=gen) + 1
        dy = torch.randn(3, c, length, generator=gen)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa, mask), eager(xb, mask)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(ya, yb, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(xa.grad, xb.grad, atol=2e-6, rtol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(eager, name), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(ours.weight.grad, eager.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.bias.grad, eager.bias.grad, atol=1e-5, rtol=1e-5)
    assert int(ours.num_batches_tracked) == 2  # the empty batch is not counted


def test_no_mask_equals_native_and_all_true_mask(interpret):
    """The op with mask=None (no mask loads at all) and the module with an all-True mask
    both equal native training-mode batch norm; no affine, no running stats."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 40, generator=gen) * 3
    dy = torch.randn_like(x)
    xa = x.clone().requires_grad_()
    y, stats, bounds = BT.masked_bn_fwd(xa, None, None, None, 1e-5)
    y.backward(dy)
    xn = x.clone().requires_grad_()
    yn = torch.nn.functional.batch_norm(xn, None, None, training=True, eps=1e-5)
    yn.backward(dy)
    torch.testing.assert_close(y, yn, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(xa.grad, xn.grad, atol=2e-6, rtol=1e-5)
    assert bounds.shape == (0, 4) and float(stats.detach()[3, 0]) == 120

    ours, _ = _pair(4, affine=False, track_running_stats=False)
    ours.train()
    xb = x.clone().requires_grad_()
    ones = torch.ones(3, 1, 40, dtype=torch.bool)
    yb = ours(xb, ones)
    yb.backward(dy)
    torch.testing.assert_close(yb, yn, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(xb.grad, xn.grad, atol=2e-6, rtol=1e-5)


def test_row_bounds_and_dispatch(interpret):
    mask = _mask([9, 5, 0, 4], 9)
    _, _, bounds = BT.masked_bn_fwd(torch.randn(4, 2, 9), mask, None, None, 1e-5)
    # (lo, hi, count, dense): full row, a hole, an empty row, a left-padded row.
    assert bounds.tolist() == [[0, 9, 9, 1], [0, 5, 4, 0], [0, 0, 0, 1], [5, 9, 4, 1]]

    bn = MaskedBatchNorm1d(2, fused=True)
    x = torch.randn(4, 2, 9)
    assert BT.forward(bn, x, mask) is not None
    assert BT.forward(bn, x.double(), mask) is None  # float64: the eager / C++ path
    assert BT.forward(bn, x[:, :, 0], mask[:, 0, 0]) is None  # (B, C) input
    bn.eval()
    assert BT.forward(bn, x, mask) is None  # running statistics: the eager path
    one = torch.zeros(4, 1, 9, dtype=torch.bool)
    one[2, 0, 3] = True
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.train()(x, one)


def test_not_used_on_cpu_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(BT, "_CPU_INTERPRETER", True)
    assert not BT.available(torch.randn(2, 3, 8))
    monkeypatch.setattr(BT, "_CPU_INTERPRETER", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not BT.available(torch.randn(2, 3, 8))


def test_opcheck(interpret):
    """Schema, fake (meta) implementation and autograd registration are consistent."""
    x = torch.randn(2, 3, 8, requires_grad=True)
    mask = _mask([8, 5], 8, holes=False)
    w = torch.rand(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    torch.library.opcheck(
        BT.masked_bn_fwd, (x, mask, w, b, 1e-5),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_whole_graph_under_torch_compile(interpret):
    """No graph break (custom ops with fake and autograd formulas); a compiled training
    step (aot_eager: no backend compiler needed) equals eager, buffers included."""
    ours, _ = _pair(4)
    ref = copy.deepcopy(ours)
    x = torch.randn(3, 4, 16)
    mask = _mask([16, 9, 4], 16, holes=False)
    explain = torch._dynamo.explain(copy.deepcopy(ours))(x, mask)
    assert explain.graph_break_count == 0 and explain.graph_count == 1

    step = torch.compile(lambda t, m: ours(t, m).square().sum(), fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    step(xc, mask).backward()
    ref(xe, mask).square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, atol=0, rtol=0)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=0, rtol=0)
    torch.testing.assert_close(ours.num_batches_tracked, ref.num_batches_tracked)


@pytest.mark.skipif(INTERPRETING, reason="compiles the real kernels, not the interpreter's")
@pytest.mark.parametrize("dtype", ["*fp32", "*bf16"])
def test_kernels_compile_for_sm90_without_a_gpu(dtype):
    """Every kernel goes through Triton's whole compiler (down to a cubin for sm_90 with
    Triton's bundled ptxas): catches errors the interpreter lets through."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from seqpad.nn import _batchnorm_triton_kernels as K

    ks = K.build(False)
    i32, f32 = "i32", "*fp32"
    for has_mask in (True, False):
        m = "*i1" if has_mask else dtype
        common = {"mask_ptr": m, "bounds_ptr": "*i32"}
        cases = [
            ("fwd_stats", {"x_ptr": dtype, **common, "part_ptr": f32, "B": i32, "C": i32,
                           "L": i32, "ROWS_PER": i32, "NSPLIT": i32},
             {"HAS_MASK": has_mask, "BLOCK": 512}),
            ("fwd_norm", {"x_ptr": dtype, **common, "part_ptr": f32, "w_ptr": f32,
                          "b_ptr": f32, "y_ptr": dtype, "stats_ptr": f32, "C": i32, "L": i32,
                          "NSPLIT": i32, "eps": "fp32"},
             {"HAS_MASK": has_mask, "HAS_W": True, "HAS_B": True, "NSPLIT_P2": 4,
              "BLOCK": 512}),
            ("bwd_reduce", {"dy_ptr": dtype, "x_ptr": dtype, **common, "stats_ptr": f32,
                            "part_ptr": f32, "B": i32, "C": i32, "L": i32, "ROWS_PER": i32,
                            "NSPLIT": i32},
             {"HAS_MASK": has_mask, "BLOCK": 1024}),
            ("bwd_dx", {"dy_ptr": dtype, "x_ptr": dtype, **common, "stats_ptr": f32,
                        "w_ptr": f32, "part_ptr": f32, "dx_ptr": dtype, "grads_ptr": f32,
                        "C": i32, "L": i32, "NSPLIT": i32},
             {"HAS_MASK": has_mask, "HAS_W": False, "NSPLIT_P2": 1, "BLOCK": 1024}),
        ]
        if has_mask:
            cases.append(("row_bounds", {"mask_ptr": "*i1", "bounds_ptr": "*i32", "L": i32},
                          {"BLOCK": 1024}))
            cases.append(("running_update", {"stats_ptr": f32, "rm_ptr": dtype, "rv_ptr": dtype,
                                             "nbt_ptr": "*i64", "C": i32, "momentum": "fp32"},
                          {"CUMULATIVE": dtype == "*fp32", "HAS_NBT": True, "BLOCK_C": 1024}))
        for name, sig, const in cases:
            sig = {**sig, **dict.fromkeys(const, "constexpr")}
            try:
                out = compile(ASTSource(getattr(ks, name), sig, const),
                              target=GPUTarget("cuda", 90, 32))
            except (RuntimeError, FileNotFoundError, ImportError) as err:
                if "ptxas" in str(err) or isinstance(err, (FileNotFoundError, ImportError)):
                    pytest.skip(f"no usable CUDA toolchain in this Triton install: {err}")
                raise
            assert out.asm["cubin"], name


# ----------------------------------------------------------------------- CUDA only


def _cuda_batch(b=8, c=64, length=300, dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    lengths = torch.randint(2, length + 1, (b,), generator=gen, device="cuda")
    lengths[0] = length
    mask = (torch.arange(length, device="cuda")[None] < lengths[:, None]).unsqueeze(1)
    x = (torch.randn(b, c, length, generator=gen, device="cuda") * 2 + 1).to(dtype)
    return x, mask


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_match_eager(dtype):
    x, mask = _cuda_batch(dtype=dtype)
    mask[3, :, 5] = False  # one row with a hole
    dy = torch.randn_like(x)
    ours, _ = _pair(x.shape[1], device="cuda")
    eager = copy.deepcopy(ours)
    eager.fused = False
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa, mask), eager(xb, mask)
    ya.backward(dy)
    yb.backward(dy)
    tol = TOL[dtype]
    torch.testing.assert_close(ya, yb, atol=tol, rtol=tol)
    torch.testing.assert_close(xa.grad, xb.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(ours.weight.grad, eager.weight.grad, atol=tol * 50, rtol=tol)
    torch.testing.assert_close(ours.bias.grad, eager.bias.grad, atol=tol * 50, rtol=tol)
    torch.testing.assert_close(ours.running_mean, eager.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, eager.running_var, atol=1e-5, rtol=1e-5)


@cuda_only
def test_cuda_no_host_sync_and_compiled_fullgraph():
    x, mask = _cuda_batch()
    ours, _ = _pair(x.shape[1], device="cuda")
    eager = copy.deepcopy(ours)
    xa = x.clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = ours(xa, mask)
        y.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    explain = torch._dynamo.explain(copy.deepcopy(eager))(x, mask)
    assert explain.graph_break_count == 0
    compiled = torch.compile(eager, fullgraph=True)
    xc = x.clone().requires_grad_()
    yc = compiled(xc, mask)
    yc.sum().backward()
    torch.testing.assert_close(yc, y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(xc.grad, xa.grad, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(eager.running_var, ours.running_var, atol=1e-6, rtol=1e-6)


@cuda_only
def test_cuda_graphs_reduce_overhead():
    x, mask = _cuda_batch()
    ours, _ = _pair(x.shape[1], device="cuda")
    ref = copy.deepcopy(ours)
    step = torch.compile(lambda t, m: ours(t, m).square().sum(), mode="reduce-overhead")
    for _ in range(3):  # forward and backward, captured after the warm-up calls
        ours.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        out = step(x, mask)
        out.backward()
        want = ref(x, mask).square().sum()
        want.backward()
        out = out.detach().clone()
    torch.testing.assert_close(out, want.detach(), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=1e-6)
