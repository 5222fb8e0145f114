"""write_store(..., jobs=N) and ``seqpad tokenize --jobs N``: the store is byte for byte the
one a single process writes, and errors are the ones a single process raises.

The pieces are made tiny here (``MIN_CHUNK_BYTES`` and ``PARALLEL_MIN_BYTES`` lowered), so
that small real files are cut into many pieces at awkward places.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqpad.fasta
import seqpad.store
from seqpad.cli import cli
from seqpad.fasta import plan_chunks, read_fasta
from seqpad.store import write_store
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

ROOT = Path(__file__).parent.parent
ECOLI = ROOT / "data" / "UP000000625-E.coli.fasta.gz"
DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seqpad.fasta, "MIN_CHUNK_BYTES", 1)
    monkeypatch.setattr(seqpad.fasta, "GZIP_CHUNK_BYTES", 1 << 62)  # MAX_CHUNK_BYTES rules
    monkeypatch.setattr(seqpad.store, "PARALLEL_MIN_BYTES", 0)


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file's bytes; in meta.json, the random ``store_id`` (unique to each write) is
    blanked out, so that two writes of the same input compare equal."""
    out = {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    if "meta.json" in out:
        out["meta.json"] = re.sub(rb'"store_id": "[0-9a-f]{32}"', b'"store_id": ""',
                                  out["meta.json"])
    return out


def pieces(path: Path, size: int) -> list[bytes]:
    """The bytes of each piece ``plan_chunks`` cuts (decompressed for gzip)."""
    out = []
    raw = path.read_bytes()
    for c in plan_chunks(path, False, size):
        if c.data is not None:
            out.append(c.data)
        else:
            assert c.byte_range is not None
            out.append(raw[c.byte_range[0]:c.byte_range[1]])
    return out


@pytest.fixture(scope="module")
def ecoli_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("plain") / "ecoli.fa"
    p.write_bytes(gzip.decompress(ECOLI.read_bytes()))
    return p


@pytest.mark.parametrize("compressed", [False, True])
def test_pieces_start_at_records_and_cover_the_file(ecoli_plain: Path, tmp_path: Path,
                                                    compressed: bool) -> None:
    raw = ecoli_plain.read_bytes()
    src = ECOLI if compressed else ecoli_plain
    parts = pieces(src, 50_000)
    assert len(parts) > 20
    assert b"".join(parts) == raw
    assert all(p.startswith(b">") for p in parts)
    # every piece parsed alone gives the file's records, in order (Biopython's parse)
    chunks = list(plan_chunks(src, False, 50_000))
    assert [r for c in chunks for r in c.open()] == list(read_fasta(ecoli_plain))


@pytest.mark.parametrize("jobs", [2, 3])
@pytest.mark.parametrize("compressed", [False, True])
def test_store_is_identical_to_one_process(tiny_pieces: None, ecoli_plain: Path,
                                           tmp_path: Path, jobs: int, compressed: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = ECOLI if compressed else ecoli_plain
    tok = Tokenizer("protein")
    one = tmp_path / "one"
    many = tmp_path / "many"
    s1 = write_store(one, read_fasta(src), tok, add_bos=True, min_length=100,
                     max_length=1000, truncate=True, batch_residues=30_000)
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 97_000)  # ~20 pieces
    seen: list[int] = []
    sn = write_store(many, read_fasta(src), tok, add_bos=True, min_length=100,
                     max_length=1000, truncate=True, batch_residues=30_000, jobs=jobs,
                     progress=seen.append)
    assert sn == s1
    assert store_bytes(many) == store_bytes(one)
    assert sorted(os.listdir(tmp_path)) == ["many", "one"]  # no piece directory left
    assert seen == sorted(seen) and seen[-1] == 4363 and len(seen) > 5


def _record(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(["", "a", "sp|P1|X desc", "r\u00e9c"]))
    seq = draw(st.text("ACDEFGHIKLMNPQRSTVWYacgt", max_size=120))
    nl = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    width = draw(st.integers(1, 70))
    lines = [seq[i:i + width] for i in range(0, len(seq), width)]
    blank = draw(st.sampled_from(["", nl]))
    return (f">{name}{nl}" + "".join(ln + nl for ln in lines) + blank).encode()


@st.composite
def fasta_files(draw: st.DrawFn) -> bytes:
    records = draw(st.lists(st.composite(_record)(), max_size=25))
    data = b"".join(records)
    if data and draw(st.booleans()):
        data = data.rstrip(b"\r\n")  # no final newline
    return data


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=fasta_files(), size=st.integers(1, 300), jobs=st.integers(2, 3),
       compressed=st.booleans(), min_length=st.integers(0, 2))
