"""Masked rnn layers (placeholder: being written)."""

from __future__ import annotations

from torch import nn

__all__ = ["MaskedLSTM", "MaskedGRU", ]


class MaskedLSTM(nn.Module):
    """Placeholder."""


class MaskedGRU(nn.Module):
    """Placeholder."""
