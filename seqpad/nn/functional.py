"""Masked functional ops, in the spirit of ``torch.nn.functional``.

Conventions: ``x`` is ``(B, C, L)``; ``mask`` is anything :func:`seqpad.masks.as_mask`
accepts (canonically ``(B, 1, L)`` bool, True at real tokens) or ``None`` for "no
padding". Outputs are zero at padded positions and no gradient flows into padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqpad.masks import as_mask
from seqpad.nn import _batchnorm_cpu

__all__ = [
    "masked_batch_norm",
    "masked_batch_norm_reference",
    "masked_conv1d",
    "masked_embedding",
    "masked_fill_padding",
    "masked_group_norm",
    "masked_instance_norm",
    "masked_layer_norm_1d",
    "masked_max",
    "masked_mean",
    "masked_sum",
    "merge_batch_stats",
    "same_padding",
]


def masked_fill_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero ``x`` at padded positions.

    Uses ``masked_fill`` rather than multiplication, so NaN or inf values sitting in
    padding are cleared too, and the gradient at padded positions is exactly zero.

    Args:
        x: ``(B, C, L)``.
        mask: ``(B, 1, L)`` / ``(B, L)`` mask or None (returns ``x`` unchanged).
    """
    m = as_mask(mask, x)
    if m is None:
        return x
    return x.masked_fill(~m, 0)


