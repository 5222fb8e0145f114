"""Tokenized on-disk store: the format ``seqpad tokenize`` writes, and its Dataset.

A store is a directory of ``.npy`` arrays plus ``meta.json`` (specification in
``docs/store.md``)::

    ids.npy           uint8  (T,)    ids of every record, concatenated (uint16 / uint32
                                     for vocabularies over 255 ids: format version 2)
    offsets.npy       int64  (N+1,)  record i is ids[offsets[i]:offsets[i+1]]
    names.npy         uint8  (B,)    UTF-8 bytes of every name, concatenated
    name_offsets.npy  int64  (N+1,)  name i is names[name_offsets[i]:name_offsets[i+1]]
    meta.json                        format, version, store_id, tokenizer, options, summary

Everything is readable with numpy alone (``np.load(..., mmap_mode="r")``).
:func:`write_store` writes into a temporary directory next to the target and
renames it into place only when complete, so a failed or interrupted run never
leaves a store that opens.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import itertools
import json
import operator
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from seqpad.tokenizer import Tokenizer, UnknownSymbolError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "StoreError",
    "StoreReader",
    "StoreSummary",
    "TokenizedDataset",
    "write_store",
]

FORMAT_NAME = "seqpad-store"
#: Bumped on any incompatible change; readers refuse versions they do not know. Version 2
#: (k-mer and other vocabularies of more than 255 ids) stores ``ids.npy`` as ``<u2`` or
#: ``<u4``; a store whose ids fit a byte is still written as version 1.
FORMAT_VERSION = 2
META_FILE = "meta.json"
_ARRAYS: dict[str, str] = {  # file -> dtype (numpy descr); ids: see _ids_descr
    "ids.npy": "|u1",
    "offsets.npy": "<i8",
    "names.npy": "|u1",
    "name_offsets.npy": "<i8",
}


def _ids_descr(tokenizer: Tokenizer) -> str:
    """The numpy descr of ``ids.npy`` for ``tokenizer``: ``|u1``, ``<u2`` or ``<u4``."""
    return tokenizer.ids_dtype.newbyteorder("<").str


def _format_version(tokenizer: Tokenizer) -> int:
    """1 when the ids fit a byte (readable by older seqpad), else 2."""
    return 1 if tokenizer.ids_dtype.itemsize == 1 else 2


_HEADER_LEN = 128  # every .npy header we write is exactly this long (checked)
_INVALID = 255  # Tokenizer.lookup_table marks bytes outside the alphabet with 255
_INVALID_BYTE = bytes([_INVALID])
_HIST_SIZE = 1 << 16  # exact length histogram below this; longer lengths kept in a list
#: Reasons a record can be skipped, in the order summaries list them.
SKIP_REASONS = ("empty", "too_short", "too_long", "unknown_symbol")


class StoreError(ValueError):
    """A store cannot be written (target exists) or read (missing, foreign, corrupt)."""


# --------------------------------------------------------------------------- summary
@dataclass
class StoreSummary:
    """What a store holds, or what :func:`write_store` did.

    ``residues`` and the length statistics count sequence residues as stored
    (after truncation), without bos/eos; ``tokens`` includes them.
    """

    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    residues: int = 0
    tokens: int = 0
    length_min: int | None = None
    length_median: float | None = None
    length_max: int | None = None

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "skipped": dict(self.skipped),
            "truncated": self.truncated, "residues": self.residues, "tokens": self.tokens,
            "length_min": self.length_min, "length_median": self.length_median,
            "length_max": self.length_max,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreSummary:
        return cls(**{k: d[k] for k in cls().to_dict() if k in d})

    def format(self) -> str:
        """Human-readable lines, as ``seqpad tokenize`` and ``seqpad info`` print them."""
        def num(x: float | None) -> str:
            if x is None:
                return "-"
            return f"{int(x):,}" if float(x).is_integer() else f"{x:,.1f}"

        lines = [f"records written   {self.records:,}",
                 f"skipped           {self.total_skipped:,}"]
        for reason in SKIP_REASONS:
            if self.skipped.get(reason):
                lines.append(f"  {reason:<15} {self.skipped[reason]:,}")
        if self.truncated:
            lines.append(f"truncated         {self.truncated:,}")
        lines.append(f"residues          {self.residues:,}")
        if self.tokens != self.residues:
            lines.append(f"tokens            {self.tokens:,} (with bos/eos)")
        lines.append(f"length min/median/max  {num(self.length_min)} / "
                     f"{num(self.length_median)} / {num(self.length_max)}")
        return "\n".join(lines)

    __str__ = format


class _LengthStats:
    """Exact min / median / max of many lengths in memory independent of their count
    (a histogram below 65,536; longer lengths, necessarily few, kept as they are)."""

    def __init__(self) -> None:
        self.hist = np.zeros(_HIST_SIZE, dtype=np.int64)
        self.big: list[npt.NDArray[np.int64]] = []

    def add(self, lengths: npt.NDArray[np.int64]) -> None:
        small = lengths < _HIST_SIZE
        self.hist += np.bincount(lengths[small], minlength=_HIST_SIZE)
        if not small.all():
            self.big.append(lengths[~small].copy())

    def merge(self, other: _LengthStats) -> None:
        self.hist += other.hist
        self.big.extend(other.big)

    def __getstate__(self) -> dict[str, Any]:  # sent between processes: keep it small
        nz = np.flatnonzero(self.hist)
        return {"nz": nz, "counts": self.hist[nz], "big": self.big}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.hist = np.zeros(_HIST_SIZE, dtype=np.int64)
        self.hist[state["nz"]] = state["counts"]
        self.big = state["big"]

    def fill(self, s: StoreSummary) -> None:
        big = np.sort(np.concatenate(self.big)) if self.big else np.zeros(0, np.int64)
        n_small = int(self.hist.sum())
        n = n_small + len(big)
        if n == 0:
            return
        nz = np.flatnonzero(self.hist)
        s.length_min = int(nz[0]) if n_small else int(big[0])
        s.length_max = int(big[-1]) if len(big) else int(nz[-1])
        cum = np.cumsum(self.hist)

        def kth(k: int) -> int:  # 0-based k-th smallest
            if k < n_small:
                return int(np.searchsorted(cum, k, side="right"))
            return int(big[k - n_small])

        lo, hi = kth((n - 1) // 2), kth(n // 2)
        s.length_median = (lo + hi) / 2


def summarize_lengths(lengths: npt.ArrayLike, summary: StoreSummary) -> StoreSummary:
    """Fill ``summary``'s length statistics from an array of residue lengths."""
    arr = np.asarray(lengths, dtype=np.int64)
    stats = _LengthStats()
    if arr.size:
        stats.add(arr)
    stats.fill(summary)
    return summary


