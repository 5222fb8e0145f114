"""Benchmark: ``seqpad tokenize`` against Biopython's parser (the floor) and peer tokenizers.

What is measured, side by side in one run (interleaved repeats, medians):

1. **parse only** -- Biopython's ``SimpleFastaParser`` over the big FASTA, in this
   process, doing nothing with the records: the floor any FASTA tokenizer built on
   Biopython pays.
2. **seqpad tokenize** -- the real command, ``python -m seqpad tokenize FILE -o STORE``,
   in a fresh subprocess: interpreter start-up, imports, parse, encode, writing the
   store and printing the summary.  Its peak RSS is read from ``os.wait4`` for that
   child alone (spawned by a tiny wrapper, so it inherits no RSS across fork).
   ``seqpad --help`` is timed too, to show the fixed start-up cost, and so is
   ``write_store(out, read_fasta(FILE), tokenizer)`` in this process (no start-up).
3. **fair-esm** -- ``SimpleFastaParser`` + ``esm.data.Alphabet.from_architecture("ESM-1b")
   .encode(seq)`` per record, in this process, ids discarded (nothing written).
4. **sequence-models** -- ``SimpleFastaParser`` + ``sequence_models.utils.Tokenizer(
   PROTEIN_ALPHABET).tokenize(seq)`` per record, the tokenizer its ``SimpleCollater`` uses.

The peers are far too slow to run over hundreds of MB, so they (and, for an
apples-to-apples row, seqpad's ``Tokenizer.encode``) run over a *sample* FASTA made of
randomly chosen real records (sizes ``--esm-mb`` / ``--sm-mb``); throughput per MB is
what is compared.  A last table compares encode alone on identical in-memory sequences.

Run:  python bench/bench_tokenize.py            (100 and 400 MB, 3 repeats)
      python bench/bench_tokenize.py --quick    (small sizes, 1 repeat: a smoke test)
Generated files go to bench/_work/ (git-ignored); ``--clean`` deletes them afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    WORK,
    find_proteomes,
    machine_note,
    median,
    read_records,
    short_name,
    table,
)
from Bio.SeqIO.FastaIO import SimpleFastaParser

MB = 1_000_000
LINE = 60


# --------------------------------------------------------------------------- data
def _render(records: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(title, sequence) -> (title, sequence wrapped at 60 columns with final newline)."""
    return [(t, "".join(s[i:i + LINE] + "\n" for i in range(0, len(s), LINE)) or "\n")
            for t, s in records]


def build_big_fasta(path: Path, target_bytes: int, rendered: list[tuple[str, str]]) -> None:
    """Write >= target_bytes of FASTA by repeating the real records.

    Copy k of a record gets the title ``c{k}_{original title}`` so names stay unique.
    Written to a temporary name and renamed, so a present file is a complete one.
    """
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    written, copy = 0, 0
    with open(tmp, "w", encoding="ascii", newline="\n") as f:
        while written < target_bytes:
            parts: list[str] = []
            for title, body in rendered:
                rec = f">c{copy}_{title}\n{body}"
                parts.append(rec)
                written += len(rec)
                if written >= target_bytes:
                    break
            f.write("".join(parts))
            copy += 1
    tmp.rename(path)


def build_sample(path: Path, target_bytes: int, rendered: list[tuple[str, str]],
                 seed: int = 0) -> None:
    """A FASTA of randomly chosen real records (no repeats) of about target_bytes."""
    if path.exists():
        return
    order = list(range(len(rendered)))
    random.Random(seed).shuffle(order)
    parts, written = [], 0
    for i in order:
        title, body = rendered[i]
        rec = f">{title}\n{body}"
        parts.append(rec)
        written += len(rec)
        if written >= target_bytes:
            break
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(parts), encoding="ascii")
    tmp.rename(path)


def parsed(path: Path) -> list[tuple[str, str]]:
    with open(path) as f:
        return list(SimpleFastaParser(f))


# ---------------------------------------------------------------------- measures
def parse_only(path: Path) -> float:
    t0 = time.perf_counter()
    n = 0
    with open(path) as f:
        for _title, seq in SimpleFastaParser(f):
            n += len(seq)
    return time.perf_counter() - t0


def in_process(path: Path, out: Path, tok: object, jobs: int = 1) -> float:
    """seqpad's library path, as the CLI runs it, minus process start-up and summary."""
    from seqpad.fasta import read_fasta
    from seqpad.store import write_store

    remove(out)
    t0 = time.perf_counter()
    write_store(out, read_fasta(path), tok, jobs=jobs)
    dt = time.perf_counter() - t0
    remove(out)
    return dt


