"""FASTA reading: plain or gzip files, or stdin, streamed in constant memory.

Records are parsed by Biopython's :func:`Bio.SeqIO.FastaIO.SimpleFastaParser`; this
module only feeds it lines and checks what Biopython does not (binary data, text
before the first header, truncated gzip), naming the file and line of each problem.
Every edge-case decision is listed in ``docs/fasta.md``.

>>> for name, seq in read_fasta("proteins.fasta.gz"):  # doctest: +SKIP
...     print(name, len(seq))
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import itertools
import os
import re
import signal
import stat
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import IO, Any

from Bio.SeqIO.FastaIO import SimpleFastaParser

__all__ = ["FastaChunk", "FastaFormatError", "FastaReader", "chunk_bytes", "plan_chunks", "read_fasta"]

_first = itemgetter(0)
_NONE = itertools.repeat(None)
_ONE = itertools.repeat(1)

#: Bytes read from the (possibly compressed) input per block.
BLOCK_SIZE = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
)


class FastaFormatError(ValueError):
    """The input is not readable FASTA.

    Attributes:
        path: the file as given (``"-"`` / ``"<stdin>"`` for standard input).
        line: 1-based line number where the problem is, or None when unknown.
        record: name of the record being read, or None when unknown.
        reason: the bare message, without file and line.
    """

    def __init__(self, path: str, line: int | None, reason: str,
                 record: str | None = None) -> None:
        self.path = path
        self.line = line
        self.record = record
        self.reason = reason
        parts = [path]
        if line is not None:
            parts.append(f"line {line}")
        if record is not None:
            parts.append(f"record {record!r}")
        parts.append(reason)
        super().__init__(": ".join(parts))

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes
        return (type(self), (self.path, self.line, self.reason, self.record), self.__dict__)


def _display(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    return "<stdin>" if p == "-" else p


class _Range(io.RawIOBase):
    """Bytes ``[start, stop)`` of an open binary file, as a raw stream."""

    def __init__(self, fileio: Any, start: int, stop: int) -> None:
        super().__init__()
        self._f = fileio
        self._left = max(stop - start, 0)
        fileio.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf)[: self._left]
        n = (self._f.readinto(view) or 0) if len(view) else 0
        if n == 0 and self._left > 0:  # never take a short piece for a whole one
            raise OSError(errno.EIO, f"file ended {self._left} bytes early")
        self._left -= n
        return n


class _Feed:
    """Bytes ``[start, stop)`` of a file through a pipe, written by a thread with
    ``os.splice`` (in the kernel: no copy through Python), read as a plain ``FileIO``.

    Why: ``TextIOWrapper`` checks that its stream is open on every line, which is cheap
    only for a ``BufferedReader`` over an exact ``FileIO``; through :class:`_Range` the
    same lines cost twice as much. A failure of the feeding thread other than the reader
    going away is raised by :meth:`close`, so a short piece is never taken for a whole one.
    """

    def __init__(self, fd: int, start: int, stop: int) -> None:
        import threading

        self.error: BaseException | None = None
        r, w = os.pipe()
        self.reader = io.FileIO(r, "rb")  # owns r from here on
        src = -1
        lock = threading.Lock()
        state = {"began": False, "cancelled": False}  # who closes w and src: the thread,
        # once it has begun; this constructor, if it fails before that

        def feed() -> None:
            with lock:
                if state["cancelled"]:
                    return
                state["began"] = True
            try:
                # SIGPIPE at its default action (a program may reset it) would kill the
                # process when the reader stops early: take EPIPE instead.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
                _feed_range(src, w, start, stop - start)
            except BrokenPipeError:
                pass  # the reader stopped early (an error there): nothing to report
            except BaseException as e:  # handed to close(): never a short piece
                self.error = e
            finally:
                os.close(w)
                os.close(src)

        try:
            with contextlib.suppress(OSError, AttributeError):
                import fcntl  # Linux only, as os.splice

                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)  # type: ignore[attr-defined]
            src = os.dup(fd)
            self._thread = threading.Thread(target=feed, name="seqpad-feed", daemon=True)
            self._thread.start()
        except BaseException:  # e.g. no fd left, or Ctrl-C while the thread starts
            with lock:
                began = state["began"]
                state["cancelled"] = True
            self.reader.close()  # a thread that began stops on EPIPE and closes the rest
            if not began:
                os.close(w)
                if src >= 0:
                    os.close(src)
            raise

    def close(self) -> None:
        self.reader.close()  # a feeder still writing gets EPIPE and ends
        self._thread.join()
        if self.error is not None:
            raise self.error


def _feed_range(src: int, w: int, offset: int, count: int) -> None:
    """Write ``count`` bytes of ``src`` from ``offset`` into the pipe ``w``."""
    while count > 0:
        try:
            n = os.splice(src, w, count, offset_src=offset)  # type: ignore[attr-defined]
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            data = os.pread(src, min(count, 1 << 20), offset)  # no splice for this file
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        if n == 0:
            raise OSError(errno.EIO, f"file ended {count} bytes early")
        offset += n
        count -= n


class _Source:
    """Binary input: gzip detection by magic bytes, byte counting, first checks.

    ``byte_range`` reads only bytes ``[start, stop)`` of a plain file, and ``data`` an
    in-memory piece of a file: the two kinds of :class:`FastaChunk`.
    """

    def __init__(self, path: str | os.PathLike[str], stdin: IO[bytes] | None = None, *,
                 byte_range: tuple[int, int] | None = None, data: bytes | None = None
                 ) -> None:
        self.display = _display(path)
        self.is_stdin = os.fspath(path) == "-" or data is not None
        #: read once, never re-read or cut into pieces (stdin, a pipe, a device)
        self.is_stream = self.is_stdin
        self._fileio: Any = None
        self._final: int | None = None
        if data is not None:  # a decompressed piece: never gzip-detected again
            self.size: int | None = None
            self._buffered: Any = io.BufferedReader(io.BytesIO(data), BLOCK_SIZE)
            self.compressed = False
            self.binary: Any = self._buffered
            return
        if self.is_stdin:
            raw: Any = stdin if stdin is not None else sys.stdin.buffer
            self.size = None
            buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw, BLOCK_SIZE)
        else:
            try:
                self._fileio = open(path, "rb", buffering=0)  # noqa: SIM115 -- see close()
            except IsADirectoryError:
                raise FastaFormatError(self.display, None, "is a directory, not a FASTA file") \
                    from None
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory",
                                        self.display) from None
            except OSError as e:
                raise FastaFormatError(self.display, None, e.strerror or str(e)) from None
            try:
                st = os.fstat(self._fileio.fileno())
            except OSError:
                st = None
            self.size = st.st_size if st is not None else None
            if st is not None and not stat.S_ISREG(st.st_mode):
                # a named pipe (``<(zcat a.fa.gz)``, ``/dev/stdin``) or a character
                # device: a stream, read once from start to end, like stdin
                self.is_stream = True
                self.size = None
            if byte_range is not None and hasattr(os, "splice"):
                self._feed = _Feed(self._fileio.fileno(), *byte_range)
                buffered = io.BufferedReader(self._feed.reader, BLOCK_SIZE)
            elif byte_range is not None:
                buffered = io.BufferedReader(_Range(self._fileio, *byte_range), BLOCK_SIZE)
            else:
                buffered = io.BufferedReader(self._fileio, BLOCK_SIZE)
        self._buffered = buffered
        magic = buffered.peek(8)[:8]
        self.compressed = magic.startswith(_GZIP_MAGIC)
        for sig, kind in _UNSUPPORTED_MAGIC:
            if magic.startswith(sig):
                self.close()
                raise FastaFormatError(
                    self.display, 1,
                    f"{kind}-compressed input is not supported; decompress it first "
                    "(plain and gzip FASTA are read directly)",
                )
        self.binary = gzip.GzipFile(fileobj=buffered, mode="rb") if self.compressed \
            else buffered

    def same_file(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` still names the file this source has open."""
        if self._fileio is None or self._fileio.closed:
            return False
        try:
            a, b = os.fstat(self._fileio.fileno()), os.stat(path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    @property
    def bytes_read(self) -> int | None:
        """Bytes taken from the file (compressed for gzip); None when not known (pipes)."""
        if self._fileio is None:
            return None
        if self._fileio.closed:
            return self._final
        try:
            return int(self._fileio.tell())
        except (OSError, ValueError):
            return None

    def text(self) -> Iterator[str]:
        """Lines of decoded text (universal newlines; undecodable bytes kept as
        surrogates so names round-trip)."""
        head = self.binary.peek(1 << 16)[: 1 << 16] if hasattr(self.binary, "peek") else b""
        nul = head.find(b"\0")
        if nul >= 0:
            raise FastaFormatError(self.display, head.count(b"\n", 0, nul) + 1,
                                   "binary data (NUL byte): not a FASTA text file")
        wrapper = io.TextIOWrapper(self.binary, encoding="utf-8", errors="surrogateescape",
                                   newline=None)
        wrapper._CHUNK_SIZE = 1 << 16  # type: ignore[attr-defined]
        self._wrapper = wrapper  # keep it alive: its finaliser would close the file
        return iter(wrapper)

    def close(self) -> None:
        wrapper = getattr(self, "_wrapper", None)
        if wrapper is not None and self.is_stdin:
            self._wrapper = None
            with contextlib.suppress(ValueError):
                wrapper.detach()  # never close the process's stdin
        if self._fileio is not None and not self._fileio.closed:
            self._final = self.bytes_read
            self._fileio.close()
        feed = getattr(self, "_feed", None)
        if feed is not None:
            self._feed = None
            feed.close()


class FastaReader:
    """Iterator of ``(name, sequence)`` pairs from one FASTA file (see :func:`read_fasta`).

    Attributes:
        path: the file as shown in messages (``"<stdin>"`` for ``-``).
        size: size in bytes of the file on disk (compressed size for gzip), or None
            for stdin / pipes.
        is_stream: True for stdin, a named pipe or a character device (e.g.
            ``/dev/stdin``, ``<(zcat a.fa.gz)``): read once, in this process; error
            messages then give a record number instead of a line.
        compressed: whether the input is gzip (detected by its magic bytes).
        records_read: records yielded, once the reader is exhausted or has failed.
    """

    def __init__(self, path: str | os.PathLike[str], *, full_title: bool = False,
                 stdin: IO[bytes] | None = None, _chunk: FastaChunk | None = None) -> None:
        self._path_arg = path
        self._full_title = full_title
        self._src = _Source(path, stdin) if _chunk is None else \
            _Source(path, byte_range=_chunk.byte_range, data=_chunk.data)
        self.path = self._src.display
        self.is_stream = self._src.is_stream
        self.size = self._src.size
        self.compressed = self._src.compressed
        self.records_read = 0
        self._iterated = False  # True once records are taken one by one or in batches
        self._it = self._records()

    # ---------------------------------------------------------------- public
    @property
    def bytes_read(self) -> int | None:
        """Bytes taken from the file so far (compressed bytes for gzip input);
        None for stdin and pipes."""
        return self._src.bytes_read

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return self._it  # the generator itself: no Python call per record

    def __next__(self) -> tuple[str, str]:
        return next(self._it)

    def close(self) -> None:
        """Close the file (stdin is left open)."""
        self._it.close()
        self._src.close()

    def __enter__(self) -> FastaReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def locate(self, record_index: int, position: int | None = None) -> int | None:
        """1-based line of record ``record_index``'s header (0-based index), or of its
        residue ``position`` (1-based) when given.

        Re-reads the file from the start, so it is meant for error messages only;
        returns None for stdin or when the record cannot be found.
        """
        def find(lines: Iterator[str]) -> int | None:
            seen = -1
            residues = 0
            for n, line in enumerate(lines, start=1):
                if line.startswith(">"):
                    if seen == record_index:
                        return None
                    seen += 1
                    if seen == record_index and not position:
                        return n
                elif seen == record_index and position:
                    residues += len(line.rstrip().replace(" ", "").replace("\t", ""))
                    if residues >= position:
                        return n
            return None
        return self._rescan(find)

    def _seqpad_chunks(self, jobs: int, min_bytes: int) -> Iterator[FastaChunk] | None:
        """The file cut into pieces that each start at a record, for ``jobs`` processes
        writing a store at once; None for stdin or a file under ``min_bytes``.

        A plain file is cut into byte ranges (each worker reads its own); a gzip
        file is decompressed here and cut into in-memory pieces.  Parsing the
        pieces one after the other gives the records of the whole file, in order.
        The file is opened afresh by its path, so only a reader that nothing has been
        read from yet qualifies, and only while its path still names the open file.
        """
        if self._iterated or self._src.is_stream or self.size is None or \
                self.size < min_bytes or not self._src.same_file(self._path_arg):
            return None
        return plan_chunks(self._path_arg, self._full_title, chunk_bytes(self.size, jobs))

    def _seqpad_chunks_written(self, records: int) -> None:
        """The pieces from :meth:`_seqpad_chunks` were all written: ``records`` records
        in all. The reader is then used up, as if iterated to the end."""
        self._iterated = True
        self.records_read = records
        self.close()

    # -------------------------------------------------------------- internals
    def _rescan(self, fn: Any) -> Any:
        """Apply ``fn`` to the lines of a fresh read of the same file (cold path)."""
        if self._src.is_stream:  # cannot be read again (a pipe would block)
            return None
        try:
            src = _Source(self._path_arg)
        except (FastaFormatError, OSError):
            return None
        try:
            return fn(src.text())
        except (FastaFormatError, OSError, EOFError, zlib.error):
            return None
        finally:
            src.close()

    def _line_count(self) -> int | None:
        """Number of complete lines that can be read before the data ends (cold path)."""
        def count(lines: Iterator[str]) -> int:
            n = 0
            try:
                for n, _ in enumerate(lines, start=1):  # noqa: B007
                    pass
            except (EOFError, OSError, zlib.error):
                pass
            return n
        return self._rescan(count)

    def _error(self, line: int | None, reason: str, record: str | None = None
               ) -> FastaFormatError:
        return FastaFormatError(self.path, line, reason, record)

    def _start(self, lines: Iterator[str]) -> Iterator[str] | None:
        """Lines from the first header on; None for an empty or blank-only file."""
        for n, line in enumerate(lines, start=1):
            if line.startswith(">"):
                return itertools.chain((line,), lines)
            if line.strip():
                shown = line.rstrip("\r\n")
                if len(shown) > 40:
                    shown = shown[:40] + "..."
                raise self._error(
                    n, "expected a FASTA header ('>name') as the first non-blank line, "
                       f"got {shown!r}"
                )
        return None

    def _records(self) -> Iterator[tuple[str, str]]:
        """One record at a time: the batched path with batches of one record."""
        self._iterated = True
        with contextlib.closing(self._batches(1)) as batches:
            for names, seqs, _joined in batches:
                yield from zip(names, seqs)  # noqa: B905

    def _seqpad_batches(self, max_residues: int) -> Iterator[tuple[list[str], list[str], str]]:
        """The records in batches ``(names, sequences, "".join(sequences))`` of about
        ``max_residues`` residues (records count as one residue more, so that many
        empty records also make a batch), for :func:`seqpad.store.write_store`.

        The same records and errors as iterating the reader, but the per-record checks
        (tabs, NUL bytes) and the name split run on whole batches, in C.  If records were
        already taken one by one, the rest come from that same iterator.
        """
        if self._iterated:
            return _rebatch(self._it, max_residues)
        self._iterated = True
        self._it.close()  # never started: the batches read the file instead
        return self._batches(max_residues)

    def _batches(self, max_residues: int) -> Iterator[tuple[list[str], list[str], str]]:
        count = 0
        try:
            lines = self._start(self._src.text())
            if lines is None:
                return
            for titles, seqs in _group(SimpleFastaParser(lines), max_residues):
                batch = self._checked(titles, seqs)
                count += len(titles)
                yield batch
        except EOFError:
            raise self._error(self._line_count_or_none(),
                              "gzip data ends early: the file is truncated") from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise self._error(self._line_count_or_none(), f"corrupt gzip data ({e})") from None
        finally:
            self.records_read = count
            self._src.close()

    def _checked(self, titles: list[str], seqs: list[str]) -> tuple[list[str], list[str], str]:
        """One batch: tabs removed from sequences, NUL bytes refused, names split."""
        joined = "".join(seqs)
        if "\t" in joined:
            seqs = [s.replace("\t", "") if "\t" in s else s for s in seqs]
            joined = "".join(seqs)
        if "\x00" in joined or "\x00" in "".join(titles):
            raise self._nul_error()
        if self._full_title:
            names = titles
        elif "" in titles:
            names = [(t.split(None, 1) or [""])[0] for t in titles]
        else:
            names = list(map(_first, map(str.split, titles, _NONE, _ONE)))
        return names, seqs, joined

    def _line_count_or_none(self) -> int | None:
        n = self._line_count()
        return None if n is None else n + 1

    def _nul_error(self) -> FastaFormatError:
        line = self._rescan(
            lambda lines: next((n for n, ln in enumerate(lines, 1) if "\x00" in ln), None)
        )
        return self._error(line, "binary data (NUL byte): not a FASTA text file")


@dataclass(frozen=True)
class FastaChunk:
    """A piece of a FASTA file that starts at a record (or at the file's start).

    Either the byte range ``byte_range`` of a plain file, read by whoever parses the
    piece, or ``data``, decompressed text of a gzip file.  ``nbytes`` is the share of
    the file on disk the piece stands for (compressed bytes for gzip), for progress.
    """

    path: str
    full_title: bool
    byte_range: tuple[int, int] | None
    data: bytes | None
    nbytes: int

    def open(self) -> FastaReader:
        """A :class:`FastaReader` over just this piece."""
        return FastaReader(self.path, full_title=self.full_title, _chunk=self)


#: Bounds on the size of the pieces a file is cut into for several processes.
MIN_CHUNK_BYTES = 4 << 20
MAX_CHUNK_BYTES = 64 << 20
#: A gzip file's pieces are decompressed text held in memory until a worker has
#: written them (about ``jobs + 2`` at a time): they are kept this small.
GZIP_CHUNK_BYTES = 4 << 20


def chunk_bytes(total: int, jobs: int) -> int:
    """Piece size for ``total`` bytes of input and ``jobs`` processes: about four
    pieces per process, so that they finish close together, within
    ``[MIN_CHUNK_BYTES, MAX_CHUNK_BYTES]``."""
    return max(min(max(total // (4 * max(jobs, 1)), MIN_CHUNK_BYTES), MAX_CHUNK_BYTES), 1)


#: A record starts after a line break: "\n>" (also inside "\r\n>") or "\r>".
_RECORD_START = re.compile(rb"[\r\n]>")


def plan_chunks(path: str | os.PathLike[str], full_title: bool, size: int
                ) -> Iterator[FastaChunk]:
    """Pieces of about ``size`` bytes of one file, each starting at a record (see
    :meth:`FastaReader._seqpad_chunks`); at most ``GZIP_CHUNK_BYTES`` of decompressed
    text for gzip, since those pieces are held in memory.  Errors (unreadable,
    unsupported compression) are raised as :class:`FastaFormatError` when iterated."""
    size = max(int(size), 1)
    src = _Source(path)
    try:
        if src.compressed:
            try:
                yield from _pieces(src, os.fspath(path), full_title,
                                   min(size, GZIP_CHUNK_BYTES))
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # bad input, said so
                raise FastaFormatError(src.display, None, f"corrupt or truncated gzip ({e})") \
                    from None
        else:
            total = src.size or 0
            src.close()
            yield from _ranges(os.fspath(path), full_title, total, size)
    finally:
        src.close()


def _ranges(path: str, full_title: bool, total: int, size: int) -> Iterator[FastaChunk]:
    """Byte ranges of a plain file, each cut just before a line that starts with '>'."""
    start = 0
    with open(path, "rb") as f:
        while start < total:
            stop = total
            probe = start + size
            while probe < total:
                f.seek(probe - 1)  # the byte before: a line break makes a record start
                block = f.read(BLOCK_SIZE + 1)
                m = _RECORD_START.search(block)
                if m is not None:
                    stop = probe - 1 + m.start() + 1
                    break
                if len(block) <= 1:
                    break
                probe += len(block) - 1
            yield FastaChunk(path, full_title, (start, stop), None, stop - start)
            start = stop


def _pieces(src: _Source, path: str, full_title: bool, size: int) -> Iterator[FastaChunk]:
    """Decompressed pieces of a gzip file, each ending just before a record start."""
    pending: list[bytes] = []  # blocks read since the last cut
    last = b""  # the byte before the current block
    done = 0
    while True:
        block = src.binary.read(size)
        if not block:
            if pending:
                yield FastaChunk(path, full_title, None, b"".join(pending),
                                 (src.bytes_read or done) - done)
            return
        # where the last record of the block starts (0: at the block's start; -1: none)
        cut = max(block.rfind(b"\n>"), block.rfind(b"\r>"))
        cut = cut + 1 if cut >= 0 else \
            0 if last in (b"\n", b"\r") and block.startswith(b">") else -1
        last = block[-1:]
        if cut < 0:
            pending.append(block)  # no record starts here (a long record): read on
            continue
        pending.append(block[:cut])
        now = src.bytes_read or done
        yield FastaChunk(path, full_title, None, b"".join(pending), now - done)
        done = now
        pending = [block[cut:]]


def _group(records: Iterable[tuple[str, str]], max_residues: int
           ) -> Iterator[tuple[list[str], list[str]]]:
    """Records in lists of about ``max_residues`` residues (each counts one more)."""
    limit = max(int(max_residues), 1)
    names: list[str] = []
    seqs: list[str] = []
    pending = 0
    for name, seq in records:
        names.append(name)
        seqs.append(seq)
        pending += len(seq) + 1
        if pending >= limit:
            yield names, seqs
            names, seqs, pending = [], [], 0
    if names:
        yield names, seqs


def _rebatch(records: Iterator[tuple[str, str]], max_residues: int
             ) -> Iterator[tuple[list[str], list[str], str]]:
    for names, seqs in _group(records, max_residues):
        yield names, seqs, "".join(seqs)


def read_fasta(path: str | os.PathLike[str], *, full_title: bool = False) -> FastaReader:
    """Stream ``(name, sequence)`` records from a FASTA file.

    Args:
        path: a plain or gzip-compressed FASTA file (gzip is detected from its
            magic bytes, whatever the suffix), or ``"-"`` for standard input. A named
            pipe or a character device (``/dev/stdin``, ``<(zcat a.fa.gz)``) is read as
            a stream, like standard input.
        full_title: if False (default) the name is Biopython's record id, the first
            whitespace-separated word of the header (``""`` for a bare ``>``); if
            True it is the whole header line after ``>`` (trailing whitespace removed).

    Returns:
        a :class:`FastaReader`: an iterator of ``(name: str, sequence: str)`` that
        also reports ``bytes_read`` and ``size`` (for progress bars) and closes the
        file when exhausted (or use it as a context manager).

    Sequences are returned as in the file, minus line breaks, spaces and tabs: case
    (soft-masking) is preserved. Records are read one at a time; memory use does not
    grow with the file size.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FastaFormatError: naming the file and line, for a first non-blank line that
            is not a header, binary data, unsupported compression, or a truncated /
            corrupt gzip stream (raised while iterating).
    """
    return FastaReader(path, full_title=full_title)

