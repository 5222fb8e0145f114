"""Tokenizer: sequences (str or bytes) to integer ids and back, vectorised.

Encoding is a single numpy fancy-index through a 256-entry byte lookup table, so
its cost is one pass over the bytes, with no Python loop per residue. k-mer
tokenizers (``k > 1``, see :mod:`seqpad.kmers`) add a few vectorised passes.
Vocabularies other than seqpad's own (e.g. ESM-2's, :mod:`seqpad.vocabularies`)
come from :meth:`Tokenizer.from_vocab`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from seqpad.alphabet import (
    BOS_ID,
    BUILTIN_ALPHABETS,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Alphabet,
    get_alphabet,
)
from seqpad.kmers import MAX_K, encode_kmers, kmer_tokens, nucleotide_table

__all__ = ["IDS_DTYPE", "Tokenizer", "UnknownPolicy", "UnknownSymbolError", "ids_dtype_for"]

UnknownPolicy = Literal["error", "unk", "skip"]
#: dtype of encoded ids of a vocabulary of at most 255 ids (``Tokenizer.ids_dtype``);
#: larger vocabularies (k-mers with k >= 4) use uint16, or uint32 beyond 65535 ids.
IDS_DTYPE = np.uint8
_INVALID = 255  # never a valid uint8 id: uint8 vocabularies hold at most 255 ids


def ids_dtype_for(vocab_size: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype whose largest value is not a valid id (that value
    marks symbols outside the alphabet): uint8 up to 255 ids, uint16 up to 65535, else
    uint32."""
    if vocab_size <= 255:
        return np.uint8
    if vocab_size <= 65535:
        return np.uint16
    return np.uint32


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



_ROLES = ("pad", "unk", "mask", "bos", "eos")


