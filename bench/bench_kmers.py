"""Benchmark: k-mer tokenize (K=6, K=3, K=6 overlapping) against one-symbol tokenize (K=1).

Side by side in one run, interleaved repeats, medians; ratios are K=k time / K=1 time:

1. **store write** -- ``write_store(out, read_fasta(FILE), Tokenizer("dna", k=K))`` with
   ``jobs=1`` (parse, encode, write ``ids.npy``): what ``seqpad tokenize --kmer K`` does.
2. **in-memory encode** -- ``Tokenizer.encode_batch`` over the same records held as
   strings, in batches of about 1 M residues (the batch size ``write_store`` encodes at
   once; the Collator's batches are smaller), and ``Tokenizer.encode`` one record at a
   time.

Input: a synthetic DNA FASTA (uniform ACGT with runs of ``N`` about every 20 kb, records
of 200 b to 20 kb, 60 columns), written to bench/_work/. Target (issue 11): K=6 within 2x
of K=1.

Run:  python bench/bench_kmers.py            (40 MB, 3 repeats)
      python bench/bench_kmers.py --quick    (4 MB, 1 repeat)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable

import numpy as np
from _common import REPO, WORK, machine_note, median, table

sys.path.insert(0, str(REPO))

from seqpad import Tokenizer, read_fasta, write_store

CONFIGS = [("K=1", 1, 1), ("K=3 (codons)", 3, 3), ("K=6", 6, 6), ("K=6 stride 1", 6, 1)]


def make_fasta(mb: float, seed: int = 0) -> tuple[str, list[tuple[str, str]]]:
    rng = np.random.default_rng(seed)
    path = WORK / f"kmers_{mb:g}mb.fa"
    recs = []
    total = 0
    i = 0
    while total < mb * 1e6:
        n = int(rng.integers(200, 20_000))
        codes = rng.integers(0, 4, size=n)
        seq = np.frombuffer(b"ACGT", dtype=np.uint8)[codes]
        if rng.random() < n / 20_000:
            at = int(rng.integers(0, n))
            seq[at: at + 50] = ord("N")
        s = seq.tobytes().decode()
        recs.append((f"r{i}", s))
        total += n
        i += 1
    WORK.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for name, s in recs:
            f.write(f">{name}\n")
            f.write("".join(s[j:j + 60] + "\n" for j in range(0, len(s), 60)))
    return str(path), recs


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mb", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    mb = args.mb or (4 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 3)
    path, recs = make_fasta(mb)
    seqs = [s for _, s in recs]
    residues = sum(map(len, seqs))
    chunks: list[list[str]] = [[]]  # batches of about 1 M residues, as write_store uses
    size = 0
    for x in seqs:
        chunks[-1].append(x)
        size += len(x)
        if size >= 1 << 20:
            chunks.append([])
            size = 0
    toks = {label: Tokenizer("dna", k=k, stride=s) for label, k, s in CONFIGS}
    out = WORK / "kmers.store"
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for label, tok in toks.items():
            def store(tok: Tokenizer = tok) -> None:
                write_store(out, read_fasta(path), tok, overwrite=True, jobs=1)

            def batch(tok: Tokenizer = tok) -> None:
                for chunk in chunks:
                    tok.encode_batch(chunk)

            def one(tok: Tokenizer = tok) -> None:
                for s in seqs:
                    tok.encode(s)

            for what, fn in (("store write", store), ("encode_batch", batch),
                             ("encode per record", one)):
                times.setdefault((what, label), []).append(timed(fn))
    shutil.rmtree(out, ignore_errors=True)
    print(machine_note())
    print(f"{len(seqs)} records, {residues / 1e6:.1f} M residues, {repeats} repeat(s), "
          "medians; ratio = time / time of K=1 in the same row\n")
    rows = []
    for what in ("store write", "encode_batch", "encode per record"):
        base = median(times[(what, "K=1")])
        for label in toks:
            t = median(times[(what, label)])
            rows.append([what, label, f"{residues / t / 1e6:.0f}", f"{t / base:.2f}x"])
    print(table(["path", "tokenizer", "M residues/s", "vs K=1"], rows))


if __name__ == "__main__":
    main()
