"""Triton masked batch norm: the CUDA ``fused=True`` path of :class:`MaskedBatchNorm1d`.

Training-mode masked batch norm as three custom operators built on the Triton kernels of
:mod:`seqpad.nn._batchnorm_triton_kernels`:

* ``seqpad::masked_bn_fwd(x, mask, weight, bias, eps) -> (y, stats, bounds)``: per-row
  mask bounds, per-channel ``(n, mean, M2)`` over real positions (split over the batch
  when there are few channels), then normalisation and affine, zero at padding.
  ``stats`` is ``(4, C)`` float32: mean, biased variance, invstd, and the real-position
  count ``n`` (in every column). Differentiable in ``x``, ``weight`` and ``bias``.
* ``seqpad::masked_bn_bwd(dy, x, mask, bounds, weight, stats) -> (dx, grads)``:
  ``sum(dy)`` and ``sum(dy * (x - mean))`` over real positions, then ``dx`` (zero at
  padding); ``grads`` is ``(2, C)`` float32: dweight, dbias.
* ``seqpad::masked_bn_update_running(running_mean!, running_var!, num_batches_tracked!,
  stats, momentum, cumulative)``: the running-statistics update of the eager path
  (unbiased variance, ``lerp`` by ``momentum`` or ``1 / num_batches_tracked``; a batch
  without real positions changes nothing), in one kernel on the device.

Everything stays on the device: the count is a tensor, nothing is read back to the host,
so the ops run under ``torch.compile(fullgraph=True)`` and inside CUDA graphs
(``mode="reduce-overhead"``). They have fake (meta) implementations and an autograd
formula, so ``torch.compile`` sees them as single nodes without graph breaks.

Triton is optional: this module imports it only when a kernel first runs. :func:`forward`
returns None (and the caller runs the eager path) without Triton, off CUDA, for float64
or 2-D inputs, in evaluation with running statistics, or for synchronised statistics.
Under ``TRITON_INTERPRET=1`` the interpreted kernels run on CPU tensors, when
``_CPU_INTERPRETER`` is set (the tests do this); on CPU otherwise the C++ kernel of
:mod:`seqpad.nn._batchnorm_cpu` remains the fused path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqpad.masks import as_mask

if TYPE_CHECKING:
    from seqpad.nn.batchnorm import MaskedBatchNorm1d

__all__ = ["available", "forward"]

#: Whether Triton is installed (found without importing it).
_HAS_TRITON = importlib.util.find_spec("triton") is not None
#: Input dtypes the kernels take (statistics in float32).
SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)
#: Tests set this to run the interpreted kernels on CPU tensors (``TRITON_INTERPRET=1``).
_CPU_INTERPRETER = False

_kernel_sets: dict[bool, SimpleNamespace] = {}
_sm_counts: dict[int, int] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernels() -> SimpleNamespace:
    """The kernel set for the current mode (compiled, or Triton's interpreter)."""
    interpret = _interpreting()
    ks = _kernel_sets.get(interpret)
    if ks is None:
        from seqpad.nn import _batchnorm_triton_kernels

        ks = _kernel_sets[interpret] = _batchnorm_triton_kernels.build(interpret)
    return ks


def available(x: Tensor) -> bool:
    """Whether the Triton kernels can take ``x``: a 3-D CUDA tensor of a supported dtype
    (or a CPU one under the interpreter, for tests) with Triton installed."""
    if not _HAS_TRITON or x.dim() != 3 or x.dtype not in SUPPORTED or x.numel() == 0:
        return False
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and _CPU_INTERPRETER and _interpreting()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _on_device(x: Tensor) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the current CUDA device: make it ``x``'s."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _block(length: int) -> int:
    return max(16, min(1024, _pow2(length)))


def _splits(x: Tensor) -> tuple[int, int]:
    """``(NSPLIT, ROWS_PER)``: split the rows of a channel so that there are about four
    programs per multiprocessor (two splits at most under the interpreter)."""
    b, c, _ = x.shape
    if x.device.type == "cuda":
        idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
        sms = _sm_counts.get(idx)
        if sms is None:
            sms = _sm_counts[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
        want = -(-4 * sms // c)
    else:
        want = 2
    nsplit = max(1, min(b, want, 64))
    rows_per = -(-b // nsplit)
    return -(-b // rows_per), rows_per


def _fwd_impl(
    x: Tensor, mask: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    ks = _kernels()
    x = x.contiguous()
    b, c, length = x.shape
    has_mask = mask is not None
    y = torch.empty_like(x)
    stats = torch.empty(4, c, dtype=torch.float32, device=x.device)
    block = _block(length)
    if has_mask:
        mask = mask.contiguous()
        bounds = torch.empty(b, 4, dtype=torch.int32, device=x.device)
        ks.row_bounds[(b,)](mask, bounds, length, BLOCK=block)
    else:
        bounds = torch.empty(0, 4, dtype=torch.int32, device=x.device)
    nsplit, rows_per = _splits(x)
    part = torch.empty(3, nsplit, c, dtype=torch.float32, device=x.device)
    m_arg = mask if has_mask else x
    ks.fwd_stats[(c, nsplit)](
        x, m_arg, bounds, part, b, c, length, rows_per, nsplit, HAS_MASK=has_mask, BLOCK=block
    )
    ks.fwd_norm[(b * c, _cdiv(length, block))](
        x, m_arg, bounds, part,
        weight if weight is not None else x, bias if bias is not None else x,
        y, stats, c, length, nsplit, float(eps),
        HAS_MASK=has_mask, HAS_W=weight is not None, HAS_B=bias is not None,
        NSPLIT_P2=_pow2(nsplit), BLOCK=block,
    )
    return y, stats, bounds


def _bwd_impl(
    dy: Tensor, x: Tensor, mask: Tensor | None, bounds: Tensor, weight: Tensor | None,
    stats: Tensor,
) -> tuple[Tensor, Tensor]:
    ks = _kernels()
    x = x.contiguous()
    dy = dy.to(x.dtype).contiguous()
    b, c, length = x.shape
    has_mask = mask is not None
    m_arg = mask.contiguous() if mask is not None else x
    block = _block(length)
    nsplit, rows_per = _splits(x)
    part = torch.empty(2, nsplit, c, dtype=torch.float32, device=x.device)
    ks.bwd_reduce[(c, nsplit)](
        dy, x, m_arg, bounds, stats, part, b, c, length, rows_per, nsplit,
        HAS_MASK=has_mask, BLOCK=block,
    )
    dx = torch.empty_like(x)
    grads = torch.empty(2, c, dtype=torch.float32, device=x.device)
    ks.bwd_dx[(b * c, _cdiv(length, block))](
        dy, x, m_arg, bounds, stats, weight if weight is not None else x, part, dx, grads,
        c, length, nsplit,
        HAS_MASK=has_mask, HAS_W=weight is not None, NSPLIT_P2=_pow2(nsplit), BLOCK=block,
    )
    return dx, grads


# ------------------------------------------------------------------ custom operators


@torch.library.custom_op("seqpad::masked_bn_fwd", mutates_args=())
def masked_bn_fwd(
    x: Tensor, mask: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode masked batch norm forward: ``(y, stats (4, C), bounds (B, 4))``."""
    with _on_device(x):
        return _fwd_impl(x, mask, weight, bias, eps)


@masked_bn_fwd.register_fake
def _(x: Tensor, mask: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float):
    b, c, _ = x.shape
    rows = b if mask is not None else 0
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty((4, c), dtype=torch.float32),
        x.new_empty((rows, 4), dtype=torch.int32),
    )


@torch.library.custom_op("seqpad::masked_bn_bwd", mutates_args=())
def masked_bn_bwd(
    dy: Tensor, x: Tensor, mask: Tensor | None, bounds: Tensor, weight: Tensor | None,
    stats: Tensor,
) -> tuple[Tensor, Tensor]:
    """Backward of :func:`masked_bn_fwd`: ``(dx, grads (2, C) = (dweight, dbias))``."""
    with _on_device(x):
        return _bwd_impl(dy, x, mask, bounds, weight, stats)


@masked_bn_bwd.register_fake
def _(dy: Tensor, x: Tensor, mask: Tensor | None, bounds: Tensor, weight: Tensor | None,
      stats: Tensor):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty((2, x.shape[1]), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, mask, weight, bias, _ = inputs
    _, stats, bounds = output
    ctx.save_for_backward(x, mask, weight, stats, bounds)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy: Tensor, _dstats: Tensor, _dbounds: Tensor):  # type: ignore[no-untyped-def]
    x, mask, weight, stats, bounds = ctx.saved_tensors
    dx, grads = masked_bn_bwd(dy, x, mask, bounds, weight, stats)
    dw = None if weight is None else grads[0].to(weight.dtype)
    db = None if ctx.bias_dtype is None else grads[1].to(ctx.bias_dtype)
    return dx, None, dw, db, None


masked_bn_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(
    "seqpad::masked_bn_update_running",
    mutates_args=("running_mean", "running_var", "num_batches_tracked"),
)
def masked_bn_update_running(
    running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor, stats: Tensor,
    momentum: float, cumulative: bool,
) -> None:
    """Running-statistics update from ``stats`` of :func:`masked_bn_fwd`, in place."""
    _update_running_impl(running_mean, running_var, num_batches_tracked, stats, momentum,
                         cumulative)


def _update_running_impl(
    running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor, stats: Tensor,
    momentum: float, cumulative: bool,
) -> None:
    with _on_device(stats):
        _kernels().running_update[(1,)](
            stats, running_mean, running_var, num_batches_tracked, stats.shape[1], float(momentum),
        CUMULATIVE=cumulative, HAS_NBT=True, BLOCK_C=min(1024, max(16, _pow2(stats.shape[1]))),
    )


@masked_bn_update_running.register_fake
def _(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor, stats: Tensor,
      momentum: float, cumulative: bool) -> None:
    return None


class _EagerFn(torch.autograd.Function):
    """The same kernels without the custom-operator dispatch (eager mode only: fewer
    Python frames per call; ``torch.compile`` traces the operators instead)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, mask: Tensor | None,
        weight: Tensor | None, bias: Tensor | None, eps: float,
    ) -> tuple[Tensor, Tensor]:
        with _on_device(x):
            y, stats, bounds = _fwd_impl(x, mask, weight, bias, eps)
        ctx.save_for_backward(x, mask, weight, stats, bounds)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(stats)
        return y, stats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor, _dstats: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, mask, weight, stats, bounds = ctx.saved_tensors
        with _on_device(x):
            dx, grads = _bwd_impl(dy, x, mask, bounds, weight, stats)
        dw = None if weight is None else grads[0].to(weight.dtype)
        db = None if ctx.bias_dtype is None else grads[1].to(ctx.bias_dtype)
        return dx, None, dw, db, None


# ------------------------------------------------------------------------ entry point

_ONE_VALUE = "Expected more than 1 value per channel when training, got input size {} with 1 real position"


def forward(bn: MaskedBatchNorm1d, x: Tensor, mask: Tensor | None) -> Tensor | None:
    """``bn(x, mask)`` through the Triton kernels, or None where they do not apply.

    Applies to batch statistics (training, or no running statistics) of a 3-D input the
    kernels support (:func:`available`). With exactly one real position the eager path
    raises ``ValueError``; here the check is :func:`torch._assert_async` on the device
    count (no host sync): on CUDA a device-side assert, on CPU re-raised as ``ValueError``.
    """
    use_batch_stats = bn.training or not bn.track_running_stats
    if not use_batch_stats or not available(x):
        return None
    m = as_mask(mask, x)
    compiling = torch.compiler.is_compiling()
    if compiling:
        y, stats, _ = masked_bn_fwd(x, m, bn.weight, bn.bias, bn.eps)
    else:
        y, stats = _EagerFn.apply(x, m, bn.weight, bn.bias, bn.eps)
    if m is None:
        if x.shape[0] * x.shape[2] == 1:
            raise ValueError(_ONE_VALUE.format(x.size()))
    elif x.device.type == "cpu":  # the interpreter (tests): the assert fails at once
        msg = _ONE_VALUE.format(x.size())
        try:
            torch._assert_async(stats[3, 0] != 1, msg)
        except RuntimeError as err:
            raise ValueError(msg) from err
    else:
        torch._assert_async(stats[3, 0] != 1, _ONE_VALUE.format(x.size()))
    if bn.training and bn.track_running_stats:
        assert bn.running_mean is not None and bn.running_var is not None
        assert bn.num_batches_tracked is not None
        update = masked_bn_update_running if compiling else _update_running_impl
        update(
            bn.running_mean, bn.running_var, bn.num_batches_tracked, stats,
            0.0 if bn.momentum is None else bn.momentum, bn.momentum is None,
        )
    return y