class Tokenizer:
    """Map sequences to integer ids with a fixed vocabulary.

    For the built-in kinds, ids ``0..4`` are the special tokens ``pad, unk, mask, bos,
    eos`` (see :mod:`seqpad.alphabet`); alphabet symbols follow from id 5 in order, then
    (``k > 1``) all ``4**k`` k-mers in lexicographic order (:mod:`seqpad.kmers`).
    :meth:`from_vocab` makes a tokenizer for any other ordered vocabulary (e.g.
    ESM-2's, :func:`seqpad.pretrained_tokenizer`), whose special ids may be anywhere:
    always use ``pad_id`` / ``bos_id`` / ... / :attr:`special_ids`, never fixed numbers.

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
        k: k-mer size, 1 to 8, for ``"dna"`` / ``"rna"`` only (``k=3``: codons). ``k=1``
            (default) is one token per symbol.
        stride: step between k-mer windows, 1 to ``k``; default ``k`` (non-overlapping).

    Ids are ``uint8`` while the vocabulary has at most 255 ids, else ``uint16`` (k = 4
    to 7), else ``uint32`` (k = 8); see :attr:`ids_dtype`.

    Example:
        >>> tok = Tokenizer("dna")
        >>> tok.encode("ACGTn").tolist()
        [5, 6, 7, 8, 9]
        >>> tok.decode([5, 6, 7, 8, 9])
        'ACGTN'
        >>> Tokenizer("dna", k=3).decode(Tokenizer("dna", k=3).encode("ATGAAAN"))
        'ATGAAAN'
    """

    def __init__(
        self,
        alphabet: str | Alphabet = "protein",
        *,
        unknown: UnknownPolicy = "error",
        gaps: bool = False,
        stop: bool = False,
        case_sensitive: bool = False,
        k: int = 1,
        stride: int | None = None,
    ) -> None:
        if isinstance(alphabet, Alphabet):
            alpha = alphabet
        else:
            alpha = get_alphabet(alphabet, gaps=gaps, stop=stop, case_sensitive=case_sensitive)
        if isinstance(k, bool) or int(k) != k or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an int from 1 to {MAX_K}, got {k!r}")
        k = int(k)
        stride = k if stride is None else stride
        if isinstance(stride, bool) or int(stride) != stride or not 1 <= stride <= k:
            raise ValueError(f"stride must be an int from 1 to k={k}, got {stride!r}")
        bases = None
        vocab = SPECIAL_TOKENS + tuple(alpha.all_symbols)
        if k > 1:
            if alpha.name not in ("dna", "rna") or alpha.symbols != BUILTIN_ALPHABETS[alpha.name]:
                raise ValueError(f"k-mers (k={k}) need the 'dna' or 'rna' alphabet, "
                                 f"got {alpha.name!r}")
            bases = "ACGT" if alpha.name == "dna" else "ACGU"
            vocab += tuple(kmer_tokens(bases, k))
        roles = {"pad": PAD_ID, "unk": UNK_ID, "mask": MASK_ID, "bos": BOS_ID, "eos": EOS_ID}
        self._build(alpha, vocab, roles, unknown, kind="alphabet", k=k, stride=int(stride),
                    bases=bases)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_vocab(
        cls,
        tokens: Sequence[str],
        *,
        pad: str | int,
        unk: str | int,
        mask: str | int | None = None,
        bos: str | int | None = None,
        eos: str | int | None = None,
        unknown: UnknownPolicy = "error",
        case_sensitive: bool = False,
        name: str = "custom",
    ) -> Tokenizer:
        """A tokenizer for any ordered vocabulary: ``tokens[i]`` has id ``i``.

        Args:
            tokens: every token in id order. One-character tokens are residues (what
                :meth:`encode` produces from a sequence); tokens written ``<...>`` are
                special (never produced from a sequence, e.g. ESM's ``<null_1>``); no
                other multi-character token is allowed.
            pad / unk / mask / bos / eos: the token (string) or id (int) of each role;
                ``pad`` and ``unk`` are required, the others optional (``None``: that
                role does not exist, and ``add_bos`` / ``add_eos`` / masking refuse).
            unknown / case_sensitive: as for the constructor. Case-insensitive (default):
                a lowercase residue gets the id of its uppercase token.
            name: a label used in messages, ``repr`` and ``meta.json``.

        Stored and rebuilt through :meth:`to_dict` / :meth:`from_dict` (so stores written
        with it reopen with the same ids).
        """
        vocab = tuple(tokens)
        if not vocab or not all(isinstance(t, str) and t for t in vocab):
            raise ValueError("tokens must be a non-empty sequence of non-empty strings")
        if len(set(vocab)) != len(vocab):
            dup = sorted({t for t in vocab if vocab.count(t) > 1})
            raise ValueError(f"tokens repeat: {dup}")
        roles: dict[str, int | None] = {}
        for role, given in zip(_ROLES, (pad, unk, mask, bos, eos), strict=True):
            if given is None:
                if role in ("pad", "unk"):
                    raise ValueError(f"{role} is required")
                roles[role] = None
            elif isinstance(given, str):
                if given not in vocab:
                    raise ValueError(f"{role} token {given!r} is not in the vocabulary")
                roles[role] = vocab.index(given)
            elif isinstance(given, (int, np.integer)) and not isinstance(given, bool) \
                    and 0 <= int(given) < len(vocab):
                roles[role] = int(given)
            else:
                raise ValueError(f"{role} must be a token or an id in [0, {len(vocab)}), "
                                 f"got {given!r}")
        used = [v for v in roles.values() if v is not None]
        if len(set(used)) != len(used):
            raise ValueError(f"special roles must have distinct ids, got {roles}")
        residues = []
        for i, t in enumerate(vocab):
            if i in used or (len(t) > 2 and t[0] == "<" and t[-1] == ">"):
                continue
            if len(t) != 1:
                raise ValueError(f"token {i} ({t!r}): only one-character residue tokens and "
                                 "'<...>' special tokens are supported")
            residues.append(t)
        if not residues:
            raise ValueError("the vocabulary has no one-character residue token")
        alpha = Alphabet(str(name), "".join(residues), case_sensitive=bool(case_sensitive))
        tok = cls.__new__(cls)
        tok._build(alpha, vocab, roles, unknown, kind="vocab", k=1, stride=1, bases=None)
        return tok

    def _build(self, alpha: Alphabet, vocab: tuple[str, ...], roles: dict[str, int | None],
               unknown: UnknownPolicy, *, kind: str, k: int, stride: int,
               bases: str | None) -> None:
        if unknown not in ("error", "unk", "skip"):
            raise ValueError(f"unknown must be 'error', 'unk' or 'skip', got {unknown!r}")
        self.alphabet = alpha
        self.unknown: UnknownPolicy = unknown
        self._kind = kind
        self._vocab = vocab
        self._k = k
        self._stride = stride
        self.pad_id: int = int(roles["pad"])  # type: ignore[arg-type]
        self.unk_id: int = int(roles["unk"])  # type: ignore[arg-type]
        self.mask_id: int | None = roles["mask"]
        self.bos_id: int | None = roles["bos"]
        self.eos_id: int | None = roles["eos"]
        dtype = ids_dtype_for(len(vocab))
        self._dtype = dtype
        invalid = int(np.iinfo(dtype).max)
        self._invalid = invalid
        cs = alpha.case_sensitive
        residue = np.zeros(len(vocab), dtype=bool)  # one-symbol residue tokens
        lut = np.full(256, invalid, dtype=dtype)
        for i, t in enumerate(vocab):
            if len(t) == 1 and t in alpha.all_symbols:
                residue[i] = True
                lut[ord(t)] = i
                if not cs:
                    lut[ord(t.upper())] = i
                    lut[ord(t.lower())] = i
        self._lut = lut
        # The table encode() uses: unknown bytes already mapped to unk under "unk".
        self._encode_lut = np.where(lut == invalid, self.unk_id, lut).astype(dtype) \
            if unknown == "unk" else lut
        special = np.ones(len(vocab), dtype=bool)
        special[residue] = False
        if k > 1:
            self._kmer_base = len(vocab) - 4 ** k
            special[self._kmer_base:] = False
            bases = bases or "ACGT"
            others = "".join(c for c in alpha.all_symbols if c.upper() not in bases)
            self._nuc = nucleotide_table(bases, others, cs)
        self._special = special
        self._special_ids = tuple(int(i) for i in np.flatnonzero(special))
        self._residue = residue
        shown = [t.upper() if residue[i] and not cs else t for i, t in enumerate(vocab)]
        self._decode_table = np.array([t.encode() for t in shown], dtype=object)
        self._symbol_bytes = np.frombuffer(
            b"".join(t.encode() if residue[i] else b"\0" for i, t in enumerate(shown)),
            dtype=np.uint8)

    # ------------------------------------------------------------------ vocab
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self._vocab)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def vocab(self) -> tuple[str, ...]:
        """Token strings in id order."""
        return self._vocab

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the special tokens (pad, unk, mask, bos, eos, and any other ``<...>``
        token of a :meth:`from_vocab` vocabulary such as ESM's ``<null_1>``), ascending.

        Every other id is a residue token (a symbol of the alphabet, or a k-mer).
        """
        return self._special_ids

    @property
    def k(self) -> int:
        """k-mer size (1: one token per symbol)."""
        return self._k

    @property
    def stride(self) -> int:
        """Step between k-mer windows (equals ``k`` for non-overlapping k-mers)."""
        return self._stride

    @property
    def ids_dtype(self) -> np.dtype[Any]:
        """dtype of encoded ids: ``uint8`` (<= 255 ids), ``uint16`` or ``uint32``."""
        return np.dtype(self._dtype)

    @property
    def is_bytewise(self) -> bool:
        """True when every token is one symbol and ids are ``uint8``: encoding is then
        ``bytes.translate`` through :attr:`lookup_table` (the fast paths use it)."""
        return self._k == 1 and self._dtype is np.uint8

    @property
    def lookup_table(self) -> npt.NDArray[np.unsignedinteger]:
        """The 256-entry byte -> single-symbol id table used by :meth:`encode`
        (read-only copy, dtype :attr:`ids_dtype`).

        Bytes outside the alphabet hold the dtype's largest value (255 for uint8) under
        ``unknown="error"``/``"skip"`` and ``unk_id`` under ``unknown="unk"``.
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
    ) -> npt.NDArray[np.unsignedinteger]:
        """Encode one sequence.

        Args:
            seq: residues as ``str`` (ASCII) or bytes; no whitespace.
            add_bos / add_eos: prepend ``bos_id`` / append ``eos_id``.
            record: the record's name, used in error messages.

        Returns:
            ``np.ndarray`` of dtype :attr:`ids_dtype`; shape ``(len(seq) + add_bos +
            add_eos,)`` for ``k=1``, fewer tokens for k-mers.

        Raises:
            UnknownSymbolError: under ``unknown="error"`` or ``"skip"``, for the first
                symbol outside the alphabet (1-based position, record when given).
        """
        raw = self._as_bytes(seq, record)
        if self._k > 1:
            encoded = self._encode_joined(raw, np.array([len(raw)], dtype=np.int64))
            if encoded is None:  # a symbol outside the alphabet: say which
                self._check(self._encode_lut[np.frombuffer(raw, dtype=np.uint8)], raw, record)
            assert encoded is not None
            body = encoded[0]
        else:
            body = self._encode_lut[np.frombuffer(raw, dtype=np.uint8)]
            if self.unknown != "unk":
                self._check(body, raw, record)
        if not (add_bos or add_eos):
            return body
        bos, eos = self._bos_eos(add_bos, add_eos)
        out = np.empty(len(body) + add_bos + add_eos, dtype=self._dtype)
        if add_bos:
            out[0] = bos
        out[int(add_bos): int(add_bos) + len(body)] = body
        if add_eos:
            out[-1] = eos
        return out

    def _bos_eos(self, add_bos: bool, add_eos: bool) -> tuple[int, int]:
        """``(bos_id, eos_id)``, raising ValueError for a role this vocabulary lacks."""
        for want, role in ((add_bos, "bos"), (add_eos, "eos")):
            if want and getattr(self, f"{role}_id") is None:
                raise ValueError(f"add_{role}=True, but this tokenizer has no {role} token")
        return (self.bos_id or 0), (self.eos_id or 0)

    def encode_batch(self, seqs: Iterable[str | bytes]
                     ) -> list[npt.NDArray[np.unsignedinteger]]:
        """Encode several sequences with one lookup-table pass over all their bytes."""
        raws = [self._as_bytes(s, None) for s in seqs]
        if not raws:
            return []
        lengths = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
        out = self._encode_joined(b"".join(raws), lengths)
        if out is None:
            # Re-run per sequence to report the exact record-relative position.
            for r in raws:
                self._check(self._encode_lut[np.frombuffer(r, dtype=np.uint8)], r, None)
            raise AssertionError("unreachable")  # pragma: no cover
        ids, tok_lens = out
        return list(np.split(ids, np.cumsum(tok_lens[:-1])))

    def _encode_joined(self, raw: bytes | bytearray | memoryview,
                       lengths: npt.NDArray[np.int64]
                       ) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.int64]] | None:
        """Ids of several sequences joined (``raw``, ``lengths`` symbols each) and their
        token counts; ``None`` when a symbol is outside the alphabet under
        ``unknown="error"`` / ``"skip"`` (callers encode record by record to report it)."""
        if self._k == 1:
            ids = self._encode_lut[np.frombuffer(raw, dtype=np.uint8)]
            if self.unknown != "unk" and (ids == self._invalid).any():
                return None
            return ids, np.asarray(lengths, dtype=np.int64)
        nuc = bytes(raw).translate(self._nuc)  # one C pass: byte -> nucleotide code
        if self.unknown != "unk" and b"\x05" in nuc:  # a byte outside the alphabet
            return None
        return encode_kmers(np.frombuffer(nuc, dtype=np.uint8),
                            np.frombuffer(raw, dtype=np.uint8), self._encode_lut, lengths,
                            self._k, self._stride, self._kmer_base, self._dtype)

    def _as_bytes(self, seq: str | bytes | bytearray | memoryview,
                  record: str | None) -> bytes | bytearray | memoryview:
        if isinstance(seq, str):
            try:
                return seq.encode("ascii")
            except UnicodeEncodeError as e:
                if self.unknown == "unk":
                    # Non-ASCII characters are never symbols: clamp them onto byte 255,
                    # which the table maps to unk, keeping one id per character. Lone
                    # surrogates (bytes that were not UTF-8) count as characters too.
                    codes = np.frombuffer(seq.encode("utf-32-le", "surrogatepass"),
                                          dtype=np.uint32)
                    return np.minimum(codes, 255).astype(np.uint8).tobytes()
                # Report the first bad symbol: an earlier ASCII one wins.
                prefix = seq[: e.start].encode("ascii")
                self._check(self._encode_lut[np.frombuffer(prefix, np.uint8)], prefix, record)
                raise UnknownSymbolError(seq[e.start], e.start + 1, record,
                                         self.alphabet.name) from None
        return seq

    def _check(self, ids: npt.NDArray[np.unsignedinteger],
               raw: bytes | bytearray | memoryview, record: str | None) -> None:
        bad = ids == self._invalid
        if bad.any():
            pos = int(bad.argmax())
            sym = chr(bytes(raw[pos: pos + 1])[0])
            raise UnknownSymbolError(sym, pos + 1, record, self.alphabet.name)

    # ----------------------------------------------------------------- decode
    def decode(self, ids: Sequence[int] | npt.ArrayLike, *, skip_special: bool = False) -> str:
        """Turn ids back into a string.

        Symbols decode to their uppercase form (``decode(encode(s)) == s.upper()``
        for case-insensitive alphabets, and for k-mers with ``stride == k``); k-mer
        tokens decode to their ``k`` symbols; special tokens decode to ``<pad>``,
        ``<unk>``, ... or are dropped with ``skip_special=True``.
        Accepts lists, numpy arrays and tensors (converted with ``np.asarray``).
        """
        arr = np.asarray(ids).astype(np.int64, copy=False).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size}); got {arr.min()}..{arr.max()}")
        if skip_special and arr.size:
            arr = arr[~self._special[arr]]
        if not arr.size:
            return ""
        if self._residue[arr].all():
            # Fast path: every id is one alphabet byte.
            return self._symbol_bytes[arr].tobytes().decode("ascii")
        return b"".join(self._decode_table[arr].tolist()).decode("ascii")

    # ------------------------------------------------------------------ config
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable configuration; :meth:`from_dict` rebuilds the tokenizer."""
        a = self.alphabet
        if self._kind == "vocab":
            out: dict[str, Any] = {"kind": "vocab", "name": a.name}
            out.update({role: getattr(self, f"{role}_id") for role in _ROLES})
            out.update(case_sensitive=a.case_sensitive, unknown=self.unknown,
                       vocab=list(self._vocab))
            return out
        out = {
            "alphabet": a.name,
            "symbols": a.symbols,
            "gaps": a.gaps,
            "stop": a.stop,
            "case_sensitive": a.case_sensitive,
            "unknown": self.unknown,
            "vocab": list(self._vocab),
        }
        if self._k > 1:  # one-symbol configs stay as they always were
            out.update(k=self._k, stride=self._stride)
        return out

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` output (checks the vocabulary matches,
        and that a built-in alphabet's name goes with its own symbols)."""
        if config.get("kind", "alphabet") == "vocab":
            tok = cls.from_vocab(
                list(config["vocab"]), pad=config["pad"], unk=config["unk"],
                mask=config.get("mask"), bos=config.get("bos"), eos=config.get("eos"),
                unknown=config.get("unknown", "error"),
                case_sensitive=bool(config.get("case_sensitive", False)),
                name=str(config.get("name", "custom")))
            from seqpad.vocabularies import PRETRAINED_VOCABS  # here: it imports this module

            known = PRETRAINED_VOCABS.get(tok.alphabet.name)
            if known is not None and tuple(tok.vocab) != tuple(known["tokens"]):  # type: ignore[arg-type]
                raise ValueError(f"stored vocabulary is not the {tok.alphabet.name!r} one")
            return tok
        if config.get("kind", "alphabet") != "alphabet":
            raise ValueError(f"unknown tokenizer kind {config.get('kind')!r}")
        name, symbols = config["alphabet"], config["symbols"]
        if not isinstance(name, str) or not isinstance(symbols, str):
            raise ValueError(f"alphabet name and symbols must be strings, got {name!r}, "
                             f"{symbols!r}")
        from seqpad.alphabet import BUILTIN_ALPHABETS  # here: the import list is shared

        if name != "custom" and BUILTIN_ALPHABETS.get(name) != symbols:
            raise ValueError(f"alphabet {name!r} does not match the stored symbols "
                             f"{symbols!r} (a built-in name with its own symbols, or "
                             "'custom')")
        alphabet = Alphabet(
            config["alphabet"], config["symbols"], bool(config.get("gaps", False)),
            bool(config.get("stop", False)), bool(config.get("case_sensitive", False)),
        )
        tok = cls(alphabet, unknown=config.get("unknown", "error"),
                  k=config.get("k", 1), stride=config.get("stride"))
        if "vocab" in config and list(config["vocab"]) != list(tok.vocab):
            raise ValueError("stored vocabulary does not match the rebuilt tokenizer")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.alphabet, self.unknown, self._vocab, self._stride))

    def __repr__(self) -> str:
        a = self.alphabet
        if self._kind == "vocab":
            return (f"Tokenizer.from_vocab(name={a.name!r}, unknown={self.unknown!r}, "
                    f"vocab_size={self.vocab_size})")
        extra = "".join(f", {k}=True" for k in ("gaps", "stop", "case_sensitive") if getattr(a, k))
        if self._k > 1:
            extra += f", k={self._k}, stride={self._stride}"
        name = a.name if a.name != "custom" else a.symbols
        return f"Tokenizer({name!r}, unknown={self.unknown!r}{extra}, vocab_size={self.vocab_size})"
