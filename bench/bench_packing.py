"""Benchmark: packed batches (PackingBatchSampler + PackingCollator) vs padded batches.

1. Waste (padding share of the ``(B, L)`` tensors) over one epoch of every proteome found
   (``data/`` and ``../shared/data/proteome``), at ``row_length`` 1024..16384, for
   * packing: ``PackingBatchSampler(rows_per_batch=R)`` (random order, best fit), rows
     placed by the collator's next fit; ``R = max(1, budget // row_length)``; a batch
     uses as many rows as its sequences need (the collator's default ``num_rows=None``);
   * token-budget bucketing: ``TokenBudgetBatchSampler(max_tokens=budget)``, lengths
     cropped to ``row_length``;
   * random batches: shuffled, ``budget // mean length`` sequences per batch, padded to
     the longest (cropped to ``row_length``).
   Sequences longer than a row are cropped to it in every scheme (not counted as waste).
2. A masked ByteNet CNN training step (forward, cross-entropy, backward, AdamW) on packed
   batches (``model(batch)`` with ``segment_ids``) vs token-budget padded batches of the
   same budget, E. coli, interleaved step by step, in real tokens per second.

Run:  python bench/bench_packing.py            (~2-4 min on 2 busy cores)
      python bench/bench_packing.py --quick    (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import find_proteomes, machine_note, read_records, short_name, table

from seqpad import (
    Collator,
    PackingBatchSampler,
    PackingCollator,
    TokenBudgetBatchSampler,
    Tokenizer,
)
from seqpad.models import build_model
from seqpad.packing import next_fit


def waste_packing(lens: np.ndarray, L: int, R: int) -> float:
    real = slots = 0
    for b in PackingBatchSampler(lens, L, rows_per_batch=R, seed=0):
        n = np.minimum(lens[b], L)
        rows, _ = next_fit(n, L)
        real += int(n.sum())
        slots += (int(rows[-1]) + 1) * L
    return 1 - real / slots


def waste_padded(lens: np.ndarray, batches: list[list[int]], L: int) -> float:
    real = slots = 0
    for b in batches:
        n = np.minimum(lens[b], L)
        real += int(n.sum())
        slots += len(b) * int(n.max())
    return 1 - real / slots


def waste_table(lengths: dict[str, np.ndarray], row_lengths: list[int], budget: int) -> str:
    rows = []
    for name, lens in lengths.items():
        for L in row_lengths:
            R = max(1, budget // L)
            clipped = np.minimum(lens, L)
            bucket = list(TokenBudgetBatchSampler(clipped, max(budget, L), seed=0))
            per = max(1, int(max(budget, L) // clipped.mean()))
            perm = np.random.default_rng(0).permutation(len(lens))
            random_batches = [perm[i:i + per].tolist() for i in range(0, len(perm), per)]
            rows.append([name, L, R, f"{100 * waste_packing(lens, L, R):.3f}%",
                         f"{100 * waste_padded(lens, bucket, L):.2f}%",
                         f"{100 * waste_padded(lens, random_batches, L):.1f}%"])
    return table(["proteome", "row_length", "rows/batch", "packing", "token budget",
                  "random"], rows)


def train_compare(records: list[str], L: int, R: int, steps: int, d_model: int,
                  n_layers: int) -> str:
    tok = Tokenizer("protein")
    lens = np.array([len(s) for s in records])
    budget = R * L
    packed_batches = [PackingCollator(tok, L, crop="start")([records[i] for i in b])
                      for b in list(PackingBatchSampler(lens, L, rows_per_batch=R))[:steps]]
    padded_batches = [Collator(tok, max_length=L, crop="start")([records[i] for i in b])
                      for b in list(TokenBudgetBatchSampler(np.minimum(lens, L), budget))[:steps]]
    cfg = {"arch": "cnn", "vocab_size": tok.vocab_size, "d_model": d_model,
           "n_layers": n_layers, "kernel_size": 5}
    models, opts = {}, {}
    for k in ("packed", "padded"):
        torch.manual_seed(0)
        models[k] = build_model(cfg)
        opts[k] = torch.optim.AdamW(models[k].parameters(), lr=1e-3)

    def step(kind: str, batch: object) -> tuple[float, int]:
        model, opt = models[kind], opts[kind]
        t0 = time.perf_counter()
        logits = model(batch)
        targets = batch.tokens.masked_fill(~batch.mask[:, 0], -100)  # type: ignore[attr-defined]
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, int(batch.mask.sum())  # type: ignore[attr-defined]

    step("packed", packed_batches[0])  # warm-up
    step("padded", padded_batches[0])
    rates: dict[str, list[float]] = {"packed": [], "padded": []}
    waste: dict[str, list[int]] = {"packed": [0, 0], "padded": [0, 0]}
    n = min(len(packed_batches), len(padded_batches))
    for i in range(n):  # interleaved, alternating which goes first
        order = ("packed", "padded") if i % 2 == 0 else ("padded", "packed")
        for kind in order:
            batch = packed_batches[i] if kind == "packed" else padded_batches[i]
            dt, real = step(kind, batch)
            rates[kind].append(real / dt)
            waste[kind][0] += real
            waste[kind][1] += batch.tokens.numel()
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = [[k, f"{med[k]:,.0f}", f"{100 * (1 - waste[k][0] / waste[k][1]):.2f}%",
             f"{med[k] / med['padded']:.2f}x"] for k in ("packed", "padded")]
    return (f"masked ByteNet CNN training step, d_model={d_model}, n_layers={n_layers}, "
            f"{n} steps each, budget {budget} tokens (packed: {R} rows of {L})\n"
            + table(["batches", "real tokens/s (median of steps)", "waste", "vs padded"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=int, default=16384, help="tokens per batch")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-row-length", type=int, default=1024)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--skip-waste", action="store_true", help="only the training step")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    paths = find_proteomes()
    row_lengths = [1024, 2048, 4096, 8192, 16384]
    if args.quick:
        paths = paths[:1]
        row_lengths = [1024, 16384]
        args.steps = 4
    print(machine_note(), f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    lengths, seqs = {}, {}
    for p in paths:
        recs = [s for _, s in read_records(p)]
        lengths[short_name(p)] = np.array([len(s) for s in recs])
        seqs[short_name(p)] = recs
    if not args.skip_waste:
        print("\nPadding waste over one epoch (share of the (B, L) positions that are "
              "padding):")
        print(waste_table(lengths, row_lengths, args.budget))
    L = args.train_row_length
    name = "E.coli" if "E.coli" in seqs else next(iter(seqs))
    print(f"\n{name}:")
    print(train_compare(seqs[name], L, max(1, args.budget // L), args.steps, args.d_model,
                        args.n_layers))


if __name__ == "__main__":
    main()
