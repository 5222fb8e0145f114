"""Masked conv layers (placeholder: being written)."""

from __future__ import annotations

from torch import nn

__all__ = ["MaskedConv1d", ]


class MaskedConv1d(nn.Module):
    """Placeholder."""
