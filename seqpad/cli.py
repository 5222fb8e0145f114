"""Command-line interface: ``seqpad tokenize`` and ``seqpad info`` (see ``docs/cli.md``).

Exit codes: 0 success, 1 bad input or failed write (one ``seqpad: error: ...`` line
on stderr, nothing left on disk), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import signal
import stat
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any


def _is_main_program() -> bool:
    """True when this process is the ``seqpad`` command (console script or
    ``python -m seqpad``), not a program that imports seqpad.cli."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) == "seqpad.__main__" or \
        os.path.basename(sys.argv[0] if sys.argv else "") in ("seqpad", "seqpad.exe")


if "numpy" not in sys.modules and _is_main_program():
    # The command does no linear algebra: OpenBLAS's worker threads (started when numpy
    # is imported, then spinning) would only take CPU time from the parse.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402 -- after the environment is set for numpy
import numpy as np  # noqa: E402

from seqpad.fasta import (  # noqa: E402
    FastaChunk,
    FastaFormatError,
    FastaReader,
    chunk_bytes,
    plan_chunks,
    read_fasta,
)
from seqpad.kmers import MAX_K  # noqa: E402
from seqpad.store import StoreError, StoreReader, check_output, write_store  # noqa: E402
from seqpad.tokenizer import Tokenizer, UnknownSymbolError  # noqa: E402
from seqpad.vocabularies import PRETRAINED_VOCABS, pretrained_tokenizer  # noqa: E402

__all__ = ["cli", "main"]

#: Inputs at least this large (bytes on disk, all files together) get a progress bar
#: when stderr is a terminal.
PROGRESS_MIN_BYTES = 8 << 20

_MAIN_EPILOG = """\b
Examples:
  seqpad tokenize proteome.fasta.gz -o proteome.store --alphabet protein
  seqpad info proteome.store
"""

_TOKENIZE_EPILOG = """\b
Examples:
  # a UniProt proteome (gzip is detected automatically)
  seqpad tokenize data/UP000000625-E.coli.fasta.gz -o ecoli.store --alphabet protein
\b
  # several files, stdin too; map unknown symbols to <unk>; add <bos>/<eos>
  zcat more.fa.gz | seqpad tokenize a.fa - -o all.store --alphabet dna --unknown unk --bos --eos
\b
  # keep records of 30..1022 residues, cutting longer ones; replace an old store
  seqpad tokenize in.fa -o out.store --alphabet protein --min-length 30 \\
      --max-length 1022 --truncate --force
\b
  # ESM-2 ids (<cls> ... <eos>); non-overlapping DNA 6-mers
  seqpad tokenize in.fa -o esm.store --vocab esm2 --bos --eos
  seqpad tokenize genome.fa -o k6.store --alphabet dna --kmer 6
\b
Exit codes: 0 ok, 1 bad input or failed write (nothing is left behind),
2 usage error, 130 interrupted.
"""