# --------------------------------------------------------------------------- writing
class _NpyAppender:
    """A 1-D ``.npy`` file written by appending; the header is fixed up on close."""

    def __init__(self, path: Path, descr: str) -> None:
        self.path = path
        self.descr = descr
        self.dtype = np.dtype(descr)
        self.count = 0
        self.fh: IO[bytes] = open(path, "wb")  # noqa: SIM115 -- closed in finish()
        self.fh.write(self._header(0))

    def _header(self, n: int) -> bytes:
        import io

        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": self.descr, "fortran_order": False, "shape": (n,)})
        head = buf.getvalue()
        if len(head) != _HEADER_LEN:  # pragma: no cover - only for absurd sizes
            raise StoreError(f"unexpected .npy header size {len(head)}")
        return head

    def append(self, arr: npt.NDArray[Any] | bytes | bytearray) -> None:
        if isinstance(arr, (bytes, bytearray)):
            self.fh.write(arr)
            self.count += len(arr) // self.dtype.itemsize
        else:
            a = np.ascontiguousarray(arr, dtype=self.dtype)
            self.fh.write(memoryview(a).cast("B"))
            self.count += a.size

    def append_npy(self, path: Path, count: int, *, skip: int = 0, shift: int = 0) -> None:
        """Append items ``skip:count`` of another 1-D ``.npy`` of ours (written by an
        :class:`_NpyAppender`, so with a header of the same length), each plus ``shift``."""
        with open(path, "rb") as src:
            src.seek(_HEADER_LEN + skip * self.dtype.itemsize)
            if shift:
                self.append(np.fromfile(src, dtype=self.dtype, count=count - skip) + shift)
                return
            self.fh.flush()
            left = (count - skip) * self.dtype.itemsize
            try:  # copied by the kernel, without passing through this process
                while left > 0:
                    n = os.copy_file_range(src.fileno(), self.fh.fileno(), left)
                    if n == 0:
                        raise StoreError(f"{path}: shorter than its {count} items")
                    left -= n
            except (AttributeError, OSError):  # no copy_file_range here: copy by hand
                shutil.copyfileobj(src, self.fh, 1 << 20)
        self.count += count - skip

    def finish(self, *, sync: bool = True) -> None:
        self.fh.flush()
        self.fh.seek(0)
        self.fh.write(self._header(self.count))
        self.fh.flush()
        if sync:
            os.fsync(self.fh.fileno())
        self.fh.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # e.g. a full disk, again, on the last flush
            self.fh.close()


