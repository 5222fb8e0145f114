"""Masked pooling layers (placeholder: being written)."""

from __future__ import annotations

from torch import nn

__all__ = ["MaskedMeanPool", "MaskedMaxPool", "MaskedSumPool", ]


class MaskedMeanPool(nn.Module):
    """Placeholder."""


class MaskedMaxPool(nn.Module):
    """Placeholder."""


class MaskedSumPool(nn.Module):
    """Placeholder."""
