"""Batches and collation: a list of sequences -> right-padded ids, mask and lengths.

:class:`Collator` is a ``collate_fn`` for :class:`torch.utils.data.DataLoader`; it
returns a :class:`Batch` with ``tokens`` ``(B, L)`` int64, ``mask`` ``(B, 1, L)`` bool
and ``lengths`` ``(B,)`` int64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import accumulate
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from seqpad.masks import lengths_to_mask
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

__all__ = ["Batch", "Collator", "CropPolicy"]

CropPolicy = Literal["random", "start", "error"]

#: What :class:`Collator` accepts as one item: a sequence, token ids, or either with a name.
Item: TypeAlias = (
    "str | bytes | bytearray | npt.NDArray[np.integer] | Tensor"
    " | tuple[str, str | bytes | npt.NDArray[np.integer] | Tensor]"
)

_ARRAY_TYPES = frozenset({np.ndarray, np.memmap})
_INVALID = 255  # byte the tokenizer's lookup table gives symbols outside the alphabet


@dataclass
class Batch:
    """A right-padded batch of ``B`` sequences.

    Attributes:
        tokens: ``(B, L)`` int64 ids, padded on the right with the tokenizer's ``pad_id``.
        mask: ``(B, 1, L)`` bool, True at real tokens (bos/eos included).
        lengths: ``(B,)`` int64 number of real tokens per sequence (bos/eos included).
        names: record names when the items carried them, else None.
        labels: ``(B, L)`` int64 masked-LM targets (original id at the chosen positions,
            -100 elsewhere) from :class:`~seqpad.masked_lm.MaskedLMCollator`, else None.
        segment_ids: packed batches only (:class:`seqpad.PackingCollator`): ``(B, L)``
            int32, ``1, 2, ...`` per sequence within a row, 0 at padding; then
            ``lengths``, ``names``, ``rows`` and ``offsets`` are per *sequence* ``(N,)``.
        rows / offsets: packed batches only: ``(N,)`` int64 row and first position of
            each sequence (see :func:`seqpad.unpack`).

    ``L`` is the longest length (rounded up with ``pad_to_multiple_of``).
    :meth:`pin_memory` makes ``DataLoader(pin_memory=True)`` work; :meth:`to` moves it.
    """

    tokens: Tensor
    mask: Tensor
    lengths: Tensor
    names: list[str] | None = field(default=None)
    labels: Tensor | None = field(default=None)
    segment_ids: Tensor | None = field(default=None)
    rows: Tensor | None = field(default=None)
    offsets: Tensor | None = field(default=None)

    def _map(self, fn: Any) -> Batch:
        """A copy with ``fn`` applied to every tensor field (other fields shared)."""
        return replace(self, **{
            f.name: fn(value) for f in fields(self)
            if isinstance(value := getattr(self, f.name), Tensor)
        })

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device`` (``names`` shared)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """A copy in page-locked memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(Tensor.pin_memory)

    def __len__(self) -> int:
        """The batch size ``B``."""
        return int(self.tokens.shape[0])