def parse_and(encode: Callable[[str], object]) -> Callable[[Path], float]:
    def run(path: Path) -> float:
        t0 = time.perf_counter()
        with open(path) as f:
            for _title, seq in SimpleFastaParser(f):
                encode(seq)
        return time.perf_counter() - t0
    return run


# A tiny process that forks and execs the command and reports that child's wall time,
# peak RSS and exit status.  Spawning the command straight from this (large) process
# would let the child inherit our peak RSS across fork, so its ru_maxrss would be ours.
_WRAPPER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    f.write(f"{wall} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_child(cmd: list[str], log: Path, *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> tuple[float, float, int]:
    """Run cmd in a fresh process; (wall seconds, peak RSS MB of that child, exit code)."""
    result = log.with_suffix(".result")
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-I", "-S", "-c", _WRAPPER, str(result), *cmd],
                       stdout=out, stderr=subprocess.STDOUT, check=True, env=env, cwd=cwd)
    wall, maxrss, rc = result.read_text().split()
    return float(wall), int(maxrss) / 1024, int(rc)  # ru_maxrss is in KiB on Linux


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Cli:
    """``seqpad tokenize`` on one file; keeps every wall time and peak RSS."""

    def __init__(self, fasta: Path, work: Path, baseline: Path | None = None,
                 jobs: int | None = None) -> None:
        self.fasta = fasta
        self.jobs = jobs
        tag = ("" if baseline is None else ".baseline") + ("" if jobs is None else f".j{jobs}")
        self.out = work / (fasta.stem + tag + ".seqpad")
        self.log = work / (fasta.stem + tag + ".log")
        # --baseline: another seqpad source tree (e.g. `git archive <commit> seqpad`),
        # imported through PYTHONPATH from a working directory without a seqpad package
        self.env = None if baseline is None else {**os.environ, "PYTHONPATH": str(baseline)}
        self.cwd = None if baseline is None else work
        self.times: list[float] = []
        self.rss: list[float] = []
        self.checked = False

    def __call__(self) -> None:
        remove(self.out)
        cmd = [sys.executable, "-m", "seqpad", "tokenize", str(self.fasta), "-o", str(self.out),
               "--alphabet", "protein"]
        if self.jobs is not None:
            cmd += ["--jobs", str(self.jobs)]
        wall, rss, rc = run_child(cmd, self.log, env=self.env, cwd=self.cwd)
        if rc != 0:
            sys.exit(f"seqpad tokenize failed (exit {rc}):\n"
                     + self.log.read_text(errors="replace")[-2000:])
        if not self.checked:
            self.check()
        remove(self.out)
        self.times.append(wall)
        self.rss.append(rss)

    def check(self) -> None:
        """The store must hold every record and residue of the input (else we time garbage)."""
        from seqpad.store import TokenizedDataset

        n = residues = 0
        with open(self.fasta) as f:
            for _t, s in SimpleFastaParser(f):
                n += 1
                residues += len(s)
        ds = TokenizedDataset(self.out)
        got_n, got_res = len(ds), int(ds.lengths.sum())
        if (got_n, got_res) != (n, residues):
            sys.exit(f"store mismatch for {self.fasta.name}: {got_n} records / {got_res} residues,"
                     f" expected {n} / {residues}")
        self.checked = True
        summary = self.log.read_text(errors="replace").strip().splitlines()
        print(f"  checked {self.out.name}: {n} records, {residues} residues; CLI said: "
              f"{summary[-1] if summary else '(nothing)'}")


def check_peer_ids(records: list[tuple[str, str]], esm_alphabet: object,
                   sm_tokenizer: object, tok: object) -> None:
    """Each encoder must really map residues to its own vocabulary (hand-checkable)."""
    for _t, s in records[:20]:
        assert [esm_alphabet.all_toks[i] for i in esm_alphabet.encode(s)] == list(s)
        assert sm_tokenizer.untokenize(sm_tokenizer.tokenize(s)) == s
        assert tok.decode(tok.encode(s)) == s.upper()


