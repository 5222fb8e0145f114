"""Tokenizer: sequences (str or bytes) to integer ids and back, vectorised.

Encoding is a single numpy fancy-index through a 256-entry byte lookup table, so
its cost is one pass over the bytes, with no Python loop per residue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from seqpad.alphabet import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Alphabet,
    get_alphabet,
)

__all__ = ["IDS_DTYPE", "Tokenizer", "UnknownPolicy", "UnknownSymbolError"]

UnknownPolicy = Literal["error", "unk", "skip"]
#: dtype of encoded ids: every vocabulary fits in one byte.
IDS_DTYPE = np.uint8
_INVALID = 255  # never a valid id: vocabularies hold at most 256 - 1 entries in use


class UnknownSymbolError(ValueError):
    """A sequence holds a symbol outside the tokenizer's alphabet.

    Attributes:
        symbol: the offending character.
        position: its 1-based position in the sequence.
        record: the record name, when known.
    """

    def __init__(self, symbol: str, position: int, record: str | None = None,
                 alphabet: str = "") -> None:
        self.symbol = symbol
        self.position = position
        self.record = record
        self.alphabet = alphabet
        where = f"record {record!r}, " if record is not None else ""
        hint = f" (alphabet {alphabet})" if alphabet else ""
        super().__init__(
            f"{where}position {position}: symbol {symbol!r} is not in the alphabet{hint}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes, extra attributes too
        return (type(self), (self.symbol, self.position, self.record, self.alphabet),
                self.__dict__)


class Tokenizer:
    """Map sequences to integer ids with a fixed vocabulary.

    Ids ``0..4`` are the special tokens ``pad, unk, mask, bos, eos``
    (see :mod:`seqpad.alphabet`); alphabet symbols follow from id 5 in order.

    Args:
        alphabet: ``"protein"``, ``"dna"``, ``"rna"``, a string of custom symbols,
            or an :class:`~seqpad.alphabet.Alphabet`.
        unknown: what :meth:`encode` does with a symbol outside the alphabet:
            ``"error"`` raises :class:`UnknownSymbolError` naming the symbol and its
            1-based position; ``"unk"`` maps it to ``unk_id``; ``"skip"`` also raises
            :class:`UnknownSymbolError`, and callers (``seqpad tokenize``) drop the
            record and count it.
        gaps: accept the gap symbols ``-`` and ``.`` (default False).
        stop: accept the stop symbol ``*`` (default False).
        case_sensitive: if False (default), lowercase (soft-masked) residues get the
            ids of their uppercase forms.

    Example:
        >>> tok = Tokenizer("dna")
        >>> tok.encode("ACGTn").tolist()
        [5, 6, 7, 8, 9]
        >>> tok.decode([5, 6, 7, 8, 9])
        'ACGTN'
    """

    pad_id: int = PAD_ID
    unk_id: int = UNK_ID
    mask_id: int = MASK_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __init__(
        self,
        alphabet: str | Alphabet = "protein",
        *,
        unknown: UnknownPolicy = "error",
        gaps: bool = False,
        stop: bool = False,
        case_sensitive: bool = False,
    ) -> None:
        if unknown not in ("error", "unk", "skip"):
            raise ValueError(f"unknown must be 'error', 'unk' or 'skip', got {unknown!r}")
        if isinstance(alphabet, Alphabet):
            self.alphabet = alphabet
        else:
            self.alphabet = get_alphabet(
                alphabet, gaps=gaps, stop=stop, case_sensitive=case_sensitive
            )
        self.unknown: UnknownPolicy = unknown
        symbols = self.alphabet.all_symbols
        self._vocab: tuple[str, ...] = SPECIAL_TOKENS + tuple(symbols)

        lut = np.full(256, _INVALID, dtype=IDS_DTYPE)
        for i, s in enumerate(symbols, start=NUM_SPECIAL_TOKENS):
            lut[ord(s)] = i
            if not self.alphabet.case_sensitive:
                lut[ord(s.upper())] = i
                lut[ord(s.lower())] = i
        self._lut = lut
        # The table encode() uses: unknown bytes already mapped to unk under "unk".
        self._encode_lut = np.where(lut == _INVALID, UNK_ID, lut).astype(IDS_DTYPE) \
            if unknown == "unk" else lut
        shown = symbols if self.alphabet.case_sensitive else symbols.upper()
        self._symbol_bytes = np.frombuffer(b"\0" * NUM_SPECIAL_TOKENS + shown.encode(),
                                           dtype=np.uint8)
        self._decode_table = np.array(
            [t.encode() for t in SPECIAL_TOKENS + tuple(shown)], dtype=object
        )

    # ------------------------------------------------------------------ vocab
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self._vocab)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def vocab(self) -> tuple[str, ...]:
        """Token strings in id order (special tokens first)."""
        return self._vocab

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the special tokens (pad, unk, mask, bos, eos, ...), ascending.

        Every other id is a residue token (a symbol of the alphabet, or a k-mer).
        """
        return tuple(range(NUM_SPECIAL_TOKENS))

    @property
    def lookup_table(self) -> npt.NDArray[np.uint8]:
        """The 256-entry byte -> id table used by :meth:`encode` (read-only copy).

        Bytes outside the alphabet hold 255 under ``unknown="error"``/``"skip"``
        and ``unk_id`` under ``unknown="unk"``.
        """
        out = self._encode_lut.copy()
        out.flags.writeable = False
        return out

    # ----------------------------------------------------------------- encode
    def encode(
        self,
        seq: str | bytes | bytearray | memoryview,
        *,
        add_bos: bool = False,
        add_eos: bool = False,
        record: str | None = None,
    ) -> npt.NDArray[np.uint8]:
        """Encode one sequence.

        Args:
            seq: residues as ``str`` (ASCII) or bytes; no whitespace.
            add_bos / add_eos: prepend ``bos_id`` / append ``eos_id``.
            record: the record's name, used in error messages.

        Returns:
            ``np.ndarray`` of dtype ``uint8`` and shape ``(len(seq) + add_bos + add_eos,)``.

        Raises:
            UnknownSymbolError: under ``unknown="error"`` or ``"skip"``, for the first
                symbol outside the alphabet (1-based position, record when given).
        """
        raw = self._as_bytes(seq, record)
        body = self._encode_lut[np.frombuffer(raw, dtype=np.uint8)]
        if self.unknown != "unk":
            self._check(body, raw, record)
        if not (add_bos or add_eos):
            return body
        out = np.empty(len(body) + add_bos + add_eos, dtype=IDS_DTYPE)
        if add_bos:
            out[0] = BOS_ID
        out[int(add_bos): int(add_bos) + len(body)] = body
        if add_eos:
            out[-1] = EOS_ID
        return out

    def encode_batch(self, seqs: Iterable[str | bytes]) -> list[npt.NDArray[np.uint8]]:
        """Encode several sequences with one lookup-table pass over all their bytes."""
        raws = [self._as_bytes(s, None) for s in seqs]
        if not raws:
            return []
        joined = b"".join(raws)
        ids = self._encode_lut[np.frombuffer(joined, dtype=np.uint8)]
        if self.unknown != "unk" and (ids == _INVALID).any():
            # Re-run per sequence to report the exact record-relative position.
            for r in raws:
                self._check(self._encode_lut[np.frombuffer(r, dtype=np.uint8)], r, None)
        bounds = np.cumsum([len(r) for r in raws[:-1]])
        return list(np.split(ids, bounds))

    def _as_bytes(self, seq: str | bytes | bytearray | memoryview,
                  record: str | None) -> bytes | bytearray | memoryview:
        if isinstance(seq, str):
            try:
                return seq.encode("ascii")
            except UnicodeEncodeError as e:
                if self.unknown == "unk":
                    # Non-ASCII characters are never symbols: clamp them onto byte 255,
                    # which the table maps to unk, keeping one id per character.
                    codes = np.frombuffer(seq.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
                    return np.minimum(codes, 255).astype(np.uint8).tobytes()
                # Report the first bad symbol: an earlier ASCII one wins.
                prefix = seq[: e.start].encode("ascii")
                self._check(self._encode_lut[np.frombuffer(prefix, np.uint8)], prefix, record)
                raise UnknownSymbolError(seq[e.start], e.start + 1, record,
                                         self.alphabet.name) from None
        return seq

    def _check(self, ids: npt.NDArray[np.uint8], raw: bytes | bytearray | memoryview,
               record: str | None) -> None:
        bad = ids == _INVALID
        if bad.any():
            pos = int(bad.argmax())
            sym = chr(bytes(raw[pos: pos + 1])[0])
            raise UnknownSymbolError(sym, pos + 1, record, self.alphabet.name)

    # ----------------------------------------------------------------- decode
    def decode(self, ids: Sequence[int] | npt.ArrayLike, *, skip_special: bool = False) -> str:
        """Turn ids back into a string.

        Symbols decode to their uppercase form (``decode(encode(s)) == s.upper()``
        for case-insensitive alphabets); special tokens decode to ``<pad>``,
        ``<unk>``, ... or are dropped with ``skip_special=True``.
        Accepts lists, numpy arrays and tensors (converted with ``np.asarray``).
        """
        arr = np.asarray(ids).astype(np.int64, copy=False).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size}); got {arr.min()}..{arr.max()}")
        if skip_special:
            arr = arr[arr >= NUM_SPECIAL_TOKENS]
        if arr.size and arr.min() >= NUM_SPECIAL_TOKENS:
            # Fast path: every id is one alphabet byte.
            return self._symbol_bytes[arr].tobytes().decode("ascii")
        return b"".join(self._decode_table[arr].tolist()).decode("ascii") if arr.size else ""

    # ------------------------------------------------------------------ config
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable configuration; :meth:`from_dict` rebuilds the tokenizer."""
        a = self.alphabet
        return {
            "alphabet": a.name,
            "symbols": a.symbols,
            "gaps": a.gaps,
            "stop": a.stop,
            "case_sensitive": a.case_sensitive,
            "unknown": self.unknown,
            "vocab": list(self._vocab),
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` output (checks the vocabulary matches)."""
        alphabet = Alphabet(
            config["alphabet"], config["symbols"], bool(config.get("gaps", False)),
            bool(config.get("stop", False)), bool(config.get("case_sensitive", False)),
        )
        tok = cls(alphabet, unknown=config.get("unknown", "error"))
        if "vocab" in config and list(config["vocab"]) != list(tok.vocab):
            raise ValueError("stored vocabulary does not match the rebuilt tokenizer")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.alphabet, self.unknown))

    def __repr__(self) -> str:
        a = self.alphabet
        extra = "".join(f", {k}=True" for k in ("gaps", "stop", "case_sensitive") if getattr(a, k))
        name = a.name if a.name != "custom" else a.symbols
        return f"Tokenizer({name!r}, unknown={self.unknown!r}{extra}, vocab_size={self.vocab_size})"
