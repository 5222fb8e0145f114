"""seqpad: batch variable-length biological sequences for PyTorch, exactly.

FASTA -> :class:`Tokenizer` -> tokenized store (:class:`TokenizedDataset`) ->
:class:`TokenBudgetBatchSampler` -> :class:`Collator` (:class:`Batch`: ids ``(B, L)``,
mask ``(B, 1, L)``, lengths) -> masked layers in :mod:`seqpad.nn` -> models in
:mod:`seqpad.models`.

Names are imported lazily on first use, so ``seqpad tokenize`` and other torch-free
paths (FASTA, tokenizer, store) start without importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Alphabet": "seqpad.alphabet",
    "get_alphabet": "seqpad.alphabet",
    "Tokenizer": "seqpad.tokenizer",
    "UnknownSymbolError": "seqpad.tokenizer",
    "pretrained_tokenizer": "seqpad.vocabularies",
    "FastaFormatError": "seqpad.fasta",
    "read_fasta": "seqpad.fasta",
    "StoreError": "seqpad.store",
    "TokenizedDataset": "seqpad.store",
    "write_store": "seqpad.store",
    "Batch": "seqpad.collate",
    "Collator": "seqpad.collate",
    "MaskedLMCollator": "seqpad.masked_lm",
    "mask_tokens": "seqpad.masked_lm",
    "TokenBudgetBatchSampler": "seqpad.samplers",
    "PackingBatchSampler": "seqpad.packing",
    "PackingCollator": "seqpad.packing",
    "pack": "seqpad.packing",
    "unpack": "seqpad.packing",
    "as_mask": "seqpad.masks",
    "lengths_to_mask": "seqpad.masks",
    "mask_to_lengths": "seqpad.masks",
}

__all__ = [
    "Alphabet",
    "Batch",
    "Collator",
    "FastaFormatError",
    "MaskedLMCollator",
    "PackingBatchSampler",
    "PackingCollator",
    "StoreError",
    "TokenBudgetBatchSampler",
    "TokenizedDataset",
    "Tokenizer",
    "UnknownSymbolError",
    "__version__",
    "as_mask",
    "get_alphabet",
    "lengths_to_mask",
    "mask_to_lengths",
    "mask_tokens",
    "pack",
    "pretrained_tokenizer",
    "read_fasta",
    "unpack",
    "write_store",
]

if TYPE_CHECKING:
    from seqpad.alphabet import Alphabet, get_alphabet
    from seqpad.collate import Batch, Collator
    from seqpad.fasta import FastaFormatError, read_fasta
    from seqpad.masked_lm import MaskedLMCollator, mask_tokens
    from seqpad.masks import as_mask, lengths_to_mask, mask_to_lengths
    from seqpad.packing import PackingBatchSampler, PackingCollator, pack, unpack
    from seqpad.samplers import TokenBudgetBatchSampler
    from seqpad.store import StoreError, TokenizedDataset, write_store
    from seqpad.tokenizer import Tokenizer, UnknownSymbolError
    from seqpad.vocabularies import pretrained_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name in ("nn", "models"):
            return importlib.import_module(f"seqpad.{name}")
        raise AttributeError(f"module 'seqpad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    # the public names once each (cached or not) and the module's own dunders; not the
    # helpers this file imports (importlib, Any, TYPE_CHECKING) or loaded submodules
    dunders = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    return sorted({*__all__, "nn", "models", *dunders})
