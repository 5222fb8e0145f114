"""Masked batch normalisation (placeholder: being written)."""

from __future__ import annotations

from torch import nn

__all__ = [
    "MaskedBatchNorm1d",
    "MaskedSyncBatchNorm1d",
    "convert_masked_batchnorm",
    "convert_sync_batchnorm",
]


class MaskedBatchNorm1d(nn.Module):
    """Placeholder."""


class MaskedSyncBatchNorm1d(MaskedBatchNorm1d):
    """Placeholder."""


def convert_sync_batchnorm(module, process_group=None):  # type: ignore[no-untyped-def]
    raise NotImplementedError


def convert_masked_batchnorm(module):  # type: ignore[no-untyped-def]
    raise NotImplementedError
