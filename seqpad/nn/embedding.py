"""Masked embedding layers (placeholder: being written)."""

from __future__ import annotations

from torch import nn

__all__ = ["MaskedEmbedding", ]


class MaskedEmbedding(nn.Module):
    """Placeholder."""