_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _is_store(path: Path) -> bool:
    try:
        with open(path / META_FILE, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


#: The files a store directory holds; ``--force`` / ``overwrite=True`` replaces a
#: directory only when it holds nothing else.
STORE_FILES = frozenset((META_FILE, *_ARRAYS))


def _listing(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _enclosing_store(path: Path) -> Path | None:
    """The seqpad store that ``path`` (a directory) is or lies inside, if any."""
    for d in (path, *path.parents):
        if (d / META_FILE).is_file() and _is_store(d):
            return d
    return None


def _replaceable(p: Path) -> str | None:
    """Why the existing directory ``p`` must not be replaced by a new store, or None
    when it is empty or holds nothing but a seqpad store's own files."""
    try:
        entries = list(os.scandir(p))
    except OSError as e:
        return f"cannot be listed ({e.strerror or e})"
    if not entries:
        return None
    foreign = [e.name for e in entries
               if e.name not in STORE_FILES or e.is_dir(follow_symlinks=False)]
    if foreign:
        return (f"holds {_listing(foreign)}: not part of a seqpad store; refusing to "
                "replace it (nothing was deleted)")
    try:
        with open(p / META_FILE, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or \
            not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return (f"holds {_listing(e.name for e in entries)} but is not a valid seqpad store "
                f"(no readable {META_FILE} with format and format_version); refusing to "
                "replace it (nothing was deleted)")
    return None


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise :class:`StoreError` unless ``path`` may receive a new store; return the
    directory to write (``path``, or the store a symlink at ``path`` points to).

    A missing path is fine. An existing directory is replaced only with
    ``overwrite=True`` and only when it is empty or holds nothing but a seqpad store's
    own files (``meta.json`` with ``format`` and ``format_version``, and the arrays);
    anything else (a file, a directory with other content, a nested store) never, so
    that ``--force`` cannot delete data that is not a store. A symlink to such a
    directory is followed: the store it points to is replaced in place and the symlink
    kept. A store is never written inside another store.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise StoreError(f"{p}: parent directory {str(p.parent)!r} does not exist")
    target = p
    if p.is_symlink():
        if not p.exists():
            raise StoreError(f"{p}: is a symlink to a missing path "
                             f"({os.readlink(p)!r}); refusing to write through it")
        target = Path(os.path.realpath(p))
    outer = _enclosing_store(Path(os.path.realpath(target.parent)))
    if outer is not None:
        raise StoreError(f"{p}: lies inside the seqpad store {str(outer)!r}; a store cannot "
                         "hold another store (choose a path outside it)")
    if not target.exists():
        return target
    if not target.is_dir():
        raise StoreError(f"{p}: exists and is not a directory; refusing to replace it")
    why = _replaceable(target)
    if why is not None:
        shown = p if target == p else f"{p} (a symlink to {str(target)!r})"
        raise StoreError(f"{shown}: {why}")
    if not overwrite:
        raise StoreError(f"{p}: already exists (use --force / overwrite=True to replace it)")
    return target


class _Writer:
    def __init__(self, tmp: Path, tokenizer: Tokenizer, *, min_length: int,
                 max_length: int | None, truncate: bool, add_bos: bool, add_eos: bool) -> None:
        self.tok = tokenizer
        self.min_length = min_length
        self.max_length = max_length
        self.truncate = truncate
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.extra = int(add_bos) + int(add_eos)
        self.table = tokenizer.lookup_table.tobytes()  # for bytes.translate
        self.check = tokenizer.unknown != "unk"
        self.ids_descr = _ids_descr(tokenizer)
        self.ids_dtype = np.dtype(self.ids_descr)
        self.bos_id, self.eos_id = tokenizer._bos_eos(add_bos, add_eos)
        self.files = {name: _NpyAppender(tmp / name, self.ids_descr if name == "ids.npy" else d)
                      for name, d in _ARRAYS.items()}
        self.files["offsets.npy"].append(np.zeros(1, np.int64))
        self.files["name_offsets.npy"].append(np.zeros(1, np.int64))
        self.n_tokens = 0
        self.n_name_bytes = 0
        self.summary = StoreSummary(skipped=dict.fromkeys(SKIP_REASONS, 0))
        self.stats = _LengthStats()

    def write_batch(self, names: list[str], seqs: list[Any], seq_lens: npt.NDArray[np.int64],
                    batch_start: int, skipped_at: list[int], joined: str | None = None) -> None:
        """Encode and append one batch. ``seq_lens``: (n,) int64 lengths of ``seqs``;
        ``skipped_at``: sorted batch-relative indices of records dropped before this
        call (for error messages); ``joined``: ``"".join(seqs)`` when already known."""
        tok = self.tok
        body: npt.NDArray[np.unsignedinteger] | None = None
        lens: npt.NDArray[np.int64] | None = None
        bytewise = tok.is_bytewise
        if not bytewise and self.truncate and self.max_length is not None and \
                (seq_lens > self.max_length).any():
            # k-mers: cut the residues before encoding (lengths count residues)
            self.summary.truncated += int((seq_lens > self.max_length).sum())
            seqs = [x[: self.max_length] for x in seqs]
            seq_lens = np.minimum(seq_lens, self.max_length)
            joined = None
        res_lens = seq_lens  # residues per kept record (tokens differ for k-mers)
        if joined is not None or (seqs and isinstance(seqs[0], str)):
            try:
                raw: bytes | None = ("".join(seqs) if joined is None else joined).encode("ascii")
            except (UnicodeEncodeError, TypeError):
                raw = None
        else:
            try:
                raw = b"".join(seqs)
            except TypeError:
                raw = None
        if raw is not None and not bytewise:
            if len(raw) == int(seq_lens.sum()):
                encoded = tok._encode_joined(raw, seq_lens)
                if encoded is not None:
                    body, lens = encoded
        elif raw is not None:
            translated = raw.translate(self.table)  # one C pass: byte -> id
            if self.check and _INVALID_BYTE in translated:
                body = None
            else:
                body = np.frombuffer(translated, dtype=np.uint8)
                lens = seq_lens
        if body is None:  # some record has a symbol outside the alphabet: find it
            kept_names, kept_arrays, kept_res = [], [], []
            for k, (name, seq) in enumerate(zip(names, seqs, strict=True)):
                try:
                    kept_arrays.append(tok.encode(seq, record=name))
                except UnknownSymbolError as e:
                    if tok.unknown == "skip":
                        self.summary.skipped["unknown_symbol"] += 1
                        continue
                    j = k  # k-th kept record -> index among all records of the batch
                    for s in skipped_at:
                        if s <= j:
                            j += 1
                    e.record_index = batch_start + j  # type: ignore[attr-defined]
                    raise
                kept_names.append(name)
                kept_res.append(len(seq))
            names = kept_names
            lens = np.fromiter(map(len, kept_arrays), dtype=np.int64, count=len(kept_arrays))
            res_lens = np.array(kept_res, dtype=np.int64)
            body = np.concatenate(kept_arrays) if kept_arrays else np.zeros(0, self.ids_dtype)
        assert lens is not None
        n = len(names)
        if n == 0:
            return
        keep = lens
        if self.truncate and self.max_length is not None and (lens > self.max_length).any():
            keep = np.minimum(lens, self.max_length)
            self.summary.truncated += int((keep < lens).sum())
            res_lens = keep
        out_lens = keep + self.extra
        if self.extra or keep is not lens:
            out = np.empty(int(out_lens.sum()), dtype=self.ids_dtype)
            out_starts = np.zeros(n, dtype=np.int64)
            np.cumsum(out_lens[:-1], out=out_starts[1:])
            src_starts = np.zeros(n, dtype=np.int64)
            np.cumsum(lens[:-1], out=src_starts[1:])
            total_keep = int(keep.sum())
            keep_starts = np.zeros(n, dtype=np.int64)
            np.cumsum(keep[:-1], out=keep_starts[1:])
            within = np.arange(total_keep, dtype=np.int64) - np.repeat(keep_starts, keep)
            out[np.repeat(out_starts + int(self.add_bos), keep) + within] = \
                body[np.repeat(src_starts, keep) + within]
            if self.add_bos:
                out[out_starts] = self.bos_id
            if self.add_eos:
                out[out_starts + out_lens - 1] = self.eos_id
        else:
            out = body
        self.files["ids.npy"].append(out)
        ends = self.n_tokens + np.cumsum(out_lens)
        self.n_tokens = int(ends[-1])
        self.files["offsets.npy"].append(ends)
        # names: one encode for the whole batch when it is ASCII (the usual case)
        joined = "".join(names)
        blob = joined.encode("utf-8", "surrogateescape")
        if len(blob) == len(joined):
            name_lens = np.fromiter(map(len, names), dtype=np.int64, count=n)
        else:
            encoded = [s.encode("utf-8", "surrogateescape") for s in names]
            name_lens = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
        self.files["names.npy"].append(blob)
        name_ends = self.n_name_bytes + np.cumsum(name_lens)
        self.n_name_bytes = int(name_ends[-1])
        self.files["name_offsets.npy"].append(name_ends)
        s = self.summary
        s.records += n
        s.residues += int(res_lens.sum())
        s.tokens = self.n_tokens
        self.stats.add(res_lens)

    def absorb(self, part: Path, result: _PartResult) -> None:
        """Append the store piece a worker wrote into directory ``part``."""
        s, r = self.summary, result.summary
        n = r.records
        f = self.files
        f["ids.npy"].append_npy(part / "ids.npy", r.tokens)
        # offsets: the piece's own start at 0 is dropped; the rest are shifted
        f["offsets.npy"].append_npy(part / "offsets.npy", n + 1, skip=1, shift=self.n_tokens)
        f["names.npy"].append_npy(part / "names.npy", result.name_bytes)
        f["name_offsets.npy"].append_npy(part / "name_offsets.npy", n + 1, skip=1,
                                         shift=self.n_name_bytes)
        self.n_tokens += r.tokens
        self.n_name_bytes += result.name_bytes
        s.records += r.records
        s.truncated += r.truncated
        s.residues += r.residues
        s.tokens = self.n_tokens
        for k, v in r.skipped.items():
            s.skipped[k] = s.skipped.get(k, 0) + v
        self.stats.merge(result.stats)

    def sync_data(self) -> None:
        """Flush the files written so far to disk (fdatasync)."""
        for f in self.files.values():
            f.fh.flush()
            _fdatasync(f.fh.fileno())

    def finish(self, meta: dict[str, Any], *, sync: bool = True) -> StoreSummary:
        for f in self.files.values():
            f.finish(sync=sync)
        self.stats.fill(self.summary)
        self.summary.skipped = {k: v for k, v in self.summary.skipped.items() if v}
        meta["summary"] = self.summary.to_dict()
        meta["n_records"] = self.summary.records
        meta["n_tokens"] = self.n_tokens
        meta["n_name_bytes"] = self.n_name_bytes
        return self.summary

    def abort(self) -> None:
        for f in self.files.values():
            f.abort()


def write_store(
    path: str | os.PathLike[str],
    records: Iterable[tuple[str, str | bytes]],
    tokenizer: Tokenizer,
    *,
    min_length: int = 1,
    max_length: int | None = None,
    truncate: bool = False,
    add_bos: bool = False,
    add_eos: bool = False,
    overwrite: bool = False,
    batch_residues: int = 1 << 20,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
) -> StoreSummary:
    """Tokenize ``records`` and write them as a store at ``path``, atomically.

    Args:
        path: the store directory to create.
        records: iterable of ``(name, sequence)``; e.g. :func:`seqpad.read_fasta`.
        tokenizer: the :class:`~seqpad.tokenizer.Tokenizer`; its ``unknown`` policy
            decides what a symbol outside the alphabet does: ``"error"`` raises
            :class:`~seqpad.tokenizer.UnknownSymbolError` (with ``.record`` and an extra
            ``.record_index``, the 0-based index in ``records``), ``"unk"`` stores
            ``unk_id``, ``"skip"`` drops the record and counts it as ``unknown_symbol``.
        min_length: records with fewer residues are skipped (``empty`` when 0,
            ``too_short`` otherwise). Default 1: empty records are skipped and counted;
            pass 0 to keep them.
        max_length: records with more residues are dropped (``too_long``), or cut to
            their first ``max_length`` residues with ``truncate=True``. Lengths count
            residues, not bos/eos.
        add_bos / add_eos: store ``bos_id`` / ``eos_id`` around every record (they
            count in ``TokenizedDataset.lengths``).
        overwrite: replace an existing store at ``path``: only a directory holding
            nothing but a seqpad store's own files (or nothing); a symlink to one is
            followed and the store it points to replaced (see :func:`check_output`).
        batch_residues: residues encoded per vectorised batch (memory use is a small
            multiple of this, whatever the input size).
        progress: called with the number of records read so far, once per batch.
        jobs: processes that parse and encode at once. With ``jobs > 1`` and records
            from :func:`seqpad.read_fasta` (a file, not stdin) of at least
            ``PARALLEL_MIN_BYTES``, the file is cut into pieces at record starts that
            worker processes tokenize; the pieces are joined in order, so the store is
            byte for byte the one ``jobs=1`` writes. If any piece fails, the whole file
            is written again in this process, which raises the error a one-process run
            raises. Other iterables are always written in this process.

    Returns:
        :class:`StoreSummary`: records written, skipped by reason, truncated,
        residues, length min / median / max.

    Raises:
        StoreError: ``path`` exists (without ``overwrite``), is not a store, holds files
            that are not the store's, or lies inside another store.
        ValueError: bad length options (``truncate=True`` without ``max_length``).
        UnknownSymbolError: under ``unknown="error"``. Nothing is left on disk.
        OSError: writing failed (a full disk, no permission); ``filename`` is ``path``
            as given, not the temporary directory.
    """
    if min_length < 0:
        raise ValueError("min_length must be >= 0")
    if max_length is not None and max_length < max(min_length, 1):
        raise ValueError("max_length must be >= max(min_length, 1)")
    if truncate and max_length is None:
        raise ValueError("truncate=True needs max_length (the length to cut records to)")
    target = check_output(path, overwrite=overwrite)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:  # e.g. a read-only directory: name the output, not the temporary
        raise _output_error(e, path) from e
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a store is a normal directory
    writer: _Writer | None = None
    try:
        options: dict[str, Any] = {"min_length": min_length, "max_length": max_length,
                                   "truncate": truncate, "add_bos": add_bos, "add_eos": add_eos}
        writer = _Writer(tmp, tokenizer, **options)
        chunks = _chunks_of(records, jobs)
        if chunks is not None:
            try:
                n_read = _write_parallel(writer, tmp, chunks, jobs, records, options,
                                         batch_residues=batch_residues, progress=progress)
            except _PieceFailed as failed:
                # Bad input in some piece (or a worker that died): start again in this
                # process, which stops at the first problem with its file, line and record
                # exactly as a one-process run does (the input is a file: it can be read
                # again). Bad input raises ValueError; anything else is worth a word.
                if not isinstance(failed.cause, ValueError):
                    warnings.warn(f"seqpad: worker processes failed ({failed.cause!r}); "
                                  "writing the store in this process instead",
                                  RuntimeWarning, stacklevel=2)
                writer.abort()
                writer = None
                for child in tmp.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                writer = _Writer(tmp, tokenizer, **options)
                chunks = None
            else:
                written = getattr(records, "_seqpad_chunks_written", None)
                if written is not None:
                    written(n_read)
        if chunks is None:
            _write_records(writer, records, batch_residues, progress)
        meta: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": _format_version(tokenizer),
            "store_id": uuid.uuid4().hex,
            "tokenizer": tokenizer.to_dict(),
            "add_bos": add_bos,
            "add_eos": add_eos,
            "options": {"min_length": min_length, "max_length": max_length,
                        "truncate": truncate},
            "files": {name: {"dtype": f.descr} for name, f in writer.files.items()},
        }
        summary = writer.finish(meta)
        for name, f in writer.files.items():
            meta["files"][name]["shape"] = [f.count]
        writer = None
        # meta.json last: a directory without it never opens as a store.
        with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _install(tmp, target, overwrite=overwrite)
    except BaseException as e:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and _is_output_error(e, tmp, target):
            raise _output_error(e, path) from e
        raise
    return summary


#: Errors that only writing can cause: raised without a file name by ``write``.
_WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS")
                          if hasattr(errno, n))


def _is_output_error(e: OSError, tmp: Path, target: Path) -> bool:
    """Whether ``e`` came from writing the store (not from reading the input)."""
    names = [f for f in (e.filename, getattr(e, "filename2", None))
             if isinstance(f, (str, bytes, os.PathLike))]
    if not names:
        return e.errno in _WRITE_ERRNOS
    for f in names:
        f = Path(os.fsdecode(f))
        if f in (target, tmp) or tmp in f.parents or (
                f.parent == target.parent and f.name.startswith(f".{target.name}.")):
            return True
    return False


def _output_error(e: OSError, path: str | os.PathLike[str]) -> OSError:
    """``e`` about the output ``path`` as given, not the temporary directory."""
    return OSError(e.errno, e.strerror or str(e), os.fspath(path))


def _write_records(writer: _Writer, records: Iterable[tuple[str, Any]], batch_residues: int,
                   progress: Callable[[int], None] | None) -> int:
    """Filter, encode and append ``records`` batch by batch; returns how many were read."""
    skipped = writer.summary.skipped
    min_length, max_length = writer.min_length, writer.max_length
    batch_start = 0  # index in ``records`` of the batch's first record
    drop_long = max_length is not None and not writer.truncate
    batches = records._seqpad_batches(batch_residues) \
        if hasattr(records, "_seqpad_batches") else _batched(records, batch_residues)
    for names, seqs, joined in batches:
        n = len(seqs)
        lens = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
        skipped_at: list[int] = []
        short = lens < min_length
        bad = short | (lens > max_length) if drop_long else short
        if bad.any():
            empty = int((lens[short] == 0).sum())
            skipped["empty"] += empty
            skipped["too_short"] += int(short.sum()) - empty
            skipped["too_long"] += int(bad.sum() - short.sum())
            skipped_at = np.flatnonzero(bad).tolist()
            keep = np.flatnonzero(~bad).tolist()
            names = [names[i] for i in keep]
            seqs = [seqs[i] for i in keep]
            lens = lens[~bad]
            joined = None
        writer.write_batch(names, seqs, lens, batch_start, skipped_at, joined)
        batch_start += n
        if progress is not None:
            progress(batch_start)
    if progress is not None:
        progress(batch_start)
    return batch_start


# ------------------------------------------------------------------ several processes
#: Inputs smaller than this (bytes on disk) are written by one process whatever ``jobs``.
PARALLEL_MIN_BYTES = 8 << 20


@dataclass
class _PartResult:
    """What a worker wrote into its piece directory."""

    read: int  # records read, written or skipped
    name_bytes: int
    summary: StoreSummary
    stats: _LengthStats


def _chunks_of(records: Any, jobs: int) -> Iterator[FastaChunk] | None:
    """The pieces ``records`` can be cut into for ``jobs`` processes, or None when they
    are to be written here (one job, not FASTA files, stdin, a small input)."""
    if jobs <= 1 or not hasattr(records, "_seqpad_chunks"):
        return None
    chunks: Iterator[FastaChunk] | None = records._seqpad_chunks(jobs, PARALLEL_MIN_BYTES)
    return chunks


class _PieceFailed(Exception):
    """A piece could not be cut or written (``cause``): the caller starts over in one
    process. Errors of this process's own work (appending pieces, a progress callback)
    are not wrapped: they end the write as they would with one process."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


def _worker_init(parent: int | None) -> None:
    # Ctrl-C and SIGTERM are the parent's business: it stops the workers and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform == "linux":
        # If the parent is killed outright (SIGKILL, the OOM killer), take this worker
        # with it: it would otherwise wait for work forever, holding the temporary files.
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if parent is not None and os.getppid() != parent:  # died before prctl took effect
            os._exit(1)
    gc.disable()  # no reference cycles are made; the collector would rescan the batches


def _write_piece(chunk: FastaChunk, part: str, tokenizer: dict[str, Any],
                 options: dict[str, Any], batch_residues: int) -> _PartResult:
    """In a worker: tokenize one piece of a FASTA file into the directory ``part``."""
    out = Path(part)
    out.mkdir()
    writer = _Writer(out, Tokenizer.from_dict(tokenizer), **options)
    try:
        with chunk.open() as reader:
            read = _write_records(writer, reader, batch_residues, None)
        writer.finish({}, sync=False)
    except BaseException:
        writer.abort()
        raise
    return _PartResult(read, writer.n_name_bytes, writer.summary, writer.stats)


def _mp_context() -> Any:
    import multiprocessing as mp

    # fork starts workers at once, with seqpad and Biopython already imported; it is
    # safe only while this process runs no other thread (a lock another thread holds
    # would stay held in the worker). Otherwise a fresh interpreter per worker.
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _write_parallel(writer: _Writer, tmp: Path, chunks: Iterator[FastaChunk], jobs: int,
                    records: Any, options: dict[str, Any], *, batch_residues: int,
                    progress: Callable[[int], None] | None) -> int:
    """Tokenize ``chunks`` in up to ``jobs`` worker processes with ``writer``'s tokenizer
    and ``options``, appending each piece to ``writer`` in order as soon as it and those
    before it are done; returns the number of records read.

    Raises :class:`_PieceFailed` when cutting or writing a piece fails."""
    from concurrent.futures import ProcessPoolExecutor  # only here: not at start-up

    def pieces() -> Iterator[FastaChunk]:
        try:
            yield from chunks
        except Exception as e:  # an unreadable file, truncated gzip, ...
            raise _PieceFailed(e) from e

    todo = pieces()
    head = list(itertools.islice(todo, jobs + 1))  # no more workers than pieces
    config = writer.tok.to_dict()
    done = getattr(records, "_seqpad_chunk_done", None)
    context = _mp_context()
    # the parent a worker sees: this process, except under forkserver (the server)
    parent = None if context.get_start_method() == "forkserver" else os.getpid()
    pool = ProcessPoolExecutor(max(1, min(jobs, len(head))), mp_context=context,
                               initializer=_worker_init, initargs=(parent,))
    window: deque[tuple[FastaChunk, Path, Future[_PartResult]]] = deque()
    n_read = 0
    finished = False
    try:
        for k, chunk in enumerate(itertools.chain(head, todo, (None,))):
            if chunk is not None:
                part = tmp / f".piece-{k}"
                try:
                    future = pool.submit(_write_piece, chunk, str(part), config, options,
                                         batch_residues)
                except Exception as e:  # BrokenProcessPool: a worker died
                    raise _PieceFailed(e) from e
                window.append((chunk, part, future))
            # keep every worker busy with one piece queued behind it; memory stays
            # bounded (a gzip file's pieces are held here until a worker takes them)
            while window and (chunk is None or len(window) > jobs + 1):
                piece, part, future = window.popleft()
                try:
                    result = future.result()
                except Exception as e:  # bad input in the piece, or a worker died
                    raise _PieceFailed(e) from e
                writer.absorb(part, result)
                shutil.rmtree(part)
                # while the workers parse on, this process has nothing else to do: write
                # the appended data to disk now, so the fsync at the end finds little left
                writer.sync_data()
                n_read += result.read
                if done is not None:
                    done(piece)
                if progress is not None:
                    progress(n_read)
        finished = True
    finally:
        if not finished:
            # an error, Ctrl-C or SIGTERM: stop the workers now, not after their pieces
            # (``terminate_workers`` is public only from Python 3.14)
            for _, _, future in window:
                future.cancel()
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                if proc.is_alive():
                    proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
    return n_read


def _batched(records: Iterable[tuple[str, Any]], limit: int
             ) -> Iterator[tuple[list[str], list[Any], str | None]]:
    """Records in lists of about ``limit`` residues (each record counts one more)."""
    limit = max(int(limit), 1)
    names: list[str] = []
    seqs: list[Any] = []
    pending = 0
    for name, seq in records:
        names.append(name)
        seqs.append(seq)
        pending += len(seq) + 1
        if pending >= limit:
            yield names, seqs, None
            names, seqs, pending = [], [], 0
    if names:
        yield names, seqs, None


def _install(tmp: Path, target: Path, *, overwrite: bool) -> None:
    """Rename the finished temporary store into place (replacing an old one)."""
    check_output(target, overwrite=overwrite)  # re-check: something may have appeared
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "store")
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old / "store", target)  # put the old store back
            raise
        _remove_old_store(old)
    else:
        os.rename(tmp, target)
    _fsync_dir(target.parent)


def _remove_old_store(old: Path) -> None:
    """Delete a replaced store renamed aside into ``old``: its own files only, so that
    a file someone put there since it was checked is kept (with a warning), never lost."""
    for name in STORE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(old / "store" / name)
    try:
        os.rmdir(old / "store")
        os.rmdir(old)
    except OSError:
        warnings.warn(f"seqpad: the replaced store held files added while it was being "
                      f"replaced; they were kept in {str(old / 'store')!r}",
                      RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------- reading
def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a store's ``meta.json`` (raises :class:`StoreError`)."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such store")
    if not p.is_dir():
        raise StoreError(f"{p}: not a seqpad store (not a directory)")
    try:
        with open(p / META_FILE, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{p}: not a complete seqpad store (no {META_FILE}; an "
                         "interrupted write or another kind of directory)") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{p}: unreadable {META_FILE} ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise StoreError(f"{p}: not a seqpad store ({META_FILE} has no "
                         f"format={FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise StoreError(f"{p}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise StoreError(f"{p}: store format version {version} is newer than this seqpad "
                         f"reads (version {FORMAT_VERSION}); upgrade seqpad")
    for key in ("n_records", "n_tokens", "n_name_bytes", "tokenizer"):
        if key not in meta:
            raise StoreError(f"{p}: {META_FILE} lacks {key!r}")
    for key in ("n_records", "n_tokens", "n_name_bytes"):
        v = meta[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise StoreError(f"{p / META_FILE}: {key} is {v!r}, not a count; the store is "
                             "corrupt")
    return meta


def _tokenizer_of(path: Path, meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer ``meta.json`` records, or :class:`StoreError` with the reason."""
    config = meta["tokenizer"]
    try:
        if not isinstance(config, dict):
            raise TypeError(f"{json.dumps(config)} instead of an object")
        return Tokenizer.from_dict(config)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        reason = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise StoreError(f"{path / META_FILE}: damaged 'tokenizer' section ({reason}); the "
                         "store cannot be read") from None


def _store_identity(meta: dict[str, Any]) -> str:
    """What tells this store from one written over it later: the ``store_id`` written
    into ``meta.json``, or for stores from before it a hash of the parsed ``meta.json``."""
    sid = meta.get("store_id")
    if isinstance(sid, str) and sid:
        return sid
    blob = json.dumps(meta, sort_keys=True, ensure_ascii=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:32]


def _check_offsets(path: Path, name: str, offsets: npt.NDArray[np.int64], size: int,
                   data: str) -> npt.NDArray[np.int64]:
    """``(N,)`` differences of ``offsets`` (record lengths), after checking in one
    vectorised pass that they start at 0, never decrease and end at ``size`` (so that
    every record is an in-bounds slice and records never overlap)."""
    off = np.asarray(offsets)
    if len(off) == 0:
        raise StoreError(f"{path / name}: empty; the store is corrupt")
    lengths = np.diff(off)
    if int(off[0]) == 0 and int(off[-1]) == size and (len(lengths) == 0 or lengths.min() >= 0):
        return lengths
    # something is wrong: say what, and where it first goes wrong
    if int(off[0]) != 0:
        raise StoreError(f"{path / name}: record 0 starts at {int(off[0])}, not 0; the store "
                         "is corrupt")
    bad = (lengths < 0) | (off[1:] > size)
    if bad.any():
        i = int(np.argmax(bad))
        start, stop = int(off[i]), int(off[i + 1])
        why = f"ends at {stop}, past the end of {data} ({size})" if stop > size else \
            f"ends at {stop}, before it starts ({start}): offsets decrease"
        raise StoreError(f"{path / name}: record {i} {why}; the store is corrupt")
    raise StoreError(f"{path / name}: ends at {int(off[-1])}, but {data} holds {size}; the "
                     "store is corrupt")


def _load(path: Path, name: str, descr: str, n: int) -> npt.NDArray[Any]:
    f = path / name
    try:
        if n == 0:
            arr = np.load(f, allow_pickle=False)
        else:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing {name}; the store is incomplete") from None
    except EOFError:  # numpy's word for an empty or cut-off header
        raise StoreError(f"{f}: empty or truncated, not a valid .npy file; the store is "
                         "corrupt") from None
    except Exception as e:  # OSError, ValueError (a bad header), anything numpy raises
        raise StoreError(f"{f}: not a valid .npy file ({e}); the store is corrupt") from None
    if arr.dtype != np.dtype(descr) or arr.shape != (n,):
        raise StoreError(f"{path}: {name} has dtype {arr.dtype} shape {arr.shape}, expected "
                         f"{np.dtype(descr)} ({n},); the store is corrupt")
    return arr


class StoreReader:
    """A store written by :func:`write_store` / ``seqpad tokenize`` (torch-free).

    :class:`TokenizedDataset` is this plus ``torch.utils.data.Dataset``; use it with
    PyTorch. This base exists so that ``seqpad info`` / ``seqpad tokenize`` need not
    import torch.

    ``ds[i]`` is the 1-D ids of record i (``uint8``; ``uint16`` / ``uint32`` for k-mer
    vocabularies over 255 ids: ``tokenizer.ids_dtype``) (a read-only view into the
    memory-mapped file, O(1)); with ``with_names=True`` it is ``(name, ids)``.
    Opening reads ``meta.json`` (the tokenizer is rebuilt), the arrays' headers and
    ``offsets.npy`` (checked in one vectorised pass that also gives ``lengths``); a damaged
    store raises :class:`StoreError` naming the file. The dataset pickles without its memory
    maps (DataLoader workers reopen them lazily, and raise :class:`StoreError` if the store
    at ``path`` was replaced since it was opened).

    Attributes:
        path: the store directory.
        meta: the parsed ``meta.json``.
        add_bos / add_eos: whether records carry bos/eos ids.
    """

    def __init__(self, path: str | os.PathLike[str], *, with_names: bool = False) -> None:
        self.path = Path(path)
        self.with_names = with_names
        self.meta = read_meta(self.path)
        self.add_bos = bool(self.meta.get("add_bos", False))
        self.add_eos = bool(self.meta.get("add_eos", False))
        self._n = int(self.meta["n_records"])
        self._arrays: dict[str, npt.NDArray[Any]] | None = None
        self._names: list[str] | None = None
        self._lengths: npt.NDArray[np.int64] | None = None
        self._offsets_checked = False
        self._names_checked = False
        # validate now, so errors surface at construction: the tokenizer, the arrays
        self._tokenizer: Tokenizer | None = _tokenizer_of(self.path, self.meta)
        self._ids_descr = _ids_descr(self._tokenizer)
        self._store_id = _store_identity(self.meta)  # checked whenever the files are reopened
        self._open()

    # ------------------------------------------------------------------ files
    def _open(self) -> dict[str, npt.NDArray[Any]]:
        if self._arrays is None:
            m = self.meta
            sizes = {"ids.npy": int(m["n_tokens"]), "offsets.npy": self._n + 1,
                     "names.npy": int(m["n_name_bytes"]), "name_offsets.npy": self._n + 1}
            reopen = self._offsets_checked  # e.g. in a DataLoader worker, maybe much later
            try:
                arrays = {name: _load(self.path, name, self._ids_descr if name == "ids.npy"
                                      else d, sizes[name])
                          for name, d in _ARRAYS.items()}
            except StoreError:
                if reopen:
                    self._check_identity()  # a store replaced under us is not "corrupt"
                raise
            if reopen:
                # the arrays just mapped must be those of the store this reader was
                # opened on, not of one written over it since (same path, new files)
                self._check_identity()
            else:
                # first open: one vectorised pass over the offsets checks them and gives
                # the lengths; name offsets: their ends now, in full when first used
                self._lengths = _check_offsets(
                    self.path, "offsets.npy", arrays["offsets.npy"], sizes["ids.npy"],
                    "ids.npy").astype(np.int64, copy=False)
                self._offsets_checked = True
            o = arrays["name_offsets.npy"]
            if int(o[0]) != 0 or int(o[-1]) != sizes["names.npy"]:
                _check_offsets(self.path, "name_offsets.npy", o, sizes["names.npy"],
                               "names.npy")
            self._arrays = arrays
        return self._arrays

    def _check_identity(self) -> None:
        """Raise :class:`StoreError` when the store at ``path`` is no longer the one this
        reader was opened on (replaced with ``--force`` / ``overwrite=True``, or removed)."""
        try:
            now: str | None = _store_identity(read_meta(self.path))
        except StoreError:
            now = None
        if now != self._store_id:
            raise StoreError(f"{self.path}: the store was replaced (or removed) since the "
                             "dataset was opened; its files no longer match the records, "
                             "lengths and tokenizer read then. Open it again.")

    def _name_offsets(self) -> npt.NDArray[np.int64]:
        a = self._open()
        if not self._names_checked:
            _check_offsets(self.path, "name_offsets.npy", a["name_offsets.npy"],
                           int(self.meta["n_name_bytes"]), "names.npy")
            self._names_checked = True
        return a["name_offsets.npy"]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # memory maps are reopened in the receiving process
        state["_lengths"] = state["_names"] = None  # O(N) caches: rebuilt there if used
        return state

    # -------------------------------------------------------------- Dataset API
    def __len__(self) -> int:
        return self._n

    def _index(self, i: int) -> int:
        try:
            j = operator.index(i)  # ints, numpy / torch integers; not 1.0 or "1"
        except TypeError:
            raise TypeError(f"indices must be integers, not {type(i).__name__}") from None
        if j < 0:
            j += self._n
        if not 0 <= j < self._n:
            raise IndexError(f"record index {i} out of range for {self._n} records")
        return j

    def ids(self, i: int) -> npt.NDArray[np.unsignedinteger]:
        """The ids of record ``i`` (read-only memmap view)."""
        a = self._open()
        j = self._index(i)
        off = a["offsets.npy"]
        return a["ids.npy"][int(off[j]): int(off[j + 1])]

    def name(self, i: int) -> str:
        """The name of record ``i``."""
        a = self._open()
        j = self._index(i)
        off = self._name_offsets()
        return bytes(a["names.npy"][int(off[j]): int(off[j + 1])]).decode(
            "utf-8", "surrogateescape")

    def __getitem__(self, i: int) -> Any:
        if self.with_names:
            return self.name(i), self.ids(i)
        return self.ids(i)

    # ------------------------------------------------------------- whole-store
    @property
    def names(self) -> list[str]:
        """All record names, in order (decoded on first access)."""
        if self._names is None:
            a = self._open()
            blob = bytes(a["names.npy"])
            off = np.asarray(self._name_offsets()).tolist()
            self._names = [blob[s:e].decode("utf-8", "surrogateescape")
                           for s, e in itertools.pairwise(off)]
        return self._names

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """``(N,)`` int64: ids per record, bos/eos included."""
        if self._lengths is None:  # computed (and checked) when the files are first opened
            a = self._open()
            if self._lengths is None:  # unpickled: the offsets were checked before
                self._lengths = np.diff(np.asarray(a["offsets.npy"])).astype(np.int64)
        return self._lengths

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the store was written with (rebuilt from ``meta.json``)."""
        if self._tokenizer is None:
            self._tokenizer = _tokenizer_of(self.path, self.meta)
        return self._tokenizer

    def summary(self) -> StoreSummary:
        """The summary recorded at write time, with length statistics recomputed from
        the stored offsets."""
        raw = self.meta.get("summary")
        raw = raw if isinstance(raw, dict) else {}  # informative only: a damaged one is
        skipped = raw.get("skipped")  # dropped rather than failing
        s = StoreSummary(
            skipped={k: v for k, v in skipped.items() if isinstance(v, int)}
            if isinstance(skipped, dict) else {},
            truncated=raw["truncated"] if isinstance(raw.get("truncated"), int) else 0)
        s.records = self._n
        s.tokens = int(self.meta["n_tokens"])
        residues = self.lengths - (int(self.add_bos) + int(self.add_eos))
        s.residues = int(residues.sum())
        s.length_min = s.length_median = s.length_max = None
        return summarize_lengths(residues, s)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, records={self._n}, "
                f"tokens={self.meta['n_tokens']}, tokenizer={self.tokenizer!r})")


def _dataset_class() -> type:
    import torch.utils.data

    class TokenizedDataset(StoreReader, torch.utils.data.Dataset):  # type: ignore[type-arg]
        __doc__ = _DATASET_DOC

    TokenizedDataset.__module__ = __name__
    TokenizedDataset.__qualname__ = "TokenizedDataset"
    return TokenizedDataset


_DATASET_DOC = """A store written by :func:`write_store` / ``seqpad tokenize``, as a
``torch.utils.data.Dataset``.

``ds[i]`` is the 1-D ids of record i (``uint8``; ``uint16`` / ``uint32`` for k-mer
    vocabularies over 255 ids: ``tokenizer.ids_dtype``) (a read-only view into the
memory-mapped file, O(1)); with ``with_names=True`` it is ``(name, ids)``.
Opening reads ``meta.json`` (the tokenizer is rebuilt), the arrays' headers and
``offsets.npy`` (checked in one vectorised pass that also gives ``lengths``); a damaged
store raises :class:`StoreError` naming the file. The dataset pickles without its memory
maps (DataLoader workers reopen them lazily, and raise :class:`StoreError` if the store
at ``path`` was replaced since it was opened).

Args:
    path: the store directory.
    with_names: make ``ds[i]`` return ``(name, ids)``.

Attributes:
    names: list of record names; lengths: ``(N,)`` int64 ids per record (bos/eos
    included); tokenizer: the :class:`~seqpad.tokenizer.Tokenizer` it was written with;
    add_bos / add_eos; meta: the parsed ``meta.json``.
"""

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch.utils.data

    from seqpad.fasta import FastaChunk

    class TokenizedDataset(StoreReader, torch.utils.data.Dataset):  # type: ignore[type-arg]
        ...
else:
    def __getattr__(name: str) -> Any:
        # Created on first use, so that importing seqpad.store (and the CLI) does not
        # import torch; ``from seqpad.store import TokenizedDataset`` works as usual.
        if name == "TokenizedDataset":
            cls = _dataset_class()
            globals()["TokenizedDataset"] = cls
            return cls
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