# -------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 400],
                    help="sizes of the generated FASTA files (default 100 400)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--esm-mb", type=float, default=0.25,
                    help="FASTA sample size for fair-esm (it encodes ~0.1 M residues/s)")
    ap.add_argument("--sm-mb", type=float, default=4.0, help="sample size for sequence-models")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: sizes 10 40 MB, 1 repeat, small peer samples")
    ap.add_argument("--work", type=Path, default=WORK, help="where generated files go")
    ap.add_argument("--clean", action="store_true", help="delete generated files at the end")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--baseline", type=Path,
                    help="directory holding an older seqpad package (e.g. made with `git "
                         "archive COMMIT seqpad | tar -x -C DIR`): its `seqpad tokenize` is "
                         "timed in the same run, for a before/after ratio")
    args = ap.parse_args()
    if args.quick:
        args.sizes_mb, args.repeats, args.esm_mb, args.sm_mb = [10, 40], 1, 0.05, 0.5

    import esm.data
    from sequence_models.constants import PROTEIN_ALPHABET
    from sequence_models.utils import Tokenizer as SMTokenizer

    from seqpad.cli import default_jobs
    from seqpad.tokenizer import Tokenizer

    jobs = default_jobs()
    # An installed seqpad has its bytecode compiled (pip does it); an editable checkout
    # run with PYTHONDONTWRITEBYTECODE=1 would recompile seqpad's modules at every start.
    import compileall

    import seqpad
    compileall.compile_dir(Path(seqpad.__file__).parent, quiet=1)
    args.work.mkdir(parents=True, exist_ok=True)
    proteomes = find_proteomes()
    print("proteomes used:")
    records: list[tuple[str, str]] = []
    for p in proteomes:
        recs = read_records(p)
        records += recs
        print(f"  {p}  ({len(recs)} records)")
    rendered = _render(records)

    bigs: list[Path] = []
    for mb in args.sizes_mb:
        path = args.work / f"proteomes_{mb:g}MB.fasta"
        build_big_fasta(path, int(mb * MB), rendered)
        bigs.append(path)
    esm_sample = args.work / f"sample_{args.esm_mb:g}MB.fasta"
    sm_sample = args.work / f"sample_{args.sm_mb:g}MB.fasta"
    build_sample(esm_sample, int(args.esm_mb * MB), rendered)
    build_sample(sm_sample, int(args.sm_mb * MB), rendered)
    for p in [*bigs, esm_sample, sm_sample]:
        p.read_bytes()  # warm the page cache: every method then reads from memory
        print(f"  generated {p.name}: {p.stat().st_size / MB:.1f} MB")

    esm_alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    sm_tok = SMTokenizer(PROTEIN_ALPHABET)
    tok = Tokenizer("protein")
    check_peer_ids(parsed(esm_sample), esm_alphabet, sm_tok, tok)

    # in-memory sequences for the encode-only comparison
    esm_seqs = [s for _t, s in parsed(esm_sample)]
    sm_seqs = [s for _t, s in parsed(sm_sample)]

    def encode_all(fn: Callable[[str], object], seqs: list[str]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            for s in seqs:
                fn(s)
            return time.perf_counter() - t0
        return run

    def encode_batch(seqs: list[str], chunk: int = 1024) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            for i in range(0, len(seqs), chunk):
                tok.encode_batch(seqs[i:i + chunk])
            return time.perf_counter() - t0
        return run

    clis = {p: Cli(p, args.work, jobs=1) for p in bigs}  # one process
    pclis = {p: Cli(p, args.work) for p in bigs}  # the default: --jobs 0, one per CPU
    base_clis = {p: Cli(p, args.work, args.baseline.resolve()) for p in bigs} \
        if args.baseline else {}
    help_log = args.work / "help.log"
    startup_times: list[float] = []
    startup_rss: list[float] = []

    def startup() -> None:
        wall, rss, rc = run_child([sys.executable, "-m", "seqpad", "--help"], help_log)
        if rc != 0:
            sys.exit("seqpad --help failed:\n" + help_log.read_text(errors="replace"))
        startup_times.append(wall)
        startup_rss.append(rss)

    # name -> (callable returning seconds or None, list of seconds)
    timed: dict[str, list[float]] = {}
    tasks: list[tuple[str, Callable[[], float | None]]] = []
    for p in bigs:
        tasks.append((f"parse:{p.name}", lambda p=p: parse_only(p)))
        tasks.append((f"cli:{p.name}", clis[p]))
        tasks.append((f"pcli:{p.name}", pclis[p]))
        if p in base_clis:
            tasks.append((f"base:{p.name}", base_clis[p]))
    # seqpad's own work without the process start-up: write_store(read_fasta(...)) here
    tasks.append(("inproc", lambda: in_process(bigs[0], args.work / "inproc.seqpad", tok)))
    tasks.append(("pinproc", lambda: in_process(bigs[0], args.work / "inproc.seqpad", tok,
                                                jobs=jobs)))
    tasks += [
        ("startup", startup),
        ("parse:esm_sample", lambda: parse_only(esm_sample)),
        ("parse:sm_sample", lambda: parse_only(sm_sample)),
        ("esm:parse+encode", lambda: parse_and(esm_alphabet.encode)(esm_sample)),
        ("sm:parse+encode", lambda: parse_and(sm_tok.tokenize)(sm_sample)),
        ("seqpad:parse+encode", lambda: parse_and(tok.encode)(sm_sample)),
        ("enc:esm", encode_all(esm_alphabet.encode, esm_seqs)),
        ("enc:seqpad@esm", encode_all(tok.encode, esm_seqs)),
        ("enc:sm", encode_all(sm_tok.tokenize, sm_seqs)),
        ("enc:seqpad@sm", encode_all(tok.encode, sm_seqs)),
        ("enc:seqpad_batch@sm", encode_batch(sm_seqs)),
    ]
    for r in range(args.repeats):
        k = r % len(tasks)
        order = tasks[k:] + tasks[:k]  # rotate so no method always runs first
        print(f"repeat {r + 1}/{args.repeats} ...", flush=True)
        for name, fn in order:
            sec = fn()
            if sec is not None:
                timed.setdefault(name, []).append(sec)

    def mbs(path: Path, secs: list[float]) -> float:
        return path.stat().st_size / MB / median(secs)

    res_per_byte = {p: sum(len(s) for _t, s in parsed(p)) / p.stat().st_size
                    for p in (esm_sample, sm_sample)}
    st = median(startup_times)
    out: dict[str, object] = {"machine": machine_note(), "repeats": args.repeats,
                              "proteomes": [p.name for p in proteomes],
                              "startup_s": st, "startup_rss_mb": max(startup_rss)}

    print(f"\n## seqpad tokenize vs Biopython parse-only (medians of {args.repeats}, "
          f"{machine_note()})\n")
    print(f"`-j 1`: one process (parse, encode and write in turn); default: `--jobs 0` = "
          f"{jobs} worker processes here (one per CPU), each parsing pieces of the file.\n")
    rows, sizes_out = [], []
    for p in bigs:
        parse_mbs = mbs(p, timed[f"parse:{p.name}"])
        size = {"file": p.name, "mb": p.stat().st_size / MB, "parse_mbs": parse_mbs,
                "parse_s": timed[f"parse:{p.name}"]}
        for label, key, cli in (("-j 1", "j1", clis[p]), (f"default (-j {jobs})", "auto",
                                                          pclis[p])):
            cli_s = median(cli.times)
            cli_mbs = p.stat().st_size / MB / cli_s
            # start-up varies with load; when it is most of the run the difference is noise
            net_s = cli_s - st
            net_mbs = p.stat().st_size / MB / net_s if net_s > 0.2 * cli_s else float("nan")
            rows.append([f"{p.stat().st_size / MB:.0f}", label, f"{parse_mbs:.1f}",
                         f"{cli_mbs:.1f}", f"{cli_mbs / parse_mbs:.2f}x",
                         f"{min(timed[f'parse:{p.name}']) / min(cli.times):.2f}x",
                         f"{net_mbs / parse_mbs:.2f}x" if net_mbs == net_mbs else "n/a",
                         f"{max(cli.rss):.0f}"])
            size[key] = {"cli_mbs": cli_mbs, "cli_s": cli.times, "ratio": cli_mbs / parse_mbs,
                         "ratio_minus_startup": net_mbs / parse_mbs, "peak_rss_mb": cli.rss}
        sizes_out.append(size)
    print(table(["input MB", "seqpad tokenize", "parse-only MB/s", "seqpad MB/s",
                 "ratio (target >= 0.5x)", "ratio of best times", "ratio, start-up excluded",
                 "peak RSS MB"], rows))
    if base_clis:
        print(f"\nBefore / after in the same run (baseline: {args.baseline}):\n")
        base_rows = []
        for p in bigs:
            parse_s = median(timed[f"parse:{p.name}"])
            b, c = median(base_clis[p].times), median(clis[p].times)
            base_rows.append([f"{p.stat().st_size / MB:.0f}", f"{parse_s / b:.2f}x",
                              f"{parse_s / c:.2f}x", f"{b / c:.2f}x",
                              f"{max(base_clis[p].rss):.0f} / {max(clis[p].rss):.0f}"])
            out.setdefault("baseline", {})[p.name] = {"base_s": base_clis[p].times,
                                                      "cli_s": clis[p].times}
        print(table(["input MB", "baseline / parse-only", "current / parse-only",
                     "current speed-up", "peak RSS MB (baseline / current)"], base_rows))
    p0 = bigs[0]
    inproc_mbs = mbs(p0, timed["inproc"])
    pinproc_mbs = mbs(p0, timed["pinproc"])
    parse0 = mbs(p0, timed[f"parse:{p0.name}"])
    print(f"\nIn process (no start-up), `write_store(path, read_fasta({p0.name}), tokenizer)`: "
          f"{inproc_mbs:.1f} MB/s = {inproc_mbs / parse0:.2f}x parse-only; with "
          f"`jobs={jobs}`: {pinproc_mbs:.1f} MB/s = {pinproc_mbs / parse0:.2f}x")
    out["inproc"] = {"file": p0.name, "mbs": inproc_mbs, "ratio": inproc_mbs / parse0,
                     "s": timed["inproc"], "jobs": jobs, "jobs_mbs": pinproc_mbs,
                     "jobs_ratio": pinproc_mbs / parse0, "jobs_s": timed["pinproc"]}
    print(f"`seqpad --help` (start-up: interpreter + imports): {st:.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in startup_times)}), "
          f"peak RSS {max(startup_rss):.0f} MB")
    out["sizes"] = sizes_out

    cli_min = min(s["j1"]["cli_mbs"] for s in sizes_out)  # the conservative seqpad figure
    pcli_min = min(s["auto"]["cli_mbs"] for s in sizes_out)
    print(f"\n## Parse + encode, peers vs seqpad (seqpad tokenize CLI = {cli_min:.1f} MB/s "
          f"with -j 1, {pcli_min:.1f} MB/s by default (-j {jobs}): the slowest size above, "
          "start-up and store writing included; seqpad in process = "
          f"{inproc_mbs:.1f} / {pinproc_mbs:.1f} MB/s, store writing included)\n")
    peer_rows = []
    peers = [
        ("Biopython parse only", "parse", sm_sample, "parse:sm_sample"),
        ("fair-esm Alphabet.encode", "parse + encode (ESM-1b), nothing written", esm_sample,
         "esm:parse+encode"),
        ("sequence-models Tokenizer", "parse + tokenize, nothing written", sm_sample,
         "sm:parse+encode"),
        ("seqpad Tokenizer.encode", "parse + encode per record, nothing written", sm_sample,
         "seqpad:parse+encode"),
    ]
    out["peers"] = {}
    for label, what, path, key in peers:
        v = mbs(path, timed[key])
        peer_rows.append([label, what, f"{path.stat().st_size / MB:.2f}", f"{v:.2f}",
                          f"{cli_min / v:.1f}x", f"{pcli_min / v:.1f}x",
                          f"{inproc_mbs / v:.1f}x", f"{pinproc_mbs / v:.1f}x"])
        out["peers"][key] = {"mbs": v, "sample_mb": path.stat().st_size / MB, "s": timed[key]}
    print(table(["method", "includes", "sample MB", "MB/s", "seqpad CLI -j 1 / this",
                 f"seqpad CLI -j {jobs} / this", "in process, 1 / this",
                 f"in process, jobs={jobs} / this"], peer_rows))

    print("\n## Encode only, identical in-memory sequences (M residues/s)\n")
    enc_rows = []
    out["encode"] = {}
    for label, seqs, peer_key, ours_key in [
        ("fair-esm Alphabet.encode", esm_seqs, "enc:esm", "enc:seqpad@esm"),
        ("sequence-models Tokenizer.tokenize", sm_seqs, "enc:sm", "enc:seqpad@sm"),
    ]:
        n = sum(map(len, seqs))
        peer = n / median(timed[peer_key]) / 1e6
        ours = n / median(timed[ours_key]) / 1e6
        enc_rows.append([label, f"{n / 1e6:.2f}", f"{peer:.2f}", f"{ours:.1f}",
                         f"{ours / peer:.0f}x"])
        out["encode"][peer_key] = {"mres_s": peer, "seqpad_mres_s": ours, "residues": n}
    n = sum(map(len, sm_seqs))
    batch = n / median(timed["enc:seqpad_batch@sm"]) / 1e6
    sm_peer = out["encode"]["enc:sm"]["mres_s"]
    enc_rows.append(["(seqpad encode_batch, chunks of 1024)", f"{n / 1e6:.2f}", f"{sm_peer:.2f}",
                     f"{batch:.1f}", f"{batch / sm_peer:.0f}x"])
    out["encode"]["seqpad_batch"] = batch
    print(table(["peer", "M residues", "peer M res/s", "seqpad encode M res/s",
                 "seqpad / peer"], enc_rows))
    print(f"\nresidues per byte of FASTA: {res_per_byte[sm_sample]:.3f}")

    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.clean:
        for p in [*bigs, esm_sample, sm_sample]:
            remove(p)
    print("\nproteomes:", ", ".join(short_name(p) for p in proteomes))


if __name__ == "__main__":
    main()
