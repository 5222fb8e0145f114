"""Batches and collation (placeholder: being written)."""

from __future__ import annotations

__all__ = ["Batch", "Collator"]


class Batch:
    """Placeholder."""


class Collator:
    """Placeholder."""
