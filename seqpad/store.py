"""Tokenized on-disk store (placeholder: being written)."""

from __future__ import annotations

__all__ = ["TokenizedDataset"]


class TokenizedDataset:
    """Placeholder."""
