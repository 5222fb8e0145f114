"""Masked 1-D convolution: length-preserving, never sees padding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqpad.nn.functional import masked_conv1d, same_padding
from seqpad.nn.segments import segment_conv1d

__all__ = ["MaskedConv1d"]


class MaskedConv1d(nn.Conv1d):
    """``nn.Conv1d`` with stride 1, 'same' output length and a padding mask.

    Padded input positions are zeroed before convolving, each sequence is zero-padded
    by :func:`seqpad.nn.functional.same_padding` (odd and even kernels alike keep the
    length; ``causal=True`` pads ``dilation * (kernel_size - 1)`` on the left only) and
    the output is zeroed at padded positions. Each sequence therefore gets exactly what
    ``nn.Conv1d`` with zero 'same' padding gives it alone and unpadded.

    The parameters (``weight`` ``(C_out, C_in / groups, K)``, ``bias`` ``(C_out,)``) and
    ``state_dict`` keys are ``nn.Conv1d``'s, so weights load both ways.

    Note:
        The module pads by itself in :meth:`forward`; the inherited ``padding``
        attribute is therefore ``(0,)`` and must not be read as the effective padding.
        Use :attr:`same_padding` for the ``(left, right)`` zero padding actually applied.
        Calling ``nn.Conv1d.forward`` on this module directly would not pad.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: ``K`` (odd or even).
        dilation: spacing between kernel taps.
        groups: blocked connections from input to output channels.
        bias: whether to learn an additive bias.
        causal: output at ``t`` sees only inputs at ``<= t``.

    Shape:
        x: ``(B, C_in, L)``; mask: ``(B, 1, L)`` / ``(B, L)`` (True at real tokens) or
        None; output: ``(B, C_out, L)``, zero at padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        causal: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value in (("kernel_size", kernel_size), ("dilation", dilation)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=1,
            padding=0,  # forward() pads itself; see `same_padding`
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode="zeros",
            device=device,
            dtype=dtype,
        )
        self.causal = bool(causal)

    @property
    def same_padding(self) -> tuple[int, int]:
        """``(left, right)`` zero padding applied to each sequence in :meth:`forward`."""
        return same_padding(self.kernel_size[0], self.dilation[0], self.causal)

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        """Convolve ``x`` ``(B, C_in, L)`` -> ``(B, C_out, L)``, zero at padding.

        ``segment_ids`` ``(B, L)`` (packed batches; replaces ``mask``): other segments'
        values count as padding (:func:`seqpad.nn.segments.segment_conv1d`).
        """
        if segment_ids is not None:
            return segment_conv1d(x, segment_ids, self.weight, self.bias,
                                  dilation=self.dilation[0], groups=self.groups,
                                  causal=self.causal)
        return masked_conv1d(
            x,
            mask,
            self.weight,
            self.bias,
            dilation=self.dilation[0],
            groups=self.groups,
            causal=self.causal,
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[0]}"
            f", dilation={self.dilation[0]}"
        )
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        left, right = self.same_padding
        s += f", causal={self.causal}, padding=({left}, {right})"
        return s
