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

__all__ = [
    "masked_conv1d",
    "masked_embedding",
    "masked_fill_padding",
    "masked_max",
    "masked_mean",
    "masked_sum",
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
    out = F.embedding(ids.long(), weight, padding_idx=padding_idx).transpose(1, 2)
    if mask is None and padding_idx is not None:
        mask = ids != padding_idx
    return masked_fill_padding(out, mask)