class _Fail(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def _err(msg: str) -> None:
    click.echo(f"seqpad: error: {msg}", err=True)


class _Inputs:
    """The records of several FASTA files in order, remembering which file each
    came from (for error messages) and how many bytes have been read (for progress)."""

    def __init__(self, paths: Sequence[str], *, full_title: bool) -> None:
        self.paths = list(paths)
        self.full_title = full_title
        self.readers: list[FastaReader] = []
        self.sizes = [None if p == "-" else _size(p) for p in self.paths]
        known = [s for s in self.sizes if s is not None]
        self.total_bytes: int | None = sum(known) if len(known) == len(self.sizes) else None
        self.chunk_bytes_done = 0  # bytes of the pieces written by worker processes

    def _open(self, path: str) -> FastaReader:
        reader = read_fasta(path, full_title=self.full_title)
        self.readers.append(reader)
        return reader

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return itertools.chain.from_iterable(map(self._open, self.paths))

    def _seqpad_batches(self, max_residues: int
                        ) -> Iterator[tuple[list[str], list[str], str]]:
        """Batches of records for :func:`seqpad.store.write_store` (the fast path;
        see ``FastaReader._seqpad_batches``)."""
        self.chunk_bytes_done = 0  # a parallel attempt that failed counts no more
        return itertools.chain.from_iterable(
            r._seqpad_batches(max_residues) for r in map(self._open, self.paths))

    def _seqpad_chunks(self, jobs: int, min_bytes: int) -> Iterator[FastaChunk] | None:
        """Every file cut into pieces for ``jobs`` processes (see
        ``FastaReader._seqpad_chunks``); None with stdin or a small input."""
        if self.readers or self.total_bytes is None or self.total_bytes < min_bytes:
            return None
        size = chunk_bytes(self.total_bytes, jobs)
        return itertools.chain.from_iterable(
            plan_chunks(p, self.full_title, size) for p in self.paths)

    def _seqpad_chunk_done(self, chunk: FastaChunk) -> None:
        self.chunk_bytes_done += chunk.nbytes

    def bytes_read(self) -> int:
        done = self.chunk_bytes_done
        for r in self.readers[:-1]:
            done += r.size or 0
        if self.readers:
            done += self.readers[-1].bytes_read or 0
        return done

    def where(self, record_index: int) -> tuple[FastaReader | None, int]:
        """The reader a global record index came from, and its index in that file."""
        local = record_index
        for r in self.readers[:-1]:  # finished readers know their record counts
            if local < r.records_read:
                return r, local
            local -= r.records_read
        return (self.readers[-1] if self.readers else None), local

    def close(self) -> None:
        for r in self.readers:
            r.close()


def default_jobs() -> int:
    """``--jobs 0``: the CPUs this process may run on (its affinity, and a container's
    CPU quota where cgroup v2 sets one), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota = quota_cpus(f.read())
    except OSError:
        quota = None
    return max(1, min(cpus, quota or cpus, 8))


def quota_cpus(cpu_max: str) -> int | None:
    """CPUs a cgroup v2 ``cpu.max`` line (``"QUOTA PERIOD"`` or ``"max PERIOD"``) allows,
    rounded up; None when there is no quota or the line cannot be read."""
    try:
        quota, period = cpu_max.split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except ValueError:
        return None


def _size(path: str) -> int | None:
    """Bytes on disk; None for what is read as a stream (a pipe, a device)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _readable_kind(path: str) -> bool:
    """A regular file, or a named pipe / character device (read as a stream, like '-':
    ``<(zcat a.fa.gz)``, ``/dev/stdin``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _symbol_hint(symbol: str, alphabet: str) -> str:
    hints = []
    if symbol in "-.":
        hints.append("--gaps for aligned FASTA")
    if symbol == "*" and alphabet == "protein":
        hints.append("--stop for translated ORFs")
    if symbol.isalpha() and symbol.isascii() and alphabet in ("dna", "rna"):
        hints.append("a different --alphabet")
    hints.append("--unknown unk or --unknown skip")
    return "; use " + " or ".join(hints)


def _unknown_message(e: UnknownSymbolError, inputs: _Inputs, alphabet: str) -> str:
    index = getattr(e, "record_index", None)
    parts = []
    if index is not None:
        reader, local = inputs.where(index)
        if reader is not None:
            parts.append(reader.path)
            line = reader.locate(local, e.position)
            if line is not None:
                parts.append(f"line {line}")
            elif reader.is_stream:
                parts.append(f"record #{local + 1}")
    if e.record is not None:
        parts.append(f"record {e.record!r}")
    parts.append(f"position {e.position}")
    sym = e.symbol
    shown = f"byte 0x{ord(sym) - 0xDC00:02x} (not UTF-8 text)" if "\udc80" <= sym <= "\udcff" \
        else f"symbol {sym!r}"
    parts.append(f"{shown} is not in the {alphabet} alphabet" + _symbol_hint(sym, alphabet))
    return ": ".join(parts)


# --------------------------------------------------------------------------- commands
class _Group(click.Group):
    """Turns expected failures into one ``seqpad: error:`` line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (_Fail, FastaFormatError, StoreError, UnknownSymbolError) as e:
            _err(str(e))
            ctx.exit(1)
        except KeyboardInterrupt:
            _err("interrupted; nothing was written")
            ctx.exit(130)
        except _Terminated:
            _err("terminated; nothing was written")
            ctx.exit(143)
        except BrokenPipeError:
            ctx.exit(1)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _err(f"{where}{e.strerror or e}")
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_MAIN_EPILOG)
@click.version_option(package_name="seqpad", prog_name="seqpad")
def cli() -> None:
    """seqpad: tokenize FASTA into memory-mapped stores for PyTorch."""


@cli.command(epilog=_TOKENIZE_EPILOG)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", required=True, metavar="OUT",
              help="Store directory to create.")
@click.option("--alphabet", type=click.Choice(["protein", "dna", "rna"]), default=None,
              help="Residue alphabet (IUPAC ambiguity codes included); required unless "
                   "--vocab is given.")
@click.option("--vocab", type=click.Choice(sorted(PRETRAINED_VOCABS)), default=None,
              help="A pretrained model's vocabulary instead of --alphabet: 'esm2' / 'esm1b' "
                   "store fair-esm's ESM-1b/ESM-2 ids (use with --bos --eos for its "
                   "<cls> ... <eos> batches).")
