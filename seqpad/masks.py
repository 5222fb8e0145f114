"""Padding masks: the canonical form is a bool tensor ``(B, 1, L)``, True at real tokens.

Every masked layer calls :func:`as_mask` on its ``mask`` argument, so users may pass
``(B, L)`` or ``(B, 1, L)`` masks, bool or 0/1 float/int.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_mask", "lengths_to_mask", "mask_to_lengths"]


def lengths_to_mask(
    lengths: Tensor | list[int], max_len: int | None = None, *, device: torch.device | None = None
) -> Tensor:
    """Build the padding mask of right-padded sequences.

    Args:
        lengths: ``(B,)`` integer lengths (tensor or list).
        max_len: ``L``; defaults to ``max(lengths)`` (0 for an empty batch). Must be
            at least ``max(lengths)``.

    Returns:
        ``(B, 1, L)`` bool tensor, ``mask[b, 0, t] = t < lengths[b]``.
    """
    lens = torch.as_tensor(lengths, dtype=torch.long, device=device)
    if lens.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lens.shape)}")
    if lens.numel() and int(lens.min()) < 0:
        raise ValueError("lengths must be non-negative")
    longest = int(lens.max()) if lens.numel() else 0
    if max_len is None:
        max_len = longest
    elif max_len < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest length {longest}")
    positions = torch.arange(max_len, device=lens.device)
    return (positions < lens[:, None]).unsqueeze(1)


def mask_to_lengths(mask: Tensor) -> Tensor:
    """Count real tokens per sequence: ``(B, 1, L)`` or ``(B, L)`` mask -> ``(B,)`` long.

    The mask need not be a right-padded prefix; this is the number of True entries.
    """
    if mask.dim() == 3:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must be (B, 1, L) or (B, L); got shape {tuple(mask.shape)}")
        mask = mask.squeeze(1)
    elif mask.dim() != 2:
        raise ValueError(f"mask must be (B, 1, L) or (B, L); got shape {tuple(mask.shape)}")
    return (mask != 0).sum(dim=-1, dtype=torch.long)


def as_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """Canonicalise ``mask`` for input ``x``.

    Args:
        mask: ``None``, or ``(B, L)`` / ``(B, 1, L)`` bool, or 0/1 float/int.
            For ``x`` of shape ``(B, C)`` (no length axis) a ``(B,)`` or ``(B, 1)``
            mask is accepted too.
        x: ``(B, C, L)`` (or ``(B, C)``) tensor the mask refers to.

    Returns:
        ``None`` if ``mask`` is None, else a bool tensor ``(B, 1, L)`` on ``x.device``
        (``(B, 1)`` for 2-D ``x``).

    Raises:
        ValueError: naming both shapes when the mask does not fit ``x``, or when a
            float/int mask holds values other than 0 and 1.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if x.dim() == 2:
        want: tuple[int, ...] = (x.shape[0], 1)
        m = mask.reshape(mask.shape[0], 1) if mask.dim() in (1, 2) and mask.numel() == x.shape[0] else mask
    elif x.dim() == 3:
        want = (x.shape[0], 1, x.shape[2])
        m = mask.unsqueeze(1) if mask.dim() == 2 else mask
    else:
        raise ValueError(f"x must be (B, C, L) or (B, C); got shape {tuple(x.shape)}")
    if tuple(m.shape) != want:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit x of shape {tuple(x.shape)}: "
            f"expected {want} (or (B, L)), True at real tokens"
        )
    if m.dtype != torch.bool:
        # Validate 0/1 values where it is free (CPU, eager); on an accelerator the
        # check would force a host sync in every layer, so it is skipped there.
        if (
            m.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and bool(((m != 0) & (m != 1)).any())
        ):
            raise ValueError("a non-bool mask must hold only 0 and 1")
        m = m != 0
    if m.device != x.device:
        m = m.to(x.device, non_blocking=True)
    return m
