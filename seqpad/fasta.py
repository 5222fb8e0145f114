"""FASTA reading (placeholder: being written)."""

from __future__ import annotations

__all__ = ["FastaFormatError", "read_fasta"]


class FastaFormatError(ValueError):
    """Placeholder."""


def read_fasta(path):  # type: ignore[no-untyped-def]
    raise NotImplementedError
