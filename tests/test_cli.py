"""seqpad tokenize / info through click's CliRunner and one real subprocess."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from seqpad.cli import cli
from seqpad.store import TokenizedDataset

ROOT = Path(__file__).parent.parent
ECOLI = ROOT / "data" / "UP000000625-E.coli.fasta.gz"
DATA = Path(__file__).parent / "data"


def run(*args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def test_tokenize_and_info_ecoli(tmp_path: Path) -> None:
    out = tmp_path / "ecoli.store"
    r = run("tokenize", ECOLI, "-o", out, "--alphabet", "protein")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    assert "records written   4,363" in r.stdout
    assert "residues          1,358,898" in r.stdout
    assert "length min/median/max  13 / 274 / 2,358" in r.stdout
    assert len(TokenizedDataset(out)) == 4363

    r = run("info", out)
    assert r.exit_code == 0, r.output
    assert "records written   4,363" in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if " | " in ln]
    assert 2 <= len(rows) <= 14
    counts = [int(ln.split(" | ")[1].split()[0].replace(",", "")) for ln in rows]
    assert sum(counts) == 4363


def test_options_reach_the_store(tmp_path: Path) -> None:
    out = tmp_path / "s"
    r = run("tokenize", DATA / "seqkit/empty_id_and_seq.fa", "-o", out, "--alphabet", "dna",
            "--bos", "--eos", "--max-length", "1", "--drop-long")
    assert r.exit_code == 0, r.output
    assert "empty           4" in r.stdout
    ds = TokenizedDataset(out)
    assert ds.add_bos and ds.add_eos and len(ds) == 7
    assert ds[0].tolist() == [3, 5, 4]  # <bos> A <eos>


def test_bad_symbol_names_file_line_record_position(tmp_path: Path) -> None:
    out = tmp_path / "out.store"
    src = DATA / "seqkit/a.fa"  # ">A 1\na1-\n...": '1' is residue 2 of record 'A', line 2
    r = run("tokenize", src, "-o", out, "--alphabet", "dna")
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.startswith(
        f"seqpad: error: {src}: line 2: record 'A': position 2: symbol '1' is not in the dna "
        "alphabet")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []  # nothing left behind


def test_error_in_second_file_is_located_there(tmp_path: Path) -> None:
    first, second = DATA / "biopython/f002", DATA / "biopython/seqs.fasta"
    lines = second.read_text().splitlines()
    header = next(i for i, ln in enumerate(lines, 1) if ln.startswith(">gi|129628"))
    r = run("tokenize", first, second, "-o", tmp_path / "s", "--alphabet", "dna")
    assert r.exit_code == 1
    # "MPVV...": M is IUPAC (A/C) in DNA, P is not: residue 2 on the line after the header
    assert f"{second}: line {header + 1}: record 'gi|129628|sp|P07175|PARA_AGRTU': " \
        "position 2: symbol 'P'" in r.stderr
    r = run("tokenize", first, second, "-o", tmp_path / "s", "--alphabet", "dna",
            "--unknown", "skip")
    assert r.exit_code == 0 and "unknown_symbol  1" in r.stdout
    assert len(TokenizedDataset(tmp_path / "s")) == 4


@pytest.mark.parametrize(("make", "message"), [
    ("truncated", r"cut\.fa\.gz: line \d+: gzip data ends early"),
    ("text", r"notfasta\.txt: line 3: expected a FASTA header"),
    ("binary", r"blob\.bin: line 1: binary data"),
])
def test_bad_files(tmp_path: Path, make: str, message: str) -> None:
    if make == "truncated":
        raw = (DATA / "biopython/flowers.pro.gz").read_bytes()
        src = tmp_path / "cut.fa.gz"
        src.write_bytes(raw[:600])
    elif make == "text":
        src = tmp_path / "notfasta.txt"
        src.write_text("\n\nhello world\n>x\nAC\n")
    else:
        src = tmp_path / "blob.bin"
        src.write_bytes(bytes(range(256)))
    out = tmp_path / "o"
    r = run("tokenize", src, "-o", out, "--alphabet", "protein")
    assert r.exit_code == 1
    assert re.match(r"seqpad: error: .*" + message, r.stderr), r.stderr
    assert not out.exists()


def test_usage_and_output_errors(tmp_path: Path) -> None:
    src = DATA / "needletail/test.fa"
    r = run("tokenize", src, "-o", tmp_path / "s", "--alphabet", "dna", "--max-length", "5")
    assert r.exit_code == 2 and "--truncate or --drop-long" in r.stderr
    r = run("tokenize", src, "-o", tmp_path / "s")
    assert r.exit_code == 2 and "--alphabet" in r.stderr
    r = run("tokenize", tmp_path / "missing.fa", "-o", tmp_path / "s", "--alphabet", "dna")
    assert r.exit_code == 1 and "missing.fa: no such file" in r.stderr
    assert run("tokenize", src, "-o", tmp_path / "s", "--alphabet", "dna").exit_code == 0
    r = run("tokenize", src, "-o", tmp_path / "s", "--alphabet", "dna")
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = run("tokenize", src, src, "-o", tmp_path / "s", "--alphabet", "dna", "--force")
    assert r.exit_code == 0 and "records written   4" in r.stdout
    r = run("info", tmp_path / "nothing")
    assert r.exit_code == 1 and "no such store" in r.stderr


def test_stdin_gzip(tmp_path: Path) -> None:
    raw = gzip.compress((DATA / "needletail/test.fa").read_bytes())
    r = run("tokenize", "-", "-o", tmp_path / "s", "--alphabet", "dna", input=raw)
    assert r.exit_code == 0, r.output
    ds = TokenizedDataset(tmp_path / "s", with_names=True)
    assert [(n, ds.tokenizer.decode(i)) for n, i in (ds[0], ds[1])] == \
        [("test", "AGCTGATCGA"), ("test2", "TAGC")]


def test_help_and_version() -> None:
    r = run("tokenize", "--help")
    assert r.exit_code == 0 and "Examples:" in r.stdout and "--drop-long" in r.stdout
    r = run("--help")
    assert r.exit_code == 0 and "seqpad info" in r.stdout
    r = run("--version")
    assert r.exit_code == 0 and re.match(r"seqpad, version \d", r.stdout)


def test_real_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "s"
    src = str(DATA / "biopython/f002")
    assert run("tokenize", src, "-o", out, "--alphabet", "dna").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # T is not RNA (first T of f002: residue 27, hand-counted): a real process must fail
    # with one line, and --force must not have removed the old store.
    cmd = [sys.executable, "-m", "seqpad", "tokenize", src, "-o", str(out), "--alphabet", "rna",
           "--force"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.startswith(f"seqpad: error: {src}: line 2: record "
                               "'gi|1348912|gb|G26680|G26680': position 27: symbol 'T'")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_cli_and_store_modules_do_not_import_torch() -> None:
    # Start-up time of `seqpad tokenize` matters for its throughput; torch is only needed
    # once a TokenizedDataset is used. (Loaded without seqpad/__init__, which imports all.)
    code = (
        "import sys, types; pkg = types.ModuleType('seqpad'); "
        f"pkg.__path__ = [{str(ROOT / 'seqpad')!r}]; sys.modules['seqpad'] = pkg; "
        "import seqpad.cli, seqpad.store, seqpad.fasta; assert 'torch' not in sys.modules"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def test_non_utf8_byte_in_sequence_is_shown_as_a_byte(tmp_path: Path) -> None:
    src = tmp_path / "l1.fa"
    src.write_bytes(b">a\nACGT\nAC\xe9GT\n")
    r = run("tokenize", src, "-o", tmp_path / "s", "--alphabet", "dna")
    assert r.exit_code == 1
    assert f"{src}: line 3: record 'a': position 7: byte 0xe9 (not UTF-8 text)" in r.stderr


def test_truncate_and_drop_long_exclude_each_other(tmp_path: Path) -> None:
    src = tmp_path / "one.fa"
    src.write_text(">r\nMKVL\n")
    for order in (("--truncate", "--drop-long"), ("--drop-long", "--truncate")):
        r = run("tokenize", src, "-o", tmp_path / "s", "--alphabet", "protein",
                "--max-length", "3", *order)
        assert r.exit_code == 2 and "exclude each other" in r.output
        assert not (tmp_path / "s").exists()


def test_sigterm_leaves_no_temporary_store(tmp_path: Path) -> None:
    """A killed run (scheduler timeout) removes its half-written temporary store."""
    import signal
    import time

    out = tmp_path / "s.store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqpad", "tokenize", "-", "-o", str(out), "--alphabet", "protein"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b">a\n" + b"MKVL" * 2_000_000 + b"\n")  # 8 MB: a full write batch
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".s.store.tmp*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".s.store.tmp*")), "the writer never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert b"terminated" in err
    assert list(tmp_path.iterdir()) == []


def test_empty_input_writes_an_empty_store_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "empty.fa"
    src.write_bytes(b"")
    r = run("tokenize", src, "-o", tmp_path / "s", "--alphabet", "dna")
    assert r.exit_code == 0, r.output
    assert "records written   0" in r.stdout
    assert "warning: no records were written" in r.stderr
    assert len(TokenizedDataset(tmp_path / "s")) == 0


# ------------------------------------------------- named pipes and character devices
def _fifo_with_writer(path: Path, data: bytes):  # type: ignore[no-untyped-def]
    """A named pipe at ``path`` fed ``data`` by a thread once a reader opens it."""
    import threading

    os.mkfifo(path)

    def feed() -> None:
        with open(path, "wb") as w:  # blocks until the reader opens the pipe
            w.write(data)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


def test_a_named_pipe_is_read_as_a_stream(tmp_path: Path) -> None:
    src = DATA / "needletail/test.fa"
    fifo = tmp_path / "in.fifo"
    writer = _fifo_with_writer(fifo, gzip.compress(src.read_bytes()))
    out = tmp_path / "s"
    # --jobs 4: a pipe cannot be cut into pieces; it is read in this process, like '-'
    r = run("tokenize", fifo, "-o", out, "--alphabet", "dna", "--jobs", "4")
    writer.join(timeout=30)
    assert r.exit_code == 0, r.output
    ds = TokenizedDataset(out, with_names=True)
    assert [(n, ds.tokenizer.decode(i)) for n, i in (ds[0], ds[1])] == \
        [("test", "AGCTGATCGA"), ("test2", "TAGC")]


def test_an_error_in_a_named_pipe_gives_a_record_number_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    writer = _fifo_with_writer(fifo, b">a\nACGT\n>b\nACXT\n")
    r = run("tokenize", fifo, "-o", tmp_path / "s", "--alphabet", "dna")
    writer.join(timeout=30)
    assert r.exit_code == 1
    # the pipe cannot be read again to find the line: the record number instead
    assert r.stderr.startswith(f"seqpad: error: {fifo}: record #2: record 'b': position 3: "
                               "symbol 'X'"), r.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.fifo"]


def test_dev_stdin_and_a_character_device(tmp_path: Path) -> None:
    src = DATA / "needletail/test.fa"
    out = tmp_path / "s"
    # `cat a.fa | seqpad tokenize /dev/stdin ...`: stdin is a pipe
    p = subprocess.run([sys.executable, "-m", "seqpad", "tokenize", "/dev/stdin", "-o",
                        str(out), "--alphabet", "dna"], input=src.read_bytes(),
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert TokenizedDataset(out).names == ["test", "test2"]
    r = run("tokenize", os.devnull, "-o", tmp_path / "n", "--alphabet", "dna")
    assert r.exit_code == 0, r.output  # a character device: empty input
    assert len(TokenizedDataset(tmp_path / "n")) == 0


def test_a_socket_is_refused_with_what_it_is(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        r = run("tokenize", path, "-o", tmp_path / "s", "--alphabet", "dna")
    assert r.exit_code == 1
    assert "not a file, named pipe or character device" in r.stderr


def test_info_on_a_damaged_store_prints_one_line(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert run("tokenize", DATA / "needletail/test.fa", "-o", out, "--alphabet",
               "dna").exit_code == 0
    (out / "ids.npy").write_bytes(b"")
    r = run("info", out)
    assert r.exit_code == 1 and "Aborted" not in r.output
    assert r.stderr == f"seqpad: error: {out / 'ids.npy'}: empty or truncated, not a valid " \
        ".npy file; the store is corrupt\n"