class Collator:
    """Turn a list of sequences into a padded :class:`Batch`; use as ``collate_fn``.

    An item is any of:

    * a sequence: ``str`` (or ASCII ``bytes``) of residues;
    * token ids: a 1-D integer numpy array or tensor, e.g. ``TokenizedDataset[i]``
      (memmap view, ``tokenizer.ids_dtype``: uint8, or uint16 / uint32 for k-mers),
      used as they are;
    * a ``(name, sequence)`` or ``(name, ids)`` pair, e.g. ``TokenizedDataset`` items with
      ``with_names=True``; then ``Batch.names`` holds the names (all items of a batch must
      be named, or none).

    Strings of a batch are joined and encoded in one pass through the tokenizer's
    lookup table; rows are assembled as bytes and converted to tensors once, so the cost
    per residue is a few byte copies and there is no Python work per residue. Tokenizers
    that are not one byte per symbol (k-mers, ids wider than uint8) take a numpy path:
    the batch is encoded at once and rows are filled into a ``(B, L)`` array; crops then
    cut tokens (k-mers), and ``pad_id`` may be any id (ESM-2's is 1).

    Args:
        tokenizer: gives ``pad_id``, ``bos_id``, ``eos_id``, ``vocab_size`` and the byte
            lookup table. An unknown symbol raises :class:`UnknownSymbolError` naming the
            record (or ``"batch item i"``) and 1-based position unless the tokenizer maps it
            to ``unk`` (``unknown="unk"``); ``unknown="skip"`` also raises, since a collator
            cannot drop an item from a batch.
        pad_to_multiple_of: round ``L`` up to a multiple of this (e.g. 8 for tensor cores).
        max_length: longest allowed length, bos/eos included; longer sequences are cropped
            according to ``crop`` (bos/eos stay, the residues are cut).
        crop: ``"random"``: a window of ``max_length - add_bos - add_eos`` residues whose
            start is uniform over every possible offset, ``0 .. n - window`` (so the true
            end can be reached); ``"start"``: the first residues; ``"error"``: raise
            ``ValueError`` naming the item and its length.
        add_bos / add_eos: put ``bos_id`` / ``eos_id`` around every item, token arrays
            included. Do not combine with a store tokenized with ``--bos`` / ``--eos``
            (the ids already hold them and would get them twice).
        seed: seeds the random crops. Seeded, the crops depend only on ``(seed, epoch,
            DataLoader worker id)`` and the order of calls: the same seed gives the same
            sequence of crops, run after run. Each DataLoader worker gets its own stream
            (seeded with ``[seed, epoch, worker_id]``; the main process uses worker id 0),
            so workers never repeat each other's crops. Call :meth:`set_epoch` each epoch
            for fresh crops when workers are not persistent (they restart from a copy of
            this object every epoch). Unseeded, the main process draws from OS entropy and
            each worker from torch's per-worker seed (``get_worker_info().seed``), which is
            reproducible exactly when the DataLoader is (``torch.manual_seed`` or its
            ``generator``). Global RNG state is never used.

    Lengths and the mask count bos/eos as real tokens. A length-0 sequence gives an
    all-False mask row (length 1 or 2 with bos/eos). An empty list raises ``ValueError``.

    Example:
        >>> from seqpad.tokenizer import Tokenizer
        >>> batch = Collator(Tokenizer("dna"))(["ACG", "T"])
        >>> batch.tokens.tolist(), batch.lengths.tolist()
        ([[5, 6, 7], [8, 0, 0]], [3, 1])
        >>> batch.mask.shape
        torch.Size([2, 1, 3])
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        crop: CropPolicy = "random",
        add_bos: bool = False,
        add_eos: bool = False,
        seed: int | None = None,
    ) -> None:
        if not isinstance(tokenizer, Tokenizer):
            hint = (f"; use Collator(Tokenizer({tokenizer!r}))"
                    if isinstance(tokenizer, str) else "")
            raise TypeError(f"Collator needs a seqpad Tokenizer as its first argument, "
                            f"got {type(tokenizer).__name__} {tokenizer!r}{hint}")
        if crop not in ("random", "start", "error"):
            raise ValueError(f"crop must be 'random', 'start' or 'error', got {crop!r}")
        if pad_to_multiple_of is not None and (
                int(pad_to_multiple_of) != pad_to_multiple_of or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, "
                             f"got {pad_to_multiple_of!r}")
        specials = int(bool(add_bos)) + int(bool(add_eos))
        if max_length is not None and (int(max_length) != max_length
                                       or max_length < specials + 1):
            raise ValueError(f"max_length must be an int >= {specials + 1} (room for one "
                             f"residue besides bos/eos), got {max_length!r}")
        if seed is not None and (int(seed) != seed or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = None if pad_to_multiple_of is None else int(pad_to_multiple_of)
        self.max_length = None if max_length is None else int(max_length)
        self.crop: CropPolicy = crop
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.seed = None if seed is None else int(seed)
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._stream: tuple[int, int] | None = None
        self._warned: set[str] = set()  # warnings given once per Collator
        self._setup()

    def _setup(self) -> None:
        """Derived lookup tables (rebuilt after unpickling)."""
        tok = self.tokenizer
        self._pad = int(tok.pad_id)
        self._vocab = int(tok.vocab_size)
        bos, eos = tok._bos_eos(self.add_bos, self.add_eos)  # ValueError if a role is missing
        self._bytewise = bool(getattr(tok, "is_bytewise", True))
        self._bos_id, self._eos_id = bos, eos
        self._specials = int(self.add_bos) + int(self.add_eos)
        self._window = None if self.max_length is None else self.max_length - self._specials
        if not self._bytewise:  # k-mers or ids wider than a byte: the numpy path
            return
        lut = np.asarray(tok.lookup_table, dtype=np.uint8)
        self._table = lut.tobytes()
        self._pad_byte = bytes([self._pad])
        self._prefix = bytes([bos]) if self.add_bos else b""
        self._suffix = bytes([eos]) if self.add_eos else b""
        # The mask can be read off the padded ids (ids != pad) when no real token of an
        # encoded string can equal pad; array items are checked one by one.
        self._pad_free = self._pad not in set(lut.tolist()) - {_INVALID} and \
            self._pad_byte not in self._prefix + self._suffix

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_table", "_pad_byte", "_prefix", "_suffix", "_pad_free", "_pad",
                  "_vocab", "_specials", "_window", "_bytewise", "_bos_id", "_eos_id"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    # ---------------------------------------------------------------- randomness
    def set_epoch(self, epoch: int) -> None:
        """Restart the seeded crop stream at ``(seed, epoch)`` (no effect when unseeded)."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)
        if self.seed is not None:
            self._rng = None

    def _generator(self) -> np.random.Generator:
        """The crop generator of this process: one stream per DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        stream = None if info is None else (int(info.id), int(info.seed))
        if self._rng is None or stream != self._stream:
            worker = 0 if info is None else int(info.id)
            if self.seed is not None:
                seq = np.random.SeedSequence([self.seed, self.epoch, worker])
            elif info is not None:
                seq = np.random.SeedSequence([int(info.seed) % 2**64, worker])
            else:
                seq = np.random.SeedSequence()  # OS entropy
            self._rng = np.random.default_rng(seq)
            self._stream = stream
        return self._rng

    # ------------------------------------------------------------------- collate
    def __call__(self, items: Sequence[Item]) -> Batch:
        """Collate ``items`` (see the class docstring) into a :class:`Batch`."""
        if len(items) == 0:
            raise ValueError("cannot collate an empty list of items")
        if not self._bytewise:
            return self._collate_wide(items)
        names: list[str] | None = None
        pad_free = self._pad_free
        kinds = set(map(type, items))
        if kinds == {str}:  # fast path: a list of sequences
            bodies = self._split(self._encode_texts(items, None, None), items)
        elif kinds <= _ARRAY_TYPES:  # fast path: token arrays (TokenizedDataset items)
            bodies = [x.tobytes() if x.dtype.char == "B" and x.ndim == 1
                      else self._ids_bytes(x, i, None) for i, x in enumerate(items)]
            joined = b"".join(bodies)
            if joined and int(np.frombuffer(joined, dtype=np.uint8).max()) >= self._vocab:
                for i, x in enumerate(items):  # name the first bad item
                    self._ids_bytes(x, i, None)
            if pad_free:
                pad_free = self._pad_byte not in joined
        else:
            names, payloads, text_at = self._classify(items)
            bodies = payloads  # becomes: the ids of every item, as bytes
            if text_at:
                texts = [payloads[i] for i in text_at]
                parts = self._split(self._encode_texts(texts, text_at, names), texts)
                for i, part in zip(text_at, parts):  # noqa: B905
                    bodies[i] = part
            if len(text_at) != len(items):
                is_text = set(text_at)
                for i in range(len(items)):
                    if i not in is_text:
                        bodies[i] = self._ids_bytes(payloads[i], i, names)
                        if pad_free and self._pad_byte in bodies[i]:
                            pad_free = False  # a real token equals pad: mask from lengths
        if self._specials and kinds != {str}:  # token ids may carry stored bos/eos
            self._warn_double_specials(bodies)
        if self._window is not None:
            bodies = self._crop(bodies, self._window, names)
        return self._assemble(bodies, names, pad_free)

    def _warn_once(self, key: str, message: str) -> None:
        warned = self.__dict__.setdefault("_warned", set())  # pickles from older versions
        if key not in warned:
            warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)

    def _warn_double_specials(self, bodies: list[bytes]) -> None:
        """Warn (once) when token ids already start with bos / end with eos and this
        collator adds them again: a store written with ``--bos`` / ``--eos``."""
        warned = self.__dict__.get("_warned", set())
        check_bos = self.add_bos and "double bos" not in warned  # no scan once warned
        check_eos = self.add_eos and "double eos" not in warned
        bos, eos = bytes([int(self.tokenizer.bos_id)]), bytes([int(self.tokenizer.eos_id)])
        if check_bos and any(b[:1] == bos for b in bodies):
            self._warn_once("double bos", "token ids that already start with bos_id (a store "
                            "written with --bos / add_bos=True) get a second bos from "
                            "Collator(add_bos=True); use one or the other")
        if check_eos and any(b[-1:] == eos for b in bodies):
            self._warn_once("double eos", "token ids that already end with eos_id (a store "
                            "written with --eos / add_eos=True) get a second eos from "
                            "Collator(add_eos=True); use one or the other")

    @staticmethod
    def _split(ids: bytes, texts: Sequence[str]) -> list[bytes]:
        """Cut the joined ids back into one ``bytes`` per text."""
        ends = list(accumulate(map(len, texts)))
        return [ids[a:b] for a, b in zip([0, *ends[:-1]], ends)]  # noqa: B905

    def _classify(self, items: Sequence[Item]) -> tuple[list[str] | None, list[Any], list[int]]:
        """Split items into names and payloads; note which payloads are text."""
        names: list[str] = []
        seqs: list[Any] = []
        text_at: list[int] = []
        for i, x in enumerate(items):
            if isinstance(x, (tuple, list)):
                if len(x) != 2 or not isinstance(x[0], str):
                    raise TypeError(f"batch item {i}: a tuple item must be (name: str, "
                                    f"sequence or ids), got {type(x).__name__} of length {len(x)}")
                names.append(x[0])
                x = x[1]
            if isinstance(x, str):
                text_at.append(i)
            elif isinstance(x, (bytes, bytearray)):
                x = bytes(x).decode("latin-1")  # one char per byte; ASCII checked later
                text_at.append(i)
            elif not isinstance(x, (np.ndarray, Tensor)):
                raise TypeError(f"batch item {i}: expected a str, token ids (numpy array or "
                                f"tensor) or a (name, ...) pair, got {type(x).__name__}")
            seqs.append(x)
        if names and len(names) != len(seqs):
            raise ValueError("either every item of a batch carries a name ((name, sequence) "
                             f"pairs) or none does; got {len(names)} named of {len(seqs)}")
        return (names or None), seqs, text_at

    def _label(self, i: int, names: list[str] | None) -> str:
        return f"{names[i]!r} (batch item {i})" if names else f"batch item {i}"

    def _encode_texts(self, texts: Sequence[str], where: list[int] | None,
                      names: list[str] | None) -> bytes:
        """Ids of all ``texts`` joined, as bytes: one lookup-table pass."""
        joined = "".join(texts)
        try:
            raw = joined.encode("ascii")
        except UnicodeEncodeError:
            if self.tokenizer.unknown != "unk":
                self._raise_unknown(texts, where, names)
            # Non-ASCII characters are never symbols: one unk per character, as encode().
            codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            raw = np.minimum(codes, 255).astype(np.uint8).tobytes()
        ids = raw.translate(self._table)
        if b"\xff" in ids:
            self._raise_unknown(texts, where, names)
        return ids

    def _raise_unknown(self, texts: Sequence[str], where: list[int] | None,
                       names: list[str] | None) -> None:
        for i, s in zip(range(len(texts)) if where is None else where, texts):  # noqa: B905
            record = names[i] if names else f"batch item {i}"
            self.tokenizer.encode(s, record=record)  # raises UnknownSymbolError
        raise UnknownSymbolError("?", 0, None)  # pragma: no cover - encode raised above

    def _ids_bytes(self, x: npt.NDArray[np.integer] | Tensor, i: int,
                   names: list[str] | None) -> bytes:
        """Token ids of one item as uint8 bytes, checked against the vocabulary."""
        x = self._ids_array(x, i, names)
        if x.dtype != np.uint8:
            x = x.astype(np.uint8)
        return x.tobytes()

    def _crop(self, bodies: list[bytes], window: int, names: list[str] | None) -> list[bytes]:
        """Cut bodies longer than ``window`` according to the crop policy."""
        lens = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        over = np.flatnonzero(lens > window)
        if not over.size:
            return bodies
        if self.crop == "error":
            i = int(over[0])
            raise ValueError(
                f"{self._label(i, names)}: length {int(lens[i]) + self._specials} "
                f"(bos/eos included) exceeds max_length={self.max_length}; "
                "use crop='random' or 'start' to crop it")
        if self.crop == "start":
            starts = np.zeros(over.size, dtype=np.int64)
        else:
            starts = self._generator().integers(0, lens[over] - window + 1)
        bodies = list(bodies)
        bos, eos = int(self.tokenizer.bos_id), int(self.tokenizer.eos_id)
        for i, s in zip(over.tolist(), starts.tolist()):  # noqa: B905
            body = bodies[i]
            if (s > 0 and body[0] == bos) or (s + window < len(body) and body[-1] == eos):
                self._warn_once("crop specials", (
                    f"{self._label(i, names)}: cropping to max_length={self.max_length} "
                    "removes the bos/eos stored with the ids (a store written with --bos / "
                    "--eos); to crop, write the store without them and let "
                    "Collator(add_bos=True, add_eos=True) add them after the crop"))
            bodies[i] = body[s: s + window]
        return bodies

    def _assemble(self, bodies: list[bytes], names: list[str] | None, pad_free: bool) -> Batch:
        """Pad the id bytes into ``(B, L)`` rows and build the tensors."""
        n_items = len(bodies)
        specials = self._specials
        lengths = list(map(len, bodies))
        if specials:
            lengths = [n + specials for n in lengths]
        width = max(lengths)
        if self.pad_to_multiple_of is not None:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        lengths_t = torch.from_numpy(np.array(lengths, dtype=np.int64))
        if width == 0:
            tokens = torch.full((n_items, 0), self._pad, dtype=torch.long)
            return Batch(tokens, torch.zeros((n_items, 1, 0), dtype=torch.bool), lengths_t, names)
        pad = self._pad_byte
        if specials:
            pre, post = self._prefix, self._suffix
            rows = [(pre + b + post).ljust(width, pad) for b in bodies]
        else:
            rows = [b.ljust(width, pad) for b in bodies]
        # numpy for the element-wise work: on small tensors it beats torch's dispatch.
        ids8 = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(n_items, width)
        tokens = torch.from_numpy(ids8.astype(np.int64))
        if pad_free:
            mask = torch.from_numpy(ids8 != self._pad).unsqueeze(1)
        else:
            mask = lengths_to_mask(lengths_t, width)
        return Batch(tokens, mask, lengths_t, names)

    # ------------------------------------------------ k-mers, ids wider than a byte
    def _collate_wide(self, items: Sequence[Item]) -> Batch:
        """The numpy path for tokenizers that are not byte-for-byte (k-mers, uint16 /
        uint32 ids): every item becomes an id array, rows are filled into ``(B, L)``."""
        if all(isinstance(x, str) for x in items):
            names, payloads, text_at = None, list(items), list(range(len(items)))
        else:
            names, payloads, text_at = self._classify(items)
        bodies: list[Any] = list(payloads)
        if text_at:
            tok = self.tokenizer
            texts = [payloads[i] for i in text_at]
            raws = [t.encode("ascii") if t.isascii() else tok._as_bytes(t, None)
                    if tok.unknown == "unk" else None for t in texts]
            encoded = None
            if all(r is not None for r in raws):
                lens = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
                encoded = tok._encode_joined(b"".join(raws), lens)  # type: ignore[arg-type]
            if encoded is None:  # an unknown symbol: name the item and position
                self._raise_unknown(texts, text_at, names)
            assert encoded is not None
            ids, tok_lens = encoded
            for i, part in zip(text_at, np.split(ids, np.cumsum(tok_lens[:-1])), strict=True):
                bodies[i] = part
        is_text = set(text_at)
        for i in range(len(items)):
            if i not in is_text:
                bodies[i] = self._ids_array(payloads[i], i, names)
        if self._window is not None:
            bodies = self._crop(bodies, self._window, names)
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        lengths += self._specials
        width = int(lengths.max())
        if self.pad_to_multiple_of is not None:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        tokens = np.full((len(bodies), width), self._pad, dtype=np.int64)
        start = int(self.add_bos)
        for row, b in zip(tokens, bodies, strict=True):
            row[start: start + len(b)] = b
        rows = np.arange(len(bodies))
        if self.add_bos:
            tokens[rows[lengths > 0], 0] = self._bos_id
        if self.add_eos:
            tokens[rows, lengths - 1] = self._eos_id
        lengths_t = torch.from_numpy(lengths)
        return Batch(torch.from_numpy(tokens), lengths_to_mask(lengths_t, width), lengths_t,
                     names)

    def _ids_array(self, x: npt.NDArray[np.integer] | Tensor, i: int,
                   names: list[str] | None) -> npt.NDArray[np.integer]:
        """Token ids of one item, checked against the vocabulary (any integer dtype)."""
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        if x.ndim != 1:
            raise ValueError(f"{self._label(i, names)}: token ids must be 1-D, "
                             f"got shape {tuple(x.shape)}")
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{self._label(i, names)}: token ids must be integers, "
                            f"got dtype {x.dtype}")
        if x.size and (int(x.min()) < 0 or int(x.max()) >= self._vocab):
            raise ValueError(f"{self._label(i, names)}: token ids must lie in "
                             f"[0, {self._vocab}), got {int(x.min())}..{int(x.max())}")
        return x

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.tokenizer!r}, "
            f"pad_to_multiple_of={self.pad_to_multiple_of}, max_length={self.max_length}, "
            f"crop={self.crop!r}, add_bos={self.add_bos}, add_eos={self.add_eos}, "
            f"seed={self.seed})"
        )