@click.option("--kmer", type=click.IntRange(1, MAX_K), default=1, show_default=True,
              metavar="K", help="k-mer tokens (dna / rna only; 3 = codons, 6 = 6-mers).")
@click.option("--stride", type=click.IntRange(min=1), default=None, metavar="S",
              help="Step between k-mer windows, 1 to K [default: K, non-overlapping; "
                   "1 = overlapping, DNABERT style].")
@click.option("--unknown", type=click.Choice(["error", "unk", "skip"]), default="error",
              show_default=True,
              help="A symbol outside the alphabet: stop with an error, store <unk>, "
                   "or skip the record (counted in the summary).")
@click.option("--gaps", is_flag=True, help="Accept the gap symbols '-' and '.'.")
@click.option("--stop", is_flag=True, help="Accept the stop symbol '*'.")
@click.option("--min-length", type=click.IntRange(min=0), default=1, show_default=True,
              help="Skip records with fewer residues (0 keeps empty records).")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Longest record kept, in residues; needs --truncate or --drop-long.")
@click.option("--truncate", is_flag=True,
              help="Cut longer records to their first --max-length residues.")
@click.option("--drop-long", is_flag=True,
              help="Skip records longer than --max-length (counted).")
@click.option("--bos", is_flag=True, help="Store <bos> before every record.")
@click.option("--eos", is_flag=True, help="Store <eos> after every record.")
@click.option("--full-title", is_flag=True,
              help="Name records by the whole header line, not its first word.")
@click.option("--force", is_flag=True, help="Replace an existing store at OUT.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal and the "
                   "input is 8 MiB or more].")
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=0, metavar="N",
              help="Processes parsing at once: files of 8 MiB or more are cut into pieces "
                   "at record starts (the store is the same for any N). "
                   "[default: 0, one per CPU, at most 8; 1 parses in this process]")
def tokenize(inputs: tuple[str, ...], output: str, alphabet: str | None, vocab: str | None,
             kmer: int, stride: int | None, unknown: str, gaps: bool, stop: bool, min_length: int, max_length: int | None, truncate: bool,
             drop_long: bool, bos: bool, eos: bool, full_title: bool, force: bool,
             progress: bool | None, jobs: int) -> None:
    """Tokenize FASTA files (plain or gzip; '-' is stdin) into the store OUT.

    Prints a summary: records written, skipped (by reason), residues, and
    length min / median / max.
    """
    if (alphabet is None) == (vocab is None):
        raise click.UsageError("give exactly one of --alphabet and --vocab")
    if vocab is not None and (kmer != 1 or stride is not None or gaps or stop):
        raise click.UsageError("--vocab fixes the vocabulary: --kmer, --stride, --gaps and "
                               "--stop do not apply")
    if kmer > 1 and alphabet not in ("dna", "rna"):
        raise click.UsageError("--kmer needs --alphabet dna or rna")
    if stride is not None and not 1 <= stride <= kmer:
        raise click.UsageError(f"--stride must be from 1 to --kmer ({kmer})")
    if truncate and drop_long:
        raise click.UsageError("--truncate and --drop-long exclude each other")
    long_policy = "truncate" if truncate else "drop" if drop_long else None
    if max_length is not None and long_policy is None:
        raise click.UsageError("--max-length needs --truncate or --drop-long")
    if long_policy is not None and max_length is None:
        raise click.UsageError("--truncate / --drop-long need --max-length")
    if max_length is not None and max_length < min_length:
        raise click.UsageError("--max-length must be >= --min-length")
    if inputs.count("-") > 1:
        raise click.UsageError("'-' (stdin) may be given only once")
    for p in inputs:
        if p != "-" and not _readable_kind(p):
            what = "is a directory" if os.path.isdir(p) else "no such file" \
                if not os.path.exists(p) else "not a file, named pipe or character device"
            raise _Fail(f"{p}: {what}")
    check_output(output, overwrite=force)

    if vocab is not None:
        tokenizer = pretrained_tokenizer(vocab, unknown=unknown)  # type: ignore[arg-type]
        alphabet = vocab
    else:
        assert alphabet is not None
        tokenizer = Tokenizer(alphabet, unknown=unknown, gaps=gaps,  # type: ignore[arg-type]
                              stop=stop, k=kmer, stride=stride)
    source = _Inputs(inputs, full_title=full_title)
    total = source.total_bytes
    show = progress if progress is not None else (
        sys.stderr.isatty() and total is not None and total >= PROGRESS_MIN_BYTES)
    bar: Any = None
    shown = 0

    def update(_records: int) -> None:
        nonlocal shown
        if bar is not None:
            now = source.bytes_read()
            bar.update(max(now - shown, 0))
            shown = max(now, shown)

    gc_was_enabled = gc.isenabled()
    gc.disable()  # no reference cycles here; the collector would only rescan the batches
    try:
        with _seqpad_warnings_as_lines(), \
                click.progressbar(length=total or 0, label="tokenizing", file=sys.stderr,
                                  show_eta=True, show_percent=total is not None) \
                if show else contextlib.nullcontext() as bar:
            summary = write_store(output, source, tokenizer, min_length=min_length,
                                  max_length=max_length, truncate=long_policy == "truncate",
                                  add_bos=bos, add_eos=eos, overwrite=force,
                                  progress=update, jobs=jobs or default_jobs())
    except UnknownSymbolError as e:
        raise _Fail(_unknown_message(e, source, alphabet)) from None
    finally:
        if gc_was_enabled:
            gc.enable()
        source.close()
    files = f"{len(inputs)} file" + ("s" if len(inputs) != 1 else "")
    click.echo(f"wrote {output} ({files}, {tokenizer!r})")
    click.echo(summary.format())
    if summary.records == 0:
        click.echo("seqpad: warning: no records were written (empty input, or every record "
                   "was skipped)", err=True)


