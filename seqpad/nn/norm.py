"""Masked instance, group and layer normalisation: statistics over real positions only.

:class:`MaskedInstanceNorm1d` and :class:`MaskedGroupNorm` are drop-in
:class:`torch.nn.InstanceNorm1d` / :class:`torch.nn.GroupNorm` (same parameters, buffers
and ``state_dict`` keys) whose ``forward`` takes a padding mask, or ``segment_ids`` for
packed batches (statistics per sequence). :class:`MaskedLayerNorm1d` is
:class:`torch.nn.LayerNorm` over the channels of a ``(B, C, L)`` tensor, zero at padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqpad.nn.functional import masked_group_norm, masked_instance_norm, masked_layer_norm_1d

__all__ = ["MaskedGroupNorm", "MaskedInstanceNorm1d", "MaskedLayerNorm1d"]


class MaskedInstanceNorm1d(nn.InstanceNorm1d):
    """``nn.InstanceNorm1d`` whose statistics ignore padded positions.

    Each (sample, channel) is normalised with the mean and biased variance of its real
    positions; with ``segment_ids`` (packed batches) each (segment, channel) is, so every
    packed sequence gets what it gets alone. Defaults as ``nn.InstanceNorm1d``:
    ``affine=False``, ``track_running_stats=False``.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as
            :class:`torch.nn.InstanceNorm1d`.

    Running statistics (``track_running_stats=True``) follow the native rule: in training
    they move by ``momentum`` towards the average over samples (segments) of the
    per-sample means and unbiased variances; ``momentum=None`` means 0 (no update), and
    ``num_batches_tracked`` is never incremented, as natively. Departures: samples with
    no real position are left out of the average (a batch with none changes nothing);
    one real position gives variance 0 instead of an error.

    Shape:
        - x: ``(B, C, L)``; mask ``(B, 1, L)`` / ``(B, L)`` bool or 0/1, True at real
          tokens, or None; segment_ids ``(B, L)`` integer, 0 at padding (replaces mask).
        - output: like ``x``, zero at padded positions; an all-padding sample gives zeros.

    With neither a mask nor segment ids the forward pass *is*
    ``nn.InstanceNorm1d.forward`` (which also takes unbatched ``(C, L)`` input).
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, *,  # type: ignore[override]
                segment_ids: Tensor | None = None) -> Tensor:
        if mask is None and segment_ids is None:
            return super().forward(x)
        if x.dim() == 3 and x.shape[1] != self.num_features and self.affine:
            raise ValueError(f"expected input's size at dim=1 to match num_features "
                             f"({self.num_features}), but got: {x.shape[1]}.")
        return masked_instance_norm(
            x,
            mask,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
            segment_ids=segment_ids,
        )


class MaskedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose statistics ignore padded positions.

    Each (sample, group of ``C / num_groups`` channels) is normalised with the mean and
    biased variance of its values at real positions (per segment with ``segment_ids``).

    Args:
        num_groups, num_channels, eps, affine, device, dtype: as :class:`torch.nn.GroupNorm`.

    Shape:
        - x: ``(B, C, L)``; mask ``(B, 1, L)`` / ``(B, L)`` or None; segment_ids ``(B, L)``.
        - output: like ``x``, zero at padded positions; an all-padding sample gives zeros.

    With neither a mask nor segment ids the forward pass *is* ``nn.GroupNorm.forward``.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, *,  # type: ignore[override]
                segment_ids: Tensor | None = None) -> Tensor:
        if mask is None and segment_ids is None:
            return super().forward(x)
        return masked_group_norm(x, mask, self.num_groups, self.weight, self.bias, self.eps,
                                 segment_ids=segment_ids)


class MaskedLayerNorm1d(nn.LayerNorm):
    """Layer norm over the channels of every position of a ``(B, C, L)`` tensor.

    ``y[:, :, t] = LayerNorm(C)(x[:, :, t])``: equals ``nn.LayerNorm(C)`` applied to
    ``x.transpose(1, 2)`` and transposed back; same parameters and ``state_dict`` keys
    (``weight``, ``bias``) as ``nn.LayerNorm(num_channels)``. Positions are independent,
    so padding never changes real positions; the output is zero at padding, with no
    gradient into padded inputs.

    Args:
        num_channels: ``C``.
        eps, elementwise_affine, bias, device, dtype: as :class:`torch.nn.LayerNorm`.

    Shape:
        - x: ``(B, C, L)``; mask ``(B, 1, L)`` / ``(B, L)`` or None; segment_ids ``(B, L)``
          (only ``segment_ids > 0`` matters).
        - output: like ``x``.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_channels, eps, elementwise_affine, bias, device, dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None, *,  # type: ignore[override]
                segment_ids: Tensor | None = None) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"MaskedLayerNorm1d expects x (B, C, L); got shape {tuple(x.shape)}")
        return masked_layer_norm_1d(x, mask, self.weight, self.bias, self.eps,
                                    segment_ids=segment_ids)