def test_any_cut_gives_the_same_store(tiny_pieces: None, tmp_path: Path, data: bytes,
                                      size: int, jobs: int, compressed: bool,
                                      min_length: int) -> None:
    """Line endings (LF, CRLF, CR), blank lines, empty records, no final newline, pieces
    of one byte: jobs > 1 writes the store jobs=1 writes."""
    d = Path(os.path.join(tmp_path, f"h{time.perf_counter_ns()}"))
    d.mkdir()
    src = d / ("in.fa.gz" if compressed else "in.fa")
    src.write_bytes(gzip.compress(data) if compressed else data)
    tok = Tokenizer("protein")
    write_store(d / "one", read_fasta(src), tok, min_length=min_length)
    with pytest.MonkeyPatch.context() as mp:  # per example, not per test
        mp.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", size)
        write_store(d / "many", read_fasta(src), tok, min_length=min_length, jobs=jobs)
    assert store_bytes(d / "many") == store_bytes(d / "one")


def error_of(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception) as info:
        fn()
    return f"{type(info.value).__name__}: {info.value}"


@pytest.mark.parametrize("compressed", [False, True])
def test_bad_record_late_in_the_file_gives_the_one_process_error(
        tiny_pieces: None, ecoli_plain: Path, tmp_path: Path, compressed: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    raw = ecoli_plain.read_bytes()
    at = raw.index(b"\n", raw.index(b">", len(raw) * 3 // 4)) + 5  # a residue, 3/4 in
    bad = raw[:at] + b"1" + raw[at + 1:]
    src = tmp_path / ("bad.fa.gz" if compressed else "bad.fa")
    src.write_bytes(gzip.compress(bad) if compressed else bad)
    tok = Tokenizer("protein")
    one = error_of(lambda: write_store(tmp_path / "one", read_fasta(src), tok))
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 60_000)
    many = error_of(lambda: write_store(tmp_path / "many", read_fasta(src), tok, jobs=2))
    assert many == one and "UnknownSymbolError" in one
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]

    # through the CLI: the same message, with the line number
    r1 = CliRunner().invoke(cli, ["tokenize", str(src), "-o", str(tmp_path / "c"),
                                  "--alphabet", "protein", "-j", "1"])
    r2 = CliRunner().invoke(cli, ["tokenize", str(src), "-o", str(tmp_path / "c"),
                                  "--alphabet", "protein", "-j", "2"])
    assert r1.exit_code == r2.exit_code == 1
    assert r2.stderr == r1.stderr and "line " in r1.stderr and "'1'" in r1.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_truncated_gzip_and_nul_late_in_the_file(tiny_pieces: None, ecoli_plain: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 60_000)
    raw = ecoli_plain.read_bytes()
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(gzip.compress(raw)[:-5000])
    nul = tmp_path / "nul.fa"
    at = len(raw) * 3 // 4
    nul.write_bytes(raw[:at] + b"\0" + raw[at + 1:])
    tok = Tokenizer("protein")
    for src in (cut, nul):
        one, many = (error_of(lambda j=jobs, s=src: write_store(  # type: ignore[misc]
            tmp_path / "s", read_fasta(s), tok, jobs=j)) for jobs in (1, 2))
        assert many == one and "FastaFormatError" in one, src
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.fa.gz", "nul.fa"]


def test_unknown_skip_counts_match(tiny_pieces: None, ecoli_plain: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    raw = ecoli_plain.read_bytes().replace(b"W", b"*")  # many records gain a stop symbol
    src = tmp_path / "stops.fa"
    src.write_bytes(raw)
    tok = Tokenizer("protein", unknown="skip")
    s1 = write_store(tmp_path / "one", read_fasta(src), tok)
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 80_000)
    s2 = write_store(tmp_path / "many", read_fasta(src), tok, jobs=2)
    assert s1.skipped["unknown_symbol"] > 1000
    assert s2 == s1
    assert store_bytes(tmp_path / "many") == store_bytes(tmp_path / "one")


def test_cli_jobs_several_files(tiny_pieces: None, ecoli_plain: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain and gzip inputs together; any --jobs gives the store of --jobs 1."""
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 200_000)
    inputs = [str(ECOLI), str(DATA / "seqkit/a.fa"), str(ecoli_plain)]
    outs = {}
    for jobs in ("1", "2", "0"):
        out = tmp_path / f"j{jobs}"
        r = CliRunner().invoke(cli, ["tokenize", *inputs, "-o", str(out), "--alphabet",
                                     "protein", "--unknown", "unk", "-j", jobs])
        assert r.exit_code == 0, r.output
        outs[jobs] = (r.stdout.replace(str(out), "OUT"), store_bytes(out))
    assert outs["2"] == outs["1"] and outs["0"] == outs["1"]
    assert "records written   8,7" in outs["1"][0]


def test_stdin_is_written_in_one_process(tiny_pieces: None, tmp_path: Path) -> None:
    data = gzip.decompress(ECOLI.read_bytes())
    r = CliRunner().invoke(cli, ["tokenize", "-", "-o", str(tmp_path / "s"), "--alphabet",
                                 "protein", "-j", "4"], input=data)
    assert r.exit_code == 0, r.output
    assert "records written   4,363" in r.stdout


def test_other_iterables_ignore_jobs(tmp_path: Path) -> None:
    s = write_store(tmp_path / "s", [("a", "MKV"), ("b", "")], Tokenizer("protein"), jobs=4)
    assert s.records == 1 and s.skipped == {"empty": 1}


@pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc as on Linux")
def test_sigterm_stops_workers_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM while worker processes are parsing: exit 143, no temporary store, and no
    worker left running."""
    proc, children = _start_two_workers(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143, err
    assert b"terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.fa"]
    time.sleep(0.2)
    assert children and not [c for c in children if _alive(c)]


def _start_two_workers(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """``seqpad tokenize -j 2`` on a ~33 MB file (several pieces per worker) into
    ``tmp_path / "s.store"``, once its workers are writing pieces; and their pids."""
    src = tmp_path / "big.fa"
    block = gzip.decompress(ECOLI.read_bytes())
    with open(src, "wb") as f:
        for k in range(20):
            f.write(block.replace(b">", f">c{k}_".encode()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqpad", "tokenize", str(src), "-o", str(tmp_path / "s.store"),
         "--alphabet", "protein", "-j", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".s.store.tmp*/.piece-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc, _children(proc.pid)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_bad_record_error_is_raised_not_swallowed(tiny_pieces: None, tmp_path: Path) -> None:
    src = tmp_path / "x.fa"
    src.write_bytes(b">a\nMKV\n" * 2000 + b">b\nMK1\n")
    with pytest.raises(UnknownSymbolError) as info:
        write_store(tmp_path / "s", read_fasta(src), Tokenizer("protein"), jobs=2)
    assert info.value.record == "b" and info.value.position == 3
    assert info.value.record_index == 2000  # type: ignore[attr-defined]


# ------------------------------------------------------------ review findings, kept fixed
def test_a_reader_already_read_from_is_not_read_again(tiny_pieces: None, tmp_path: Path,
                                                      ecoli_plain: Path) -> None:
    tok = Tokenizer("protein")
    stores = []
    for jobs in (1, 2):
        r = read_fasta(ecoli_plain)
        next(r)
        write_store(tmp_path / f"j{jobs}", r, tok, jobs=jobs)
        stores.append(store_bytes(tmp_path / f"j{jobs}"))
    assert stores[0] == stores[1]
    assert len(seqpad.store.TokenizedDataset(tmp_path / "j2")) == 4362


def test_the_reader_is_used_up_after_a_parallel_write(tiny_pieces: None, tmp_path: Path,
                                                      ecoli_plain: Path) -> None:
    r = read_fasta(ecoli_plain)
    write_store(tmp_path / "s", r, Tokenizer("protein"), jobs=2)
    assert r.records_read == 4363 and r._src._fileio.closed  # as after jobs=1


def test_a_worker_that_dies_is_replaced_by_this_process(tiny_pieces: None, tmp_path: Path,
                                                        ecoli_plain: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed outright (the OOM killer): the store is still written, in this
    process, with a warning; the progress bar's bytes never pass the input size."""
    if seqpad.store._mp_context().get_start_method() != "fork":
        pytest.skip("the patched worker function reaches workers only by fork")
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 100_000)
    monkeypatch.setattr(seqpad.store, "_write_piece", _dies_on_third_piece)
    from seqpad.cli import _Inputs

    source = _Inputs([str(ecoli_plain)], full_title=False)
    seen: list[int] = []
    with pytest.warns(RuntimeWarning, match="worker processes failed.*terminated abruptly"):
        s = write_store(tmp_path / "s", source, Tokenizer("protein"), jobs=2,
                        progress=lambda _n: seen.append(source.bytes_read()))
    source.close()
    assert s.records == 4363
    assert store_bytes(tmp_path / "s") == store_bytes(
        _one_process(tmp_path / "ref", ecoli_plain))
    assert seen[-1] == source.total_bytes and max(seen) <= source.total_bytes


_REAL_WRITE_PIECE = seqpad.store._write_piece


def _dies_on_third_piece(chunk, part, *args):  # type: ignore[no-untyped-def]
    if part.endswith("piece-2"):
        os._exit(9)  # as the OOM killer would end it
    return _REAL_WRITE_PIECE(chunk, part, *args)


def _one_process(out: Path, src: Path) -> Path:
    write_store(out, read_fasta(src), Tokenizer("protein"))
    return out


def test_errors_of_this_process_are_not_retried(tiny_pieces: None, tmp_path: Path,
                                                ecoli_plain: Path) -> None:
    """A progress callback that raises ends the write, as with jobs=1."""
    calls = []

    def stop(n: int) -> None:
        calls.append(n)
        raise KeyError("stop")

    for jobs in (1, 2):
        calls.clear()
        with pytest.raises(KeyError, match="stop"):
            write_store(tmp_path / "s", read_fasta(ecoli_plain), Tokenizer("protein"),
                        jobs=jobs, progress=stop)
        assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_more_workers_than_pieces(tiny_pieces: None, tmp_path: Path, ecoli_plain: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures

    sizes = []
    real = concurrent.futures.ProcessPoolExecutor

    def recording(max_workers, **kw):  # type: ignore[no-untyped-def]
        sizes.append(max_workers)
        return real(max_workers, **kw)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", recording)
    monkeypatch.setattr(seqpad.fasta, "MIN_CHUNK_BYTES", 1_000_000)  # 2 pieces
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 1_000_000)
    write_store(tmp_path / "s", read_fasta(ecoli_plain), Tokenizer("protein"), jobs=8)
    assert sizes == [2]


def test_workers_are_not_forked_while_other_threads_run() -> None:
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert seqpad.store._mp_context().get_start_method() in ("forkserver", "spawn")
    finally:
        stop.set()
        t.join()


def test_gzip_pieces_stay_small(tmp_path: Path) -> None:
    """A gzip file's pieces are held in memory: GZIP_CHUNK_BYTES each (plus the rest of
    the record the limit falls in), whatever piece size is asked for."""
    block = gzip.decompress(ECOLI.read_bytes())
    src = tmp_path / "x.fa.gz"
    src.write_bytes(gzip.compress(block * 4, compresslevel=1))
    longest = max(len(r) for r in block.split(b"\n>"))
    sizes = [len(c.data or b"") for c in plan_chunks(src, False, 64 << 20)]
    assert sum(sizes) == 4 * len(block) and len(sizes) >= 2
    assert max(sizes) <= seqpad.fasta.GZIP_CHUNK_BYTES + longest


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")
def test_workers_end_when_the_parent_is_killed(tmp_path: Path) -> None:
    proc, children = _start_two_workers(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    if not children:
        pytest.skip("the run finished before the workers were seen")
    deadline = time.monotonic() + 10
    while [c for c in children if _alive(c)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [c for c in children if _alive(c)]


def test_cli_says_when_workers_failed(tiny_pieces: None, tmp_path: Path, ecoli_plain: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if seqpad.store._mp_context().get_start_method() != "fork":
        pytest.skip("the patched worker function reaches workers only by fork")
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 100_000)
    monkeypatch.setattr(seqpad.store, "_write_piece", _dies_on_third_piece)
    r = CliRunner().invoke(cli, ["tokenize", str(ecoli_plain), "-o", str(tmp_path / "s"),
                                 "--alphabet", "protein", "-j", "2"])
    assert r.exit_code == 0, r.output
    assert "records written   4,363" in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqpad: warning: worker processes failed")
    assert store_bytes(tmp_path / "s") == store_bytes(_one_process(tmp_path / "r", ecoli_plain))


def test_default_jobs_follows_a_cgroup_cpu_quota() -> None:
    from seqpad.cli import default_jobs, quota_cpus

    assert quota_cpus("max 100000\n") is None
    assert quota_cpus("150000 100000\n") == 2  # 1.5 CPUs: rounded up
    assert quota_cpus("50000 100000") == 1
    assert quota_cpus("400000 100000") == 4
    assert quota_cpus("") is None and quota_cpus("garbage") is None
    assert 1 <= default_jobs() <= 8


@pytest.mark.parametrize("splice", [True, False], ids=["pipe", "range-stream"])
def test_a_piece_reads_exactly_its_bytes_and_reports_a_short_file(
        tmp_path: Path, ecoli_plain: Path, splice: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte-range pieces are read through a pipe fed by a thread where os.splice exists
    (Linux), else through a range-limited stream: either way the piece ends exactly at its
    range, a reader closed early does not hang, and a file shorter than the range is an
    error, not a silently short piece."""
    from seqpad.fasta import FastaChunk

    if splice and not hasattr(os, "splice"):
        pytest.skip("no os.splice here")
    if not splice:
        monkeypatch.delattr(os, "splice", raising=False)

    raw = ecoli_plain.read_bytes()
    start = raw.index(b"\n>", 500_000) + 1
    stop = raw.index(b"\n>", 900_000) + 1
    piece = FastaChunk(str(ecoli_plain), False, (start, stop), None, stop - start)
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    with io.StringIO(raw[start:stop].decode()) as handle:
        want = [(t.split(None, 1)[0], s) for t, s in SimpleFastaParser(handle)]
    assert list(piece.open()) == want

    reader = piece.open()
    next(reader)
    reader.close()  # the feeding thread stops (EPIPE) instead of blocking forever

    past_end = FastaChunk(str(ecoli_plain), False, (stop, len(raw) + 10), None, 0)
    with pytest.raises(OSError, match="ended 10 bytes early"):
        list(past_end.open())


# ------------------------------------------------ the pipe-fed pieces: review findings
needs_splice = pytest.mark.skipif(not hasattr(os, "splice"), reason="no os.splice here")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _piece(path: Path) -> seqpad.fasta.FastaChunk:
    size = path.stat().st_size
    return seqpad.fasta.FastaChunk(str(path), False, (0, size), None, size)


@needs_splice
def test_closing_a_piece_early_with_sigpipe_at_its_default(tmp_path: Path,
                                                           ecoli_plain: Path) -> None:
    """A program may reset SIGPIPE to its default action (which kills): the feeding
    thread blocks it and takes EPIPE when the reader stops early."""
    big = tmp_path / "big.fa"
    big.write_bytes(ecoli_plain.read_bytes() * 6)  # more than the pipe and buffers hold
    code = (
        "import signal, sys; from pathlib import Path; import seqpad.fasta as F\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        f"p = Path({str(big)!r}); n = p.stat().st_size\n"
        "r = F.FastaChunk(str(p), False, (0, n), None, n).open(); next(r); r.close()\n"
        "print('closed')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == b"closed", done.stderr


@needs_splice
def test_a_piece_that_fails_to_start_leaks_nothing(ecoli_plain: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    piece = _piece(ecoli_plain)
    list(piece.open())  # warm up: imports, caches
    before = _open_fds()

    real_start = threading.Thread.start

    def start_then_interrupt(self: threading.Thread) -> None:
        real_start(self)
        raise KeyboardInterrupt  # as a Ctrl-C arriving while start() waits

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        piece.open()
    monkeypatch.undo()

    def dup_fails(fd: int) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "dup", dup_fails)
    with pytest.raises(OSError, match="Too many open files"):
        piece.open()
    monkeypatch.undo()

    deadline = time.monotonic() + 10
    while (_open_fds() > before or any(t.name == "seqpad-feed" for t in threading.enumerate())) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _open_fds() == before
    assert not [t for t in threading.enumerate() if t.name == "seqpad-feed"]


@needs_splice
def test_any_failure_of_the_feeding_thread_is_an_error(ecoli_plain: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def splice_fails(*args: object, **kwargs: object) -> int:
        raise MemoryError

    monkeypatch.setattr(os, "splice", splice_fails)
    with pytest.raises(MemoryError):
        list(_piece(ecoli_plain).open())
