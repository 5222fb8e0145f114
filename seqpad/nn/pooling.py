"""Masked global pooling over the length axis: ``(B, C, L)`` + mask -> ``(B, C)``.

With ``segment_ids`` ``(B, L)`` (packed batches): one vector per segment, ``(N, C)``.

A sequence with no real positions pools to 0 (never NaN or -inf), with zero gradient.
"""

from __future__ import annotations

from torch import Tensor, nn

from seqpad.nn.functional import masked_max, masked_mean, masked_sum
from seqpad.nn.segments import segment_max, segment_mean, segment_sum

__all__ = ["MaskedMaxPool", "MaskedMeanPool", "MaskedSumPool"]


class MaskedMeanPool(nn.Module):
    """Mean over real positions (:func:`seqpad.nn.functional.masked_mean`).

    Shape:
        x: ``(B, C, L)``; mask: ``(B, 1, L)`` / ``(B, L)`` or None (plain ``x.mean(-1)``);
        output: ``(B, C)``.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        if segment_ids is not None:  # packed: one vector per segment, (N, C)
            return segment_mean(x, segment_ids)
        return masked_mean(x, mask)


class MaskedMaxPool(nn.Module):
    """Max over real positions (:func:`seqpad.nn.functional.masked_max`).

    Shape:
        x: ``(B, C, L)``; mask: ``(B, 1, L)`` / ``(B, L)`` or None (plain ``x.amax(-1)``);
        output: ``(B, C)``.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        if segment_ids is not None:  # packed: one vector per segment, (N, C)
            return segment_max(x, segment_ids)
        return masked_max(x, mask)


class MaskedSumPool(nn.Module):
    """Sum over real positions (:func:`seqpad.nn.functional.masked_sum`).

    Shape:
        x: ``(B, C, L)``; mask: ``(B, 1, L)`` / ``(B, L)`` or None (plain ``x.sum(-1)``);
        output: ``(B, C)``.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        if segment_ids is not None:  # packed: one vector per segment, (N, C)
            return segment_sum(x, segment_ids)
        return masked_sum(x, mask)
