"""Batch samplers (placeholder: being written)."""

from __future__ import annotations

__all__ = ["TokenBudgetBatchSampler"]


class TokenBudgetBatchSampler:
    """Placeholder."""
