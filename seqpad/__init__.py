"""seqpad: batch variable-length biological sequences for PyTorch, exactly.

FASTA -> :class:`Tokenizer` -> tokenized store (:class:`TokenizedDataset`) ->
:class:`TokenBudgetBatchSampler` -> :class:`Collator` (:class:`Batch`: ids ``(B, L)``,
mask ``(B, 1, L)``, lengths) -> masked layers in :mod:`seqpad.nn` -> models in
:mod:`seqpad.models`.
"""

from seqpad.alphabet import Alphabet, get_alphabet
from seqpad.collate import Batch, Collator
from seqpad.fasta import FastaFormatError, read_fasta
from seqpad.masks import as_mask, lengths_to_mask, mask_to_lengths
from seqpad.samplers import TokenBudgetBatchSampler
from seqpad.store import TokenizedDataset
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

__version__ = "0.1.0"

__all__ = [
    "Alphabet",
    "Batch",
    "Collator",
    "FastaFormatError",
    "TokenBudgetBatchSampler",
    "TokenizedDataset",
    "Tokenizer",
    "UnknownSymbolError",
    "__version__",
    "as_mask",
    "get_alphabet",
    "lengths_to_mask",
    "mask_to_lengths",
    "read_fasta",
]