# --------------------------------------------------------------------- pooling
def masked_sum(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sum over real positions: ``(B, C, L)`` -> ``(B, C)``; 0 for an all-padding row."""
    return masked_fill_padding(x, mask).sum(dim=-1)


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over real positions: ``(B, C, L)`` -> ``(B, C)``.

    A sequence with no real positions gives 0 (never NaN). Without a mask this is
    ``x.mean(-1)``.
    """
    m = as_mask(mask, x)
    if m is None:
        return x.mean(dim=-1)
    total = x.masked_fill(~m, 0).sum(dim=-1)
    count = m.sum(dim=-1).clamp_min(1).to(total.dtype)  # (B, 1)
    return total / count


def masked_max(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Max over real positions: ``(B, C, L)`` -> ``(B, C)``.

    A sequence with no real positions gives 0 (never -inf), with zero gradient.
    """
    m = as_mask(mask, x)
    if m is None:
        return x.amax(dim=-1)
    if x.shape[-1] == 0:
        # All sequences empty (L = 0): zeros, still connected to the graph.
        return x.sum(dim=-1)
    filled = x.masked_fill(~m, float("-inf"))
    best = filled.amax(dim=-1)
    has_any = m.any(dim=-1)  # (B, 1)
    return torch.where(has_any, best, torch.zeros((), dtype=x.dtype, device=x.device))


# ----------------------------------------------------------------- convolution
def same_padding(kernel_size: int, dilation: int = 1, causal: bool = False) -> tuple[int, int]:
    """``(left, right)`` zero padding that keeps the length of a stride-1 convolution.

    The total is ``dilation * (kernel_size - 1)``. Causal padding puts it all on the
    left; otherwise it is split as PyTorch's ``padding="same"`` splits it
    (``left = total // 2``, the extra one on the right for even kernels).
    """
    total = dilation * (kernel_size - 1)
    if causal:
        return total, 0
    return total // 2, total - total // 2


def masked_conv1d(
    x: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    dilation: int = 1,
    groups: int = 1,
    causal: bool = False,
) -> Tensor:
    """Length-preserving 1-D convolution that never sees padding.

    Padded inputs are zeroed, the sequence is zero-padded by :func:`same_padding`,
    convolved with stride 1, and the output is zeroed at padded positions. Each
    sequence thus gets exactly what ``nn.Conv1d`` with zero "same" padding (causal:
    ``dilation * (kernel_size - 1)`` on the left) gives it alone and unpadded.

    Args:
        x: ``(B, C_in, L)``.
        mask: ``(B, 1, L)`` / ``(B, L)`` or None.
        weight: ``(C_out, C_in / groups, K)``.
        bias: ``(C_out,)`` or None.

    Returns:
        ``(B, C_out, L)``, zero at padded positions.
    """
    m = as_mask(mask, x)
    if m is not None:
        x = x.masked_fill(~m, 0)
    if x.shape[-1] == 0:
        # All sequences empty (L = 0): nothing to convolve; keep the graph connected.
        return x.new_zeros((x.shape[0], weight.shape[0], 0)) + 0 * weight.sum()
    left, right = same_padding(weight.shape[-1], dilation, causal)
    if left == right:
        out = F.conv1d(x, weight, bias, stride=1, padding=left, dilation=dilation, groups=groups)
    else:
        out = F.conv1d(F.pad(x, (left, right)), weight, bias, stride=1, padding=0,
                       dilation=dilation, groups=groups)
    if m is not None:
        out = out.masked_fill(~m, 0)
    return out


# ------------------------------------------------------------------- embedding
def _check_token_ids(ids: Tensor, num_embeddings: int) -> None:
    """Raise when an id of ``ids`` lies outside ``[0, num_embeddings)``.

    On CPU (eager) an :class:`IndexError` names the offending id, its position and the
    vocabulary size; on other devices, and while compiling, ``torch._assert_async`` checks
    without a host sync (a CUDA device-side assert carrying the same message).
    """
    rest = (f"is outside [0, {num_embeddings}), the embedding's num_embeddings "
            "(Tokenizer.vocab_size): the ids come from a tokenizer with a larger "
            "vocabulary, or num_embeddings is too small")
    if ids.numel() == 0:
        return
    lo, hi = torch.aminmax(ids)  # one pass, no boolean temporaries
    in_range = (lo >= 0) & (hi < num_embeddings)
    if ids.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(in_range, f"a token id {rest}")
        return
    try:  # on CPU the assert is checked at once, still without a host read in Python
        torch._assert_async(in_range)
    except RuntimeError:
        bad = (ids < 0) | (ids >= num_embeddings)
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise IndexError(f"token id {int(ids[where])} at position {where} of ids of shape "
                         f"{tuple(ids.shape)} {rest}") from None


def masked_embedding(
    ids: Tensor,
    weight: Tensor,
    padding_idx: int | None = 0,
    mask: Tensor | None = None,
) -> Tensor:
    """Look up token ids and move channels first: ``(B, L)`` -> ``(B, C, L)``.

    Positions where ``mask`` is False (by default: where ``ids == padding_idx``) are
    zero in the output whatever the padding row of ``weight`` holds, and the padding
    row receives no gradient.

    Args:
        ids: ``(B, L)`` integer token ids.
        weight: ``(V, C)`` embedding table.
        padding_idx: the pad id (``Tokenizer.pad_id``, 0), or None.
        mask: optional ``(B, 1, L)`` / ``(B, L)`` mask; defaults to ``ids != padding_idx``.
    """
    if ids.dim() != 2:
        raise ValueError(f"ids must be (B, L); got shape {tuple(ids.shape)}")
    ids = ids.long()
    if mask is not None:
        # Whatever masked-out positions hold (even ids outside the table) is never looked
        # up: they read the padding row (row 0 without a padding_idx) and are zeroed.
        m = as_mask(mask, ids.unsqueeze(1))
        assert m is not None
        ids = ids.masked_fill(~m.squeeze(1), padding_idx if padding_idx is not None else 0)
    elif padding_idx is not None:
        mask = ids != padding_idx
    _check_token_ids(ids, weight.shape[0])
    out = F.embedding(ids, weight, padding_idx=padding_idx).transpose(1, 2)
    return masked_fill_padding(out, mask)


# ------------------------------------------------------------ batch normalisation
#
# Masked batch norm in training mode normalises every channel with the mean and
# biased variance of its *real* positions only. The eager path below is a custom
# autograd Function built from memory-bound primitives PyTorch already has:
#
# * per-channel masked sums as a batched matmul with the mask, (B, C, L) @ (B, L, 1);
# * the variance as a sum of squares of the *centred* values, taken with the reduction
#   half of ``aten::native_batch_norm_backward`` (a fused, read-only per-channel dot
#   product) -- two passes, never E[x^2] - E[x]^2 on raw data;
# * the input gradient written in place into the centred buffer the forward pass saved,
#   so fwd + bwd allocate as many large tensors as native batch norm (output and input
#   gradient); everything else is in place or a read-only reduction.
#
# The count correction (n real positions instead of B * L) is applied by hand, and
# several processes merge their (count, mean, M2) with Chan's parallel formula.

_native_bn_backward = torch.ops.aten.native_batch_norm_backward


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics accumulate in float32 for half / bfloat16 inputs (as native BN does)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


_UNIT_STATS: dict[tuple[torch.device, torch.dtype, int], tuple[Tensor, Tensor]] = {}


def _zero_one(c: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Cached ``(zeros(C), ones(C))``: saves two tiny kernel launches per reduction."""
    key = (device, dtype, c)
    pair = _UNIT_STATS.get(key)
    if pair is None or torch.compiler.is_compiling():
        pair = (torch.zeros(c, dtype=dtype, device=device), torch.ones(c, dtype=dtype, device=device))
        if len(_UNIT_STATS) < 64:
            _UNIT_STATS[key] = pair
    return pair


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum over (B, L) of a * b`` per channel: ``(B, C, L) x (B, C, L) -> (C,)``.

    Uses the read-only reduction of ``native_batch_norm_backward`` (grad_weight with
    mean 0 and invstd 1), which is one fused pass and allocates nothing large.
    """
    zero, one = _zero_one(a.shape[1], a.dtype, a.device)
    return _native_bn_backward(a, b, one, None, None, zero, one, True, 0.0, [False, True, False])[1]


def _masked_channel_sum(x: Tensor, mf: Tensor | None) -> Tensor:
    """Per-channel sum over real positions: ``(B, C, L)``, ``(B, 1, L)`` 0/1 -> ``(C,)``.

    A batched matmul with the mask, ``(B, C, L) @ (B, L, 1)``, then a sum over B.
    """
    if mf is None:
        return x.sum(dim=(0, 2))
    if x.shape[2] == 1:  # (B, C) input: one matrix-vector product (B,) @ (B, C)
        return mf.reshape(1, -1).matmul(x.reshape(x.shape[0], -1)).squeeze(0)
    return torch.bmm(x, mf.transpose(1, 2)).sum(dim=0).squeeze(-1)


def merge_batch_stats(counts: Tensor, means: Tensor, m2s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-group ``(count, mean, M2)`` into the statistics of the union.

    Chan et al.'s parallel formula, for K groups at once: ``n = sum n_k``,
    ``mean = sum n_k mean_k / n``, ``M2 = sum M2_k + sum n_k (mean_k - mean)^2``.
    Groups with ``n_k = 0`` contribute nothing; an empty union gives mean 0, M2 0.

    Args:
        counts: ``(K,)`` real-position counts.
        means: ``(K, C)`` per-group means.
        m2s: ``(K, C)`` per-group sums of squared deviations from their own mean.

    Returns:
        ``(n, mean, M2)``: a 0-d count and two ``(C,)`` tensors, in the input dtype
        (pass float64 for a merge that loses nothing).
    """
    counts = counts.to(means.dtype)
    n = counts.sum()
    w = counts.unsqueeze(1)
    mean = (w * means).sum(dim=0) / n.clamp_min(1)
    m2 = m2s.sum(dim=0) + (w * (means - mean) ** 2).sum(dim=0)
    return n, mean, m2


def _all_gather_stats(
    count: Tensor, mean: Tensor, m2: Tensor, process_group: object
) -> tuple[Tensor, Tensor, Tensor]:
    """All-gather each rank's ``(count, mean, M2)`` and merge them in float64.

    ``count`` is a 0-d tensor on the device and so is the merged count: nothing is read
    back to the host.
    """
    import torch.distributed as dist

    c = mean.numel()
    packed = torch.empty(2 * c + 1, dtype=torch.float64, device=mean.device)
    packed[0] = count
    packed[1 : c + 1] = mean
    packed[c + 1 :] = m2
    world = dist.get_world_size(process_group)
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=process_group)
    stacked = torch.stack(gathered)
    n, g_mean, g_m2 = merge_batch_stats(stacked[:, 0], stacked[:, 1 : c + 1], stacked[:, c + 1 :])
    return n.round().to(torch.int64), g_mean.to(mean.dtype), g_m2.to(m2.dtype)


def _verify_count(count: Tensor | int, x: Tensor) -> None:
    """Raise as ``F.batch_norm`` does when a channel has exactly one real value.

    Without a mask the count is a shape and the check is free. With a mask the count is
    a tensor on the device and the check is :func:`torch._assert_async`: no host sync.
    On CPU that assert fails at once and is re-raised here as native's ``ValueError``;
    on an accelerator it fails asynchronously (a device-side assert, reported by a later
    synchronising call); under ``torch.compile`` it is part of the graph.
    """
    msg = (
        f"Expected more than 1 value per channel when training, got input size {x.size()} "
        "with 1 real position"
    )
    if isinstance(count, int):
        if count == 1:
            raise ValueError(msg)
        return
    if torch.compiler.is_compiling():
        # (the traced message must be a constant: no symbolic sizes in it)
        torch._assert_async(count != 1, "Expected more than 1 value per channel when training")
        return
    if count.device.type != "cpu":
        torch._assert_async(count != 1, msg)
        return
    try:
        torch._assert_async(count != 1, msg)
    except RuntimeError as err:
        raise ValueError(msg) from err


def _count_divisor(count: Tensor | int, dtype: torch.dtype, device: torch.device) -> Tensor | int:
    """``max(count, 1)``: a Python int for a shape-derived count, else a 0-d ``dtype`` tensor."""
    if isinstance(count, int):
        return max(count, 1)
    return count.clamp_min(1).to(dtype)


class _MaskedBatchNormTrain(torch.autograd.Function):
    """Training-mode masked batch norm: batch statistics over real positions only.

    forward(x (B, C, L), mask (B, 1, L) bool or None, weight, bias, eps, process_group)
    -> (y (B, C, L) in x's dtype, mean (C,), biased var (C,), count 0-d); only y is
    differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        mask: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        process_group: object | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        in_dtype = x.dtype
        cd = _compute_dtype(in_dtype)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(cd)
            b, c, length = xc.shape
            mf = None if mask is None else mask.to(cd)

            # The count stays a 0-d tensor on the device (no host sync); without a
            # mask it is a shape.
            count: Tensor | int
            if mask is None:
                count = b * length
                s = _masked_channel_sum(xc, None)
                mean = s / max(count, 1)
                t = torch.sub(xc, mean.view(1, c, 1))
            else:
                count = mask.sum(dtype=torch.int64)
                # Zero the padding first (inf / nan there cannot leak into the matmul
                # sums), into the buffer that becomes the centred values in place:
                # t = x * mask - mean * mask = (x - mean) at real positions, 0 at padding.
                t = torch.where(mask, xc, 0.0)  # one pass (masked_fill would clone first)
                s = _masked_channel_sum(t, mf)
                mean = s / _count_divisor(count, cd, xc.device)
                t.addcmul_(mean.neg().view(1, c, 1), mf)
            m2 = _channel_dot(t, t)

            if process_group is not None:
                local = (  # a fill on the device, not a (synchronising) host copy
                    torch.full((), count, dtype=torch.int64, device=xc.device)
                    if isinstance(count, int)
                    else count
                )
                g_count, g_mean, m2 = _all_gather_stats(local, mean, m2, process_group)
                if mf is not None:
                    t.addcmul_(mf, (mean - g_mean).view(1, c, 1))
                else:
                    t.add_((mean - g_mean).view(1, c, 1))
                count, mean = g_count, g_mean
            _verify_count(count, x)

            var = m2 / _count_divisor(count, cd, xc.device)
            invstd = torch.rsqrt(var + eps)
            scale = invstd if weight is None else invstd * weight.to(cd)
            y = torch.mul(t, scale.view(1, c, 1))
            if bias is not None:
                if mf is None:
                    y.add_(bias.to(cd).view(1, c, 1))
                else:
                    y.addcmul_(bias.to(cd).view(1, c, 1), mf)

        ctx.t = t  # consumed (reused as the input gradient) by the first backward
        ctx.save_for_backward(x, mask, weight, mean, invstd)
        ctx.count = _count_divisor(count, cd, xc.device)  # max(count, 1), int or 0-d tensor
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.process_group = process_group
        count_out = (  # on the device: the running-stats update reads it there
            torch.full((), count, dtype=torch.int64, device=x.device)
            if isinstance(count, int)
            else count
        )
        ctx.mark_non_differentiable(mean, var, count_out)
        return y.to(in_dtype), mean, var, count_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor, *_: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, mask, weight, mean, invstd = ctx.saved_tensors
        cd = mean.dtype
        c = x.shape[1]
        n = ctx.count
        with torch.autocast(x.device.type, enabled=False):
            mf = None if mask is None else mask.to(cd)
            t = ctx.t
            ctx.t = None
            if t is None:  # backward through a retained graph: rebuild the centred input
                t = torch.sub(x.to(cd), mean.view(1, c, 1))
                if mask is not None:
                    t.masked_fill_(~mask, 0)
            dy = dy.to(cd)
            sum_dy = _masked_channel_sum(dy, mf)
            sum_dy_xmu = _channel_dot(dy, t)  # t is zero at padding: real positions only
            grad_weight = (sum_dy_xmu * invstd) if weight is not None else None
            grad_bias = sum_dy if ctx.bias_dtype is not None else None
            if ctx.process_group is not None:
                # Like native SyncBatchNorm, parameter gradients stay local (DDP averages
                # them); the input gradient needs the global sums.
                import torch.distributed as dist

                both = torch.cat([sum_dy, sum_dy_xmu])
                dist.all_reduce(both, group=ctx.process_group)
                sum_dy, sum_dy_xmu = both[:c], both[c:]
            k1 = invstd if weight is None else invstd * weight.to(cd)
            k2 = -k1 * invstd * invstd * sum_dy_xmu / n
            k3 = -k1 * sum_dy / n
            # dx = mask * (k1 * dy + k2 * t + k3), written into t's buffer.
            torch.addcmul(k3.view(1, c, 1), t, k2.view(1, c, 1), out=t)
            t.addcmul_(dy, k1.view(1, c, 1))
            if mf is not None:
                t.mul_(mf)
            dx = t.to(x.dtype)
        if weight is not None and grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(ctx.bias_dtype)
        return dx, None, grad_weight, grad_bias, None, None


def masked_batch_norm_reference(
    x: Tensor, mask: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode masked batch norm as plain differentiable tensor ops.

    The form :func:`masked_batch_norm` compiles for its fused path where the C++ CPU
    kernel does not apply (``torch.compile`` turns it into a few fused reduction and
    elementwise kernels, forward and backward).
    Also a readable statement of the semantics: two-pass statistics over the real
    positions, zero output at padding.

    Args:
        x: ``(B, C, L)`` floating tensor (half / bfloat16 are computed in float32).
        mask: ``(B, 1, L)`` bool or None.
        weight, bias: ``(C,)`` or None.

    Returns:
        ``(y, mean, var)``: ``y`` like ``x`` (zero at padding), per-channel mean and
        biased variance ``(C,)`` in the compute dtype. An all-padding batch gives
        ``y = 0``, mean 0 and var 0.
    """
    cd = _compute_dtype(x.dtype)
    xf = x.to(cd)
    if mask is None:
        n = torch.full((), x.shape[0] * x.shape[2], dtype=cd, device=x.device)
        x0 = xf
    else:
        n = mask.sum(dtype=cd)
        x0 = torch.where(mask, xf, 0)
    n1 = n.clamp_min(1)
    mean = x0.sum(dim=(0, 2)) / n1
    centred = xf - mean.view(1, -1, 1)
    if mask is not None:
        centred = torch.where(mask, centred, 0)
    var = (centred * centred).sum(dim=(0, 2)) / n1
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(cd)
    y = centred * scale.view(1, -1, 1)
    if bias is not None:
        y = y + bias.to(cd).view(1, -1, 1)
    if mask is not None:
        y = torch.where(mask, y, 0)
    return y.to(x.dtype), mean.detach(), var.detach()


def _fused_forward_math(
    x: Tensor, mask: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward of the fused path (compiled): two reduction passes and one elementwise."""
    cd = _compute_dtype(x.dtype)
    xf = x.to(cd)
    n1 = mask.sum(dtype=cd).clamp_min(1)
    mean = torch.where(mask, xf, 0).sum(dim=(0, 2)) / n1
    centred = torch.where(mask, xf - mean.view(1, -1, 1), 0)
    var = (centred * centred).sum(dim=(0, 2)) / n1
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight.to(cd)
    y = centred * scale.view(1, -1, 1)
    if bias is not None:
        y = y + bias.to(cd).view(1, -1, 1)
    y = torch.where(mask, y, 0)
    return y.to(x.dtype), mean, var, invstd


def _fused_backward_math(
    dy: Tensor, x: Tensor, mask: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of the fused path (compiled): one reduction pass and one elementwise."""
    cd = mean.dtype
    n1 = mask.sum(dtype=cd).clamp_min(1)
    centred = torch.where(mask, x.to(cd) - mean.view(1, -1, 1), 0)
    g = torch.where(mask, dy.to(cd), 0)
    sum_dy = g.sum(dim=(0, 2))
    sum_dy_xmu = (g * centred).sum(dim=(0, 2))
    k1 = invstd if weight is None else invstd * weight.to(cd)
    k2 = k1 * invstd * invstd * sum_dy_xmu / n1
    dx = g * k1.view(1, -1, 1) - (k1 * sum_dy / n1).view(1, -1, 1) - centred * k2.view(1, -1, 1)
    dx = torch.where(mask, dx, 0)
    return dx.to(x.dtype), sum_dy_xmu * invstd, sum_dy


_compiled: dict[str, object] = {}


def _compiled_fn(name: str) -> object:
    fn = _compiled.get(name)
    if fn is None:
        target = _fused_forward_math if name == "forward" else _fused_backward_math
        fn = _compiled[name] = torch.compile(target)
    return fn


class _FusedMaskedBatchNormTrain(torch.autograd.Function):
    """The fused path: forward and backward are each one ``torch.compile``-d graph."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        mask: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        count_out = mask.sum(dtype=torch.int64)  # stays on the device
        _verify_count(count_out, x)
        with torch.autocast(x.device.type, enabled=False):
            y, mean, var, invstd = _compiled_fn("forward")(x, mask, weight, bias, eps)  # type: ignore[operator]
        ctx.save_for_backward(x, mask, weight, mean, invstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var, count_out)
        return y, mean, var, count_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor, *_: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, mask, weight, mean, invstd = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            dx, grad_weight, grad_bias = _compiled_fn("backward")(dy, x, mask, weight, mean, invstd)  # type: ignore[operator]
        return (
            dx,
            None,
            None if weight is None else grad_weight.to(weight.dtype),
            None if ctx.bias_dtype is None else grad_bias.to(ctx.bias_dtype),
            None,
        )


class _CpuKernelMaskedBatchNormTrain(torch.autograd.Function):
    """The fused path on CPU: one C++ kernel per direction (:mod:`._batchnorm_cpu`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        mask: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = x.contiguous()
        mask_u8 = mask.contiguous().view(torch.uint8)
        # The kernel counts the real positions itself (count_out, 0-d int64): nothing is
        # read back from a tensor in Python.
        y, mean, var, invstd, count_out = _batchnorm_cpu.forward(x, mask_u8, weight, bias, eps)
        _verify_count(count_out, x)
        ctx.save_for_backward(x, mask_u8, weight, mean, invstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var, count_out)
        return y, mean, var, count_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor, *_: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, mask_u8, weight, mean, invstd = ctx.saved_tensors
        need_w = weight is not None and ctx.needs_input_grad[2]
        need_b = ctx.bias_dtype is not None and ctx.needs_input_grad[3]
        dx, grad_weight, grad_bias = _batchnorm_cpu.backward(
            dy, x, mask_u8, weight, mean, invstd, need_w, need_b
        )
        return (
            dx,
            None,
            None if grad_weight is None or weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(ctx.bias_dtype),
            None,
        )


# The C++ kernel walks one channel's (B, L) slice per step; below this L the per-row
# overhead dominates (a (B, C) input is L = 1) and the torch.compile form is faster.
_CPU_KERNEL_MIN_LENGTH = 8


def _fused_train(
    x: Tensor, mask: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if mask is None:
        mask = torch.ones(x.shape[0], 1, x.shape[2], dtype=torch.bool, device=x.device)
    if x.shape[2] >= _CPU_KERNEL_MIN_LENGTH and _batchnorm_cpu.supports(x):
        return _CpuKernelMaskedBatchNormTrain.apply(x, mask, weight, bias, eps)
    return _FusedMaskedBatchNormTrain.apply(x, mask, weight, bias, eps)


def _wide_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS does not): for exact small scalar factors."""
    return torch.float32 if device.type == "mps" else torch.float64


def _update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor | None,
    mean: Tensor,
    var: Tensor,
    count: Tensor,
    momentum: float | None,
) -> None:
    """Exponential (or, with ``momentum=None``, cumulative) update from one batch.

    ``running_var`` receives the unbiased variance ``var * n / (n - 1)``. A batch with
    no real positions (``count == 0``) changes nothing, ``num_batches_tracked`` included.
    ``count`` is a 0-d tensor on the device: the update is tensor math throughout (the
    empty-batch case is a zero lerp weight, not a Python branch), so nothing is read back
    to the host.
    """
    if momentum is None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    with torch.no_grad():
        count = count.to(running_mean.device)
        nonempty = count > 0
        if num_batches_tracked is not None:
            num_batches_tracked.add_(nonempty.to(num_batches_tracked.dtype))
        wide = _wide_dtype(count.device)
        if momentum is None:
            assert num_batches_tracked is not None
            # 1 / num_batches_tracked, as nn.BatchNorm1d (which reads it to the host).
            factor = 1.0 / num_batches_tracked.clamp_min(1).to(wide)
        else:
            factor = torch.full((), momentum, dtype=wide, device=count.device)
        factor = torch.where(nonempty, factor, 0.0).to(running_mean.dtype)
        # n / (n - 1) in float64, rounded once to var's dtype (as Python's float did).
        c = count.to(wide)
        unbiased = var * (c / (c - 1).clamp_min(1)).to(var.dtype)
        running_mean.lerp_(mean.to(running_mean.dtype), factor)
        running_var.lerp_(unbiased.to(running_var.dtype), factor.to(running_var.dtype))


def masked_batch_norm(
    x: Tensor,
    mask: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    num_batches_tracked: Tensor | None = None,
    process_group: object | None = None,
    fused: bool = False,
) -> Tensor:
    """Batch normalisation over the real positions only.

    Training (or no running statistics): each channel is normalised with the mean and
    biased variance of its real positions; ``running_mean`` / ``running_var`` (if given)
    move towards the batch mean and *unbiased* variance by ``momentum``, or by the
    cumulative factor ``1 / num_batches_tracked`` when ``momentum`` is None. A batch with
    no real positions gives zeros and leaves the running statistics untouched; exactly
    one real position raises ``ValueError`` as :func:`torch.nn.functional.batch_norm`
    does (on CPU; on an accelerator it is an asynchronous device-side assert, as nothing
    here reads a value on the host: see ``docs/masked-batchnorm.md``). Under
    ``torch.compile`` training mode traces :func:`masked_batch_norm_reference` (one graph,
    whatever ``fused`` says). Evaluation with running statistics: ``(x - running_mean) / sqrt(running_var +
    eps) * weight + bias`` at real positions. The output is zero at padded positions and
    no gradient reaches padded inputs.

    Args:
        x: ``(B, C, L)`` or ``(B, C)`` floating tensor.
        mask: anything :func:`seqpad.masks.as_mask` accepts, or None (no padding).
        running_mean, running_var: ``(C,)`` buffers updated in place, or None.
        weight, bias: ``(C,)`` affine parameters or None.
        num_batches_tracked: 0-d long buffer, incremented per non-empty training batch.
        process_group: synchronise training statistics across the ranks of this
            ``torch.distributed`` group (every rank must call); None for local stats.
        fused: use fused kernels in training: the C++ CPU kernel
            (:mod:`seqpad.nn._batchnorm_cpu`; CPU, float32 / float64 / bfloat16,
            ``L >= 8``), else the ``torch.compile``-d form of
            :func:`masked_batch_norm_reference`.

    Returns:
        Tensor shaped and typed like ``x``; statistics accumulate in float32 for
        half / bfloat16 inputs (also under ``torch.autocast``).
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"expected 2D or 3D input (B, C) / (B, C, L), got {x.dim()}D input")
    m = as_mask(mask, x)
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(-1)
        m = None if m is None else m.unsqueeze(-1)
    use_batch_stats = training or running_mean is None or running_var is None
    if use_batch_stats:
        if process_group is None and torch.compiler.is_compiling():
            # Under torch.compile: the plain differentiable form, which traces into one
            # graph (the C++ kernel and the hand-written autograd Functions would break
            # it) and which the compiler fuses into a few reduction kernels.
            y, mean, var = masked_batch_norm_reference(x, m, weight, bias, eps)
            if m is None:
                count = torch.full((), x.shape[0] * x.shape[2], dtype=torch.int64,
                                   device=x.device)
            else:
                count = m.sum(dtype=torch.int64)
            _verify_count(count, x)
        elif fused and process_group is None:
            y, mean, var, count = _fused_train(x, m, weight, bias, eps)
        else:
            y, mean, var, count = _MaskedBatchNormTrain.apply(
                x, m, weight, bias, eps, process_group
            )
        if training and running_mean is not None and running_var is not None:
            _update_running_stats(
                running_mean, running_var, num_batches_tracked, mean, var, count, momentum
            )
    else:
        y = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        if m is not None:
            y = y.masked_fill(~m, 0)
    return y.squeeze(-1) if squeeze else y


# ------------------------------------------- instance, group and layer normalisation
#
# Statistics per sample (or per packed segment) and group of channels, over real
# positions only. Without segments the eager path is a custom autograd Function built
# like the batch-norm one: per-channel masked sums as a batched matmul with the mask,
# the variance from the centred values (two passes, never E[x^2] - E[x]^2), the centred
# values scaled in place into x_hat, and the input gradient written in place into that
# private buffer, so fwd + bwd allocate as many large tensors as the native op. With
# ``segment_ids`` the statistics are gathered per (row, segment) with ``scatter_add``
# into ``L + 1`` slots (no host sync for the number of segments) and differentiated by
# autograd.


def _check_3d(x: Tensor, what: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{what} with a mask or segment_ids expects x (B, C, L); got shape "
                         f"{tuple(x.shape)}")


def _segment_mask(x: Tensor, segment_ids: Tensor) -> Tensor:
    """``(B, 1, L)`` bool mask ``segment_ids > 0``, checking ``(B, L)`` integer ids fit ``x``."""
    if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
        raise ValueError(f"segment_ids must be integers, got dtype {segment_ids.dtype}")
    if segment_ids.dim() != 2 or x.dim() != 3 or tuple(segment_ids.shape) != (x.shape[0], x.shape[2]):
        raise ValueError(f"segment_ids of shape {tuple(segment_ids.shape)} do not fit x of shape "
                         f"{tuple(x.shape)}: expected (B, L)")
    return (segment_ids > 0).to(x.device).unsqueeze(1)


def _per_channel(v: Tensor, c: int) -> Tensor:
    """``(B, G)`` per-group values -> ``(B, C, 1)`` per channel (group-major channel order)."""
    b, g = v.shape
    return v.view(b, g, 1).expand(b, g, c // g).reshape(b, c, 1)


def _per_group(v: Tensor, g: int) -> Tensor:
    """``(B, C)`` per-channel values -> ``(B, G)`` sums over each group's channels."""
    b, c = v.shape
    return v.view(b, g, c // g).sum(dim=-1)


def _rowwise_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum over L of a * b`` per (sample, channel): ``(B, C, L) x (B, C, L) -> (B, C)``.

    The read-only reduction of ``native_batch_norm_backward`` on a ``(1, B * C, L)`` view.
    """
    bsz, c, length = a.shape
    if a.numel() == 0:  # native_batch_norm_backward divides by the size
        return a.new_zeros((bsz, c))
    return _channel_dot(a.reshape(1, bsz * c, length), b.reshape(1, bsz * c, length)).view(bsz, c)


class _MaskedGroupNormTrain(torch.autograd.Function):
    """Group norm over real positions: ``num_groups = C`` is instance norm.

    forward(x (B, C, L), mask (B, 1, L) bool, groups, weight, bias, eps)
    -> (y like x, mean (B, G), biased var (B, G), count (B,) real positions); only y is
    differentiable. Statistics in float32 for half / bfloat16 input.

    The forward pass keeps one large buffer: the centred values ``t = (x - mean) * mask``
    (scaled in place into the output ``x_hat`` when there is no affine transform and no
    dtype cast); the backward pass writes the input gradient into it when it is private.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        mask: Tensor,
        groups: int,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        in_dtype = x.dtype
        cd = _compute_dtype(in_dtype)
        c = x.shape[1]
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(cd)
            mf = mask.to(cd)
            count = mf.sum(dim=-1)  # (B, 1), a tensor: no host sync
            n = (count * (c // groups)).clamp_min(1)  # values per (sample, group)
            if xc.device.type == "cpu":
                s = torch.bmm(xc, mf.transpose(1, 2)).squeeze(-1)  # (B, C)
                # inf / nan in padding makes the matmul sum non-finite (inf * 0 = nan);
                # only then zero the padding first (free check on CPU, no device sync).
                finite = bool(torch.isfinite(s).all())
                if not finite:
                    s = torch.bmm(xc.masked_fill(~mask, 0), mf.transpose(1, 2)).squeeze(-1)
            else:
                finite = False
                s = torch.bmm(xc.masked_fill(~mask, 0), mf.transpose(1, 2)).squeeze(-1)
            mean = _per_group(s, groups) / n  # (B, G)
            t = torch.sub(xc, _per_channel(mean, c))
            if finite:
                t.mul_(mf)
            else:
                t.masked_fill_(~mask, 0)
            var = _per_group(_rowwise_dot(t, t), groups) / n
            invstd = torch.rsqrt(var + eps)
            r = _per_channel(invstd, c)  # (B, C, 1)
            if weight is None and bias is None and cd == in_dtype:
                y = t.mul_(r)  # x_hat, returned and saved: backward allocates dx
                buf_is_xhat = True
            else:
                scale = r if weight is None else r * weight.to(cd).view(1, c, 1)
                y = torch.mul(t, scale)
                if bias is not None:
                    y.addcmul_(bias.to(cd).view(1, c, 1), mf)
                y = y.to(in_dtype)
                buf_is_xhat = False
        ctx.t = None if buf_is_xhat else t  # private: reused for dx by the first backward
        ctx.buf_is_xhat = buf_is_xhat
        ctx.groups = groups
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.finite = finite
        ctx.save_for_backward(x, mask, weight, mean, invstd, n, y if buf_is_xhat else None)
        count = count.squeeze(1)
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor, *_: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, mask, weight, mean, invstd, n, y_saved = ctx.saved_tensors
        cd = mean.dtype
        c = x.shape[1]
        g = ctx.groups
        with torch.autocast(x.device.type, enabled=False):
            mf = mask.to(cd)
            r = _per_channel(invstd, c)
            if ctx.buf_is_xhat:
                buf, out, to_xhat = y_saved, None, None  # buf = x_hat
            else:
                buf = out = ctx.t  # buf = t = x_hat / invstd
                ctx.t = None
                if buf is None:  # backward through a retained graph: rebuild t
                    buf = out = torch.sub(x.to(cd), _per_channel(mean, c)).masked_fill_(~mask, 0)
                to_xhat = r
            dy = dy.to(cd)
            sum_dy = torch.bmm(dy, mf.transpose(1, 2)).squeeze(-1)  # (B, C), real positions
            sum_dy_xhat = _rowwise_dot(dy, buf)  # buf is zero at padding
            if to_xhat is not None:
                sum_dy_xhat = sum_dy_xhat * invstd.repeat_interleave(c // g, dim=1)
            w = None if weight is None else weight.to(cd).view(1, c)
            g1 = _per_group(sum_dy if w is None else sum_dy * w, g)
            g2 = _per_group(sum_dy_xhat if w is None else sum_dy_xhat * w, g)
            k1 = r if w is None else r * w.view(1, c, 1)
            k2 = _per_channel(-invstd * g2 / n, c)
            if to_xhat is not None:
                k2 = k2 * to_xhat
            k3 = _per_channel(-invstd * g1 / n, c)
            # dx = mask * (k1 * dy + k2 * buf + k3)
            # (in place as mul_ + add_: about twice as fast on CPU as addcmul with out=)
            dx = torch.mul(buf, k2) if out is None else out.mul_(k2)
            dx.add_(k3)
            dx.addcmul_(dy, k1)
            if ctx.finite:
                dx.mul_(mf)
            else:
                dx.masked_fill_(~mask, 0)
            dx = dx.to(x.dtype)
        grad_w = None
        if weight is not None and ctx.needs_input_grad[3]:
            grad_w = sum_dy_xhat.sum(dim=0).to(weight.dtype)
        grad_b = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[4]:
            grad_b = sum_dy.sum(dim=0).to(ctx.bias_dtype)
        return dx, None, None, grad_w, grad_b, None


class _SegmentGroupNormTrain(torch.autograd.Function):
    """Group norm per (row, segment, group) of a packed batch.

    forward(x (B, C, L), idx (B, L) long segment ids with 0 at padding, mask (B, 1, L),
    groups, weight, bias, eps) -> (y, mean (B, G, L + 1), var (B, G, L + 1), count
    (B, L + 1)), statistics indexed by segment id (slot 0 collects padding and is zeroed).
    Per-segment sums are ``scatter_add`` into ``L + 1`` slots, so the number of segments
    is never needed on the host; per-position statistics come back with ``gather``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        idx: Tensor,
        mask: Tensor,
        groups: int,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        in_dtype = x.dtype
        cd = _compute_dtype(in_dtype)
        b, c, length = x.shape
        g, cg = groups, c // groups
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(cd)
            mf = mask.to(cd)
            idx_g = idx.view(b, 1, length).expand(b, g, length)
            count = torch.zeros(b, length + 1, dtype=cd, device=x.device).scatter_add_(
                1, idx, mf.view(b, length))
            n = (count * cg).clamp_min(1).unsqueeze(1)  # (B, 1, L + 1)
            per_pos = xc if cg == 1 else xc.view(b, g, cg, length).sum(dim=2)
            # Padding (and whatever it holds, NaN included) lands in slot 0 only.
            mean = torch.zeros(b, g, length + 1, dtype=cd, device=x.device).scatter_add_(
                2, idx_g, per_pos) / n
            mean[:, :, 0] = 0
            t = torch.sub(xc.view(b, g, cg, length), mean.gather(2, idx_g).unsqueeze(2))
            t = t.view(b, c, length).masked_fill_(~mask, 0)
            sq = torch.mul(t, t)
            sq = sq if cg == 1 else sq.view(b, g, cg, length).sum(dim=2)
            var = torch.zeros_like(mean).scatter_add_(2, idx_g, sq) / n
            del sq
            invstd = torch.rsqrt(var + eps)
            invstd[:, :, 0] = 0
            rpos = invstd.gather(2, idx_g)  # (B, G, L), 0 at padding
            t.view(b, g, cg, length).mul_(rpos.unsqueeze(2))  # x_hat, zero at padding
            if weight is None and bias is None and cd == in_dtype:
                y, private = t, False
            else:
                y = t.clone() if weight is None else torch.mul(t, weight.to(cd).view(1, c, 1))
                if bias is not None:
                    y.addcmul_(bias.to(cd).view(1, c, 1), mf)
                y, private = y.to(in_dtype), True
        ctx.xhat = t if private else None
        ctx.groups = groups
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(idx, mask, weight, rpos, n, None if private else y)
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor, *_: Tensor
    ) -> tuple[Tensor | None, ...]:
        idx, mask, weight, rpos, n, y_saved = ctx.saved_tensors
        if y_saved is None and ctx.xhat is None:
            raise RuntimeError("backward through the packed norm a second time is not supported; "
                               "it frees its buffer after the first backward")
        xhat = ctx.xhat if y_saved is None else y_saved
        ctx.xhat = None
        cd = rpos.dtype
        b, c, length = xhat.shape
        g = ctx.groups
        cg = c // g
        with torch.autocast(dy.device.type, enabled=False):
            dyc = dy.to(cd).masked_fill(~mask, 0)
            dxhat = dyc if weight is None else dyc * weight.to(cd).view(1, c, 1)
            idx_g = idx.view(b, 1, length).expand(b, g, length)
            prod = torch.mul(dxhat, xhat)
            grad_w = None
            if weight is not None and ctx.needs_input_grad[4]:
                grad_w = _rowwise_dot(dyc, xhat).sum(dim=0).to(weight.dtype)
            grad_b = None
            if ctx.bias_dtype is not None and ctx.needs_input_grad[5]:
                grad_b = dyc.sum(dim=(0, 2)).to(ctx.bias_dtype)

            def seg_sum(v: Tensor) -> Tensor:
                v = v if cg == 1 else v.view(b, g, cg, length).sum(dim=2)
                return torch.zeros(b, g, length + 1, dtype=cd, device=v.device).scatter_add_(
                    2, idx_g, v) / n

            k2 = seg_sum(prod).neg_().gather(2, idx_g).unsqueeze(2)  # -G2 / N per position
            del prod
            k3 = seg_sum(dxhat).neg_().gather(2, idx_g).unsqueeze(2)  # -G1 / N
            # dx = invstd * (dxhat - G1 / N - x_hat * G2 / N), zero at padding (invstd 0 there)
            out = ctx_out = xhat if y_saved is None else torch.empty_like(xhat)
            torch.addcmul(k3, xhat.view(b, g, cg, length), k2, out=ctx_out.view(b, g, cg, length))
            out.add_(dxhat)
            out.view(b, g, cg, length).mul_(rpos.unsqueeze(2))
            dx = out.to(dy.dtype)
        return dx, None, None, None, grad_w, grad_b, None


def _segment_group_norm(
    x: Tensor, segment_ids: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Group norm per (row, segment, group) of a packed batch: see :class:`_SegmentGroupNormTrain`."""
    m = _segment_mask(x, segment_ids)
    idx = segment_ids.to(device=x.device, dtype=torch.long).masked_fill(~m.squeeze(1), 0)
    return _SegmentGroupNormTrain.apply(x, idx, m, groups, weight, bias, eps)


def _group_norm_train(
    x: Tensor, mask: Tensor | None, segment_ids: Tensor | None, groups: int,
    weight: Tensor | None, bias: Tensor | None, eps: float, what: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean (K, G), var (K, G), count (K,))`` over the K samples or segment slots."""
    _check_3d(x, what)
    if segment_ids is not None:
        y, mean, var, count = _segment_group_norm(x, segment_ids, groups, weight, bias, eps)
        k = mean.shape[0] * mean.shape[2]
        return y, mean.transpose(1, 2).reshape(k, -1), var.transpose(1, 2).reshape(k, -1), count.reshape(k)
    m = as_mask(mask, x)
    if m is None:
        m = torch.ones(x.shape[0], 1, x.shape[2], dtype=torch.bool, device=x.device)
    return _MaskedGroupNormTrain.apply(x, m, groups, weight, bias, eps)


def masked_group_norm(
    x: Tensor,
    mask: Tensor | None,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    segment_ids: Tensor | None = None,
) -> Tensor:
    """Group normalisation over the real positions of each sample (or packed segment).

    Channels are split into ``num_groups`` consecutive groups; each (sample, group) is
    normalised with the mean and biased variance of its values at real positions, then
    ``weight`` / ``bias`` are applied per channel. With ``segment_ids`` the statistics
    are per (sample, segment, group), so each packed sequence gets what it gets alone.
    A sample or segment with no real position gives zeros, never NaN. The output is zero
    at padding and no gradient reaches padded inputs. Without a mask (or with an
    all-True one) this equals :func:`torch.nn.functional.group_norm`.

    Args:
        x: ``(B, C, L)`` floating tensor, ``C`` divisible by ``num_groups``.
        mask: anything :func:`seqpad.masks.as_mask` accepts, or None (no padding).
        num_groups: ``G``.
        weight, bias: ``(C,)`` or None.
        segment_ids: ``(B, L)`` integer (packed batches): ``1, 2, ...`` per sequence
            within a row, 0 at padding; replaces ``mask`` (real = ``segment_ids > 0``).

    Returns:
        Tensor like ``x``; statistics in float32 for half / bfloat16 input (also under
        ``torch.autocast``), output in ``x``'s dtype.
    """
    if x.shape[1] % num_groups:
        raise ValueError(f"num_channels ({x.shape[1]}) must be divisible by num_groups ({num_groups})")
    return _group_norm_train(x, mask, segment_ids, num_groups, weight, bias, eps,
                             "masked_group_norm")[0]


def _update_instance_running_stats(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: Tensor,
    momentum: float,
) -> None:
    """Move the running stats towards the average over samples (segments) with real positions.

    As :func:`torch.nn.functional.instance_norm`: each sample counts once, its variance
    unbiased by ``n / (n - 1)`` (``n / max(n - 1, 1)`` here, so one real position gives
    variance 0); samples with no real position are left out, and a batch without any
    leaves the running statistics untouched. Done with tensors only: no host sync.
    """
    with torch.no_grad():
        cnt = count.to(mean.dtype).unsqueeze(1)  # (K, 1)
        valid = (cnt > 0).to(mean.dtype)
        k = valid.sum()
        unbiased = var * cnt / (cnt - 1).clamp_min(1)
        avg_mean = (mean * valid).sum(dim=0) / k.clamp_min(1)
        avg_var = (unbiased * valid).sum(dim=0) / k.clamp_min(1)
        factor = (k > 0).to(running_mean.dtype) * momentum
        running_mean.lerp_(avg_mean.to(running_mean.dtype), factor)
        running_var.lerp_(avg_var.to(running_var.dtype), factor)


def masked_instance_norm(
    x: Tensor,
    mask: Tensor | None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    segment_ids: Tensor | None = None,
) -> Tensor:
    """Instance normalisation over the real positions of each sample (or packed segment).

    ``use_input_stats`` (training, or no running statistics): every (sample, channel) is
    normalised with the mean and biased variance of its real positions (per segment
    with ``segment_ids``); ``running_mean`` / ``running_var``, if given, move by
    ``momentum`` towards the average over samples of those means and unbiased variances
    (as :func:`torch.nn.functional.instance_norm` does; samples without real positions
    are left out). Otherwise the running statistics normalise. Output zero at padding,
    no gradient into padding, zeros (never NaN) for an all-padding sample.

    Args:
        x: ``(B, C, L)`` floating tensor.
        mask: anything :func:`seqpad.masks.as_mask` accepts, or None (no padding).
        running_mean, running_var: ``(C,)`` buffers updated in place, or None.
        weight, bias: ``(C,)`` or None.
        segment_ids: ``(B, L)`` integer (packed batches), 0 at padding; replaces ``mask``.

    Returns:
        Tensor like ``x``; statistics in float32 for half / bfloat16 input.
    """
    if not use_input_stats and running_mean is not None and running_var is not None:
        _check_3d(x, "masked_instance_norm")
        m = _segment_mask(x, segment_ids) if segment_ids is not None else as_mask(mask, x)
        y = F.instance_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        return y if m is None else y.masked_fill(~m, 0)
    y, mean, var, count = _group_norm_train(x, mask, segment_ids, x.shape[1], weight, bias, eps,
                                            "masked_instance_norm")
    if running_mean is not None and running_var is not None:
        _update_instance_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y


def masked_layer_norm_1d(
    x: Tensor,
    mask: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    segment_ids: Tensor | None = None,
) -> Tensor:
    """Layer normalisation over the channels of each position: ``(B, C, L)`` -> ``(B, C, L)``.

    Equals :func:`torch.nn.functional.layer_norm` over ``C`` of ``x.transpose(1, 2)``
    (transposed back) at real positions; zero at padding, with no gradient into padding
    (padded inputs are zeroed first, so NaN / inf there cannot leak). Positions are
    independent, so with ``segment_ids`` only the mask ``segment_ids > 0`` matters.
    Statistics in float32 for half / bfloat16 input (the native kernels accumulate in
    float32), output in ``x``'s dtype.
    """
    m = _segment_mask(x, segment_ids) if segment_ids is not None else as_mask(mask, x)
    if m is not None:
        x = x.masked_fill(~m, 0)
    with torch.autocast(x.device.type, enabled=False):
        if weight is not None and weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        y = F.layer_norm(x.transpose(1, 2), (x.shape[1],), weight, bias, eps).transpose(1, 2)
    return y if m is None else y.masked_fill(~m, 0)
