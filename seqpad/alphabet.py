"""Alphabets: which symbols a tokenizer accepts, and the fixed special tokens.

Every built-in vocabulary starts with five special tokens at fixed ids, followed by
the alphabet's symbols in the order given (and, for k-mer tokenizers, the k-mers; see
:mod:`seqpad.kmers`). Vocabularies made with ``Tokenizer.from_vocab`` (e.g. ESM-2's,
:mod:`seqpad.vocabularies`) place them elsewhere: use ``Tokenizer.pad_id`` etc.

====== ==== ==============================================
token  id   meaning
====== ==== ==============================================
pad    0    right-padding in batches (``Tokenizer.pad_id``)
unk    1    a symbol outside the alphabet (``unknown="unk"``)
mask   2    masked-language-model target position
bos    3    beginning of sequence (optional)
eos    4    end of sequence (optional)
====== ==== ==============================================

Built-in alphabets (``"protein"``, ``"dna"``, ``"rna"``) include the IUPAC
ambiguity codes. Gap symbols (``-`` and ``.``) are off by default, because
unaligned FASTA from UniProt or Ensembl never contains them and a stray ``-``
is more often a mistake than an alignment; pass ``gaps=True`` for aligned
FASTA. The protein stop ``*`` is off by default for the same reason; pass
``stop=True`` for translated ORFs (e.g. Prodigal output, which ends each
protein with ``*``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BOS_ID",
    "BUILTIN_ALPHABETS",
    "EOS_ID",
    "MASK_ID",
    "NUM_SPECIAL_TOKENS",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "Alphabet",
    "get_alphabet",
]

PAD_ID = 0
UNK_ID = 1
MASK_ID = 2
BOS_ID = 3
EOS_ID = 4
#: Special tokens in id order; their string forms are used by ``Tokenizer.decode``.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<mask>", "<bos>", "<eos>")
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)

_PROTEIN_STANDARD = "ACDEFGHIKLMNPQRSTVWY"
_PROTEIN_AMBIGUOUS = "BZXJUO"  # Asx, Glx, any, Xle, selenocysteine, pyrrolysine
_NUCLEOTIDE_AMBIGUOUS = "NRYSWKMBDHV"
_GAPS = "-."
_STOP = "*"
# Bytes that can never be symbols: FASTA structure and whitespace.
_FORBIDDEN = set(">\n\r\t \x0b\x0c")

BUILTIN_ALPHABETS: dict[str, str] = {
    "protein": _PROTEIN_STANDARD + _PROTEIN_AMBIGUOUS,
    "dna": "ACGT" + _NUCLEOTIDE_AMBIGUOUS,
    "rna": "ACGU" + _NUCLEOTIDE_AMBIGUOUS,
}


@dataclass(frozen=True)
class Alphabet:
    """An ordered set of single-byte symbols.

    Args:
        name: ``"protein"``, ``"dna"``, ``"rna"`` or ``"custom"``.
        symbols: the base symbols, in id order (ids start at ``NUM_SPECIAL_TOKENS``).
        gaps: append the gap symbols ``-`` and ``.``.
        stop: append the stop symbol ``*``.
        case_sensitive: if False (default), lowercase (soft-masked) input maps to
            the id of the uppercase symbol; symbols must then be distinct ignoring case.
    """

    name: str
    symbols: str
    gaps: bool = False
    stop: bool = False
    case_sensitive: bool = False

    def __post_init__(self) -> None:
        syms = self.all_symbols
        if not syms:
            raise ValueError("an alphabet needs at least one symbol")
        for s in syms:
            if not s.isascii() or not s.isprintable() or s in _FORBIDDEN:
                raise ValueError(f"symbol {s!r} cannot be used in an alphabet")
        keys = syms if self.case_sensitive else syms.upper()
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            how = "" if self.case_sensitive else " (ignoring case)"
            raise ValueError(f"alphabet symbols repeat{how}: {''.join(dup)!r}")
        if NUM_SPECIAL_TOKENS + len(syms) > 256:
            raise ValueError("an alphabet may hold at most 251 symbols")

    @property
    def all_symbols(self) -> str:
        """Every symbol in id order: base symbols, then gaps, then stop (when enabled)."""
        return self.symbols + (_GAPS if self.gaps else "") + (_STOP if self.stop else "")

    def __len__(self) -> int:
        return len(self.all_symbols)


def get_alphabet(
    alphabet: str | Alphabet,
    *,
    gaps: bool = False,
    stop: bool = False,
    case_sensitive: bool = False,
) -> Alphabet:
    """Return a built-in alphabet by name, or a custom one from a string of symbols.

    ``get_alphabet("protein")`` is the 20 standard amino acids plus ``BZXJUO``;
    ``get_alphabet("ACGT")`` is a custom alphabet of exactly those symbols.
    An :class:`Alphabet` instance is returned unchanged.
    """
    if isinstance(alphabet, Alphabet):
        return alphabet
    key = alphabet.lower()
    if key in BUILTIN_ALPHABETS:
        return Alphabet(key, BUILTIN_ALPHABETS[key], gaps, stop, case_sensitive)
    return Alphabet("custom", alphabet, gaps, stop, case_sensitive)