@cli.command(epilog="\b\nExample:\n  seqpad info ecoli.store")
@click.argument("store", metavar="STORE")
@click.option("--bins", type=click.IntRange(min=1, max=100), default=12, show_default=True,
              help="Histogram rows.")
def info(store: str, bins: int) -> None:
    """Summarise a store: records, residues, lengths, and a length histogram."""
    ds = StoreReader(store)
    click.echo(f"store     {store}")
    click.echo(f"format    seqpad-store v{ds.meta['format_version']}, "
               f"{ds.tokenizer!r}, bos={ds.add_bos}, eos={ds.add_eos}")
    summary = ds.summary()
    click.echo(summary.format())
    residues = ds.lengths - (int(ds.add_bos) + int(ds.add_eos))
    if len(residues):
        click.echo("")
        click.echo(histogram(residues, bins=bins))


def histogram(lengths: np.ndarray, *, bins: int = 12, width: int = 40) -> str:
    """A text histogram of lengths: linear bins up to the 99th percentile, then one
    overflow row when the longest records lie far beyond it."""
    lens = np.asarray(lengths, dtype=np.int64)
    lo, hi = int(lens.min()), int(lens.max())
    p99 = int(np.percentile(lens, 99))
    top = hi if hi <= 2 * max(p99, 1) else p99
    edges = np.unique(np.linspace(lo, top + 1, bins + 1).round().astype(np.int64))
    if len(edges) < 2:
        edges = np.array([lo, lo + 1])
    counts = np.histogram(np.minimum(lens, top), bins=edges)[0].tolist()
    labels = [f"{a:,}-{b - 1:,}" if b - 1 > a else f"{a:,}" for a, b in itertools.pairwise(edges)]
    if top < hi:
        over = int((lens > top).sum())
        counts[-1] -= over
        labels.append(f"> {top:,}")
        counts.append(over)
    peak = max(counts) or 1
    lw = max(len(s) for s in labels)
    cw = max(len(f"{c:,}") for c in counts)
    rows = ["length (residues)"]
    for label, c in zip(labels, counts, strict=True):
        bar = "#" * (round(width * c / peak) if c else 0)
        if c and not bar:
            bar = "."
        rows.append(f"{label:>{lw}} | {c:>{cw},} {bar}")
    return "\n".join(rows)


@contextlib.contextmanager
def _seqpad_warnings_as_lines() -> Iterator[None]:
    """seqpad's own warnings (e.g. worker processes that failed) as one ``seqpad:
    warning:`` line each on stderr; other warnings are shown as usual."""
    with warnings.catch_warnings(record=True) as noted:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            yield
        finally:
            for w in noted:
                text = str(w.message)
                if text.startswith("seqpad: "):
                    click.echo(f"seqpad: warning: {text.removeprefix('seqpad: ')}", err=True)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, so clean-up (temporary store) runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``seqpad``; also ``python -m seqpad``)."""
    # A scheduler's timeout or `kill` sends SIGTERM, whose default action would skip the
    # removal of the half-written temporary store; turn it into an exception instead.
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli.main(args=list(argv) if argv is not None else None, prog_name="seqpad")
