"""Benchmark: collate throughput and padding waste, seqpad against fair-esm and sequence-models.

Two measurements per real proteome (``data/`` plus ``../shared/data/proteome`` when present):

**Collate throughput** (residues/s, higher is better) for random batches of ``B`` = 64
sequences, the same batches for every method, repeats interleaved, medians:

* seqpad ``Collator(Tokenizer("protein"))`` on a list of ``str`` -> ``Batch`` (tokens
  ``(B, L)`` int64, mask ``(B, 1, L)`` bool, lengths), and with ``add_bos/add_eos``;
* seqpad ``Collator`` on store records (``TokenizedDataset`` items: uint8 memmap views,
  fetched before timing);
* fair-esm ``Alphabet.from_architecture("ESM-1b").get_batch_converter()`` on
  ``(label, seq)`` pairs -> ``(labels, strs, tokens)`` (tokens with BOS+EOS, no mask);
* sequence-models ``SimpleCollater(PROTEIN_ALPHABET, pad=True)`` on ``(seq,)`` tuples ->
  ``(tokens,)`` (no mask).

**Padding waste** (pad tokens / all tokens in the padded batches, lower is better) of one
epoch at ``max_tokens`` = 16384 (averaged over ``--epochs`` epochs) for seqpad's shuffled
``TokenBudgetBatchSampler``; plain random batching (shuffle, then fill greedily up to the
budget); fair-esm's ``FastaBatchedDataset.get_batch_indices`` (sorts by length: the same
batches every epoch); sequence-models' ``SortishSampler`` + ``ApproxBatchSampler``
(sorted buckets of ``--sortish-buckets`` sequences, shuffled within and across buckets).

Run:  python bench/bench_collate.py            (full)
      python bench/bench_collate.py --quick    (one proteome, 1 repeat: a smoke test)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import WORK, find_proteomes, machine_note, median, read_records, short_name, table

Batches = list[list[int]]


# --------------------------------------------------------------------- samplers
def waste(batches: Batches, lengths: np.ndarray) -> tuple[float, int, int]:
    """(pad fraction, padded tokens, largest padded batch) of a list of index batches."""
    padded = real = biggest = 0
    for b in batches:
        ls = lengths[b]
        size = len(b) * int(ls.max())
        padded += size
        real += int(ls.sum())
        biggest = max(biggest, size)
    return (padded - real) / padded, padded, biggest


def random_batches(lengths: np.ndarray, max_tokens: int, seed: int) -> Batches:
    """Shuffle, then fill each batch greedily while len(batch) * max_len <= max_tokens."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    out: Batches = []
    batch: list[int] = []
    longest = 0
    for i in order.tolist():
        ell = int(lengths[i])
        if batch and (len(batch) + 1) * max(longest, ell) > max_tokens:
            out.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, ell)
    if batch:
        out.append(batch)
    return out


def sortish_batches(lengths: np.ndarray, max_tokens: int, bucket: int, epoch: int) -> Batches:
    """sequence-models' SortishSampler + ApproxBatchSampler (they use the global numpy RNG)."""
    from sequence_models.samplers import ApproxBatchSampler, SortishSampler

    state = np.random.get_state()
    try:
        sampler = SortishSampler(lengths, bucket, num_replicas=1, rank=0)
        sampler.set_epoch(epoch)  # seeds np.random with the epoch
        # iterate, not list(): its inherited __len__ fails (no drop_last attribute)
        batches = [list(b) for b in iter(ApproxBatchSampler(sampler, max_tokens, 10**9, lengths))]
    finally:
        np.random.set_state(state)
    return [b for b in batches if b]


def check_cover(batches: Batches, n: int, what: str) -> None:
    flat = sorted(i for b in batches for i in b)
    if flat != list(range(n)):
        raise SystemExit(f"{what}: one epoch does not cover every index exactly once")


# ------------------------------------------------------------------- throughput
def throughput(fn: Callable[[Any], object], inputs: Sequence[Any], residues: Sequence[int],
               min_time: float) -> float:
    """Residues/s calling fn on inputs in turn until min_time has passed (>= 1 call)."""
    done = i = 0
    t0 = time.perf_counter()
    while True:
        fn(inputs[i % len(inputs)])
        done += residues[i % len(inputs)]
        i += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return done / elapsed


def check_batch(batch: Any, seqs: list[str], tok: Any, bos: bool, eos: bool) -> None:
    """The seqpad batch must hold exactly these sequences (decoded), pads and mask."""
    import torch

    from seqpad.masks import lengths_to_mask

    want = [len(s) + bos + eos for s in seqs]
    assert batch.lengths.tolist() == want, "lengths"
    assert torch.equal(batch.mask, lengths_to_mask(batch.lengths, batch.tokens.shape[1])), "mask"
    for row, s, n in zip(batch.tokens, seqs, want, strict=True):
        ids = row[int(bos): n - int(eos)]
        assert tok.decode(ids.numpy()) == s.upper(), "ids"
        assert bool((row[n:] == tok.pad_id).all()), "padding"


# ------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.25,
                    help="seconds per throughput measurement (fair-esm: at least one batch)")
    ap.add_argument("--n-batches", type=int, default=48, help="distinct random batches")
    ap.add_argument("--epochs", type=int, default=3, help="sampler epochs averaged for waste")
    ap.add_argument("--sortish-buckets", type=int, nargs="+", default=[100, 1000],
                    help="SortishSampler bucket sizes to show")
    ap.add_argument("--seqpad-pool-sizes", type=int, nargs="*", default=[],
                    help="also show seqpad's sampler with these pool_size values "
                         "(its sortish pools, in batches; the default is the sampler's own)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (DataLoader workers use 1)")
    ap.add_argument("--quick", action="store_true", help="E. coli only, 1 repeat, short runs")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()

    import esm.data
    import torch
    from sequence_models.collaters import SimpleCollater
    from sequence_models.constants import PROTEIN_ALPHABET

    from seqpad.collate import Collator
    from seqpad.samplers import TokenBudgetBatchSampler
    from seqpad.store import TokenizedDataset, write_store
    from seqpad.tokenizer import Tokenizer

    # Collate functions run in DataLoader workers, where torch uses one thread; the same
    # here keeps the peers' small torch ops from fighting over the (shared) cores.
    torch.set_num_threads(args.threads)
    proteomes = find_proteomes()
    if args.quick:
        proteomes, args.repeats, args.min_time, args.epochs = proteomes[:1], 1, 0.1, 2
    args.work.mkdir(parents=True, exist_ok=True)
    print("proteomes used:\n" + "\n".join(f"  {p}" for p in proteomes))

    tok = Tokenizer("protein")
    collate = Collator(tok)
    collate_be = Collator(tok, add_bos=True, add_eos=True)
    esm_convert = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    sm_collate = SimpleCollater(PROTEIN_ALPHABET, pad=True)

    tput_rows, waste_rows, nb_rows, rep_rows = [], [], [], []
    out: dict[str, Any] = {"machine": machine_note(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for path in proteomes:
        name = short_name(path)
        records = read_records(path)
        names = [t.split(None, 1)[0] if t.strip() else "" for t, _s in records]
        seqs = [s for _t, s in records]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)

        store = args.work / f"{name}.seqpad"
        if not store.exists():
            write_store(store, zip(names, seqs, strict=True), tok)
        ds = TokenizedDataset(store)
        if not np.array_equal(np.asarray(ds.lengths), lengths):
            raise SystemExit(f"{store}: stored lengths differ from the FASTA; delete it and rerun")

        # the same random batches of B sequences for every method
        rng = np.random.default_rng(0)
        idx: list[list[int]] = []
        while len(idx) < args.n_batches:
            perm = rng.permutation(len(seqs)).tolist()
            idx += [perm[i:i + args.batch_size]
                    for i in range(0, len(perm) - args.batch_size + 1, args.batch_size)]
        idx = idx[:args.n_batches]
        res = [int(lengths[b].sum()) for b in idx]
        inputs = {
            "strings": [[seqs[i] for i in b] for b in idx],
            "store": [[ds[i] for i in b] for b in idx],
            "esm": [[(names[i], seqs[i]) for i in b] for b in idx],
            "sm": [[(seqs[i],) for i in b] for b in idx],
        }
        check_batch(collate(inputs["strings"][0]), inputs["strings"][0], tok, False, False)
        check_batch(collate(inputs["store"][0]), inputs["strings"][0], tok, False, False)
        check_batch(collate_be(inputs["strings"][0]), inputs["strings"][0], tok, True, True)
        methods: list[tuple[str, Callable[[Any], object], str]] = [
            ("seqpad strings", collate, "strings"),
            ("seqpad store", collate, "store"),
            ("seqpad strings bos+eos", collate_be, "strings"),
            ("fair-esm BatchConverter", esm_convert, "esm"),
            ("sequence-models SimpleCollater", sm_collate, "sm"),
        ]
        speeds: dict[str, list[float]] = {m: [] for m, _f, _k in methods}
        for r in range(args.repeats):
            k = r % len(methods)
            for m, fn, key in methods[k:] + methods[:k]:
                speeds[m].append(throughput(fn, inputs[key], res, args.min_time))
        med = {m: median(v) / 1e6 for m, v in speeds.items()}
        sm, fe = med["sequence-models SimpleCollater"], med["fair-esm BatchConverter"]
        pad_share = waste(idx, lengths)[0]  # of these random batches of B
        tput_rows.append([name, f"{100 * pad_share:.0f}%", f"{med['seqpad strings']:.1f}", f"{med['seqpad store']:.1f}",
                          f"{med['seqpad strings bos+eos']:.1f}", f"{sm:.2f}", f"{fe:.3f}",
                          f"{med['seqpad strings'] / sm:.1f}x",
                          f"{med['seqpad strings'] / fe:.0f}x",
                          f"{med['seqpad store'] / sm:.1f}x"])

        # ---- padding waste
        sampler = TokenBudgetBatchSampler(lengths, args.max_tokens, shuffle=True, seed=0)
        plans: dict[str, list[Batches]] = {"seqpad (shuffled)": []}
        for e in range(args.epochs):
            sampler.set_epoch(e)
            plans["seqpad (shuffled)"].append([list(map(int, b)) for b in sampler])
        for pool in args.seqpad_pool_sizes:
            other = TokenBudgetBatchSampler(lengths, args.max_tokens, shuffle=True, seed=0,
                                            pool_size=pool)
            plans[f"seqpad pool_size={pool}"] = []
            for e in range(args.epochs):
                other.set_epoch(e)
                plans[f"seqpad pool_size={pool}"].append([list(map(int, b)) for b in other])
        plans["random"] = [random_batches(lengths, args.max_tokens, seed=e)
                           for e in range(args.epochs)]
        fasta_ds = esm.data.FastaBatchedDataset(names, seqs)
        plans["fair-esm (sorted, fixed)"] = [fasta_ds.get_batch_indices(args.max_tokens, 0)]
        for bucket in args.sortish_buckets:
            plans[f"sortish b={bucket}"] = [
                sortish_batches(lengths, args.max_tokens, bucket, e) for e in range(args.epochs)]
        wrow, nrow, rrow = [name], [name], [name]
        w_out = {}
        for label, epochs in plans.items():
            for bs in epochs:
                check_cover(bs, len(lengths), f"{name} {label}")
            fractions = [waste(bs, lengths) for bs in epochs]
            w = float(np.mean([f[0] for f in fractions]))
            biggest = max(f[2] for f in fractions)
            flag = "" if biggest <= args.max_tokens else " (over budget!)"
            wrow.append(f"{100 * w:.2f}%{flag}")
            nrow.append(f"{np.mean([len(bs) for bs in epochs]):.0f}")
            # how shuffled: share of the next epoch's batches that repeat this epoch's
            nxt = epochs[1] if len(epochs) > 1 else epochs[0]  # fair-esm: fixed batches
            same = len({frozenset(b) for b in epochs[0]} & {frozenset(b) for b in nxt})
            rrow.append(f"{100 * same / len(nxt):.0f}%")
            w_out[label] = {"waste": w, "batches": [len(bs) for bs in epochs],
                            "largest_padded": biggest}
        waste_rows.append(wrow)
        nb_rows.append(nrow)
        rep_rows.append(rrow)
        out[name] = {"collate_mres_s": med, "collate_samples": speeds, "waste": w_out,
                     "records": len(seqs), "residues": int(lengths.sum())}
        print(f"  {name}: done", flush=True)

    print(f"\n## Collate throughput, B = {args.batch_size}, M residues/s "
          f"(medians of {args.repeats}, {machine_note()})\n")
    print(table(["proteome", "padding in the batches", "seqpad strings", "seqpad store", "seqpad strings bos+eos",
                 "sequence-models", "fair-esm", "strings / seq-models (target ~5x)",
                 "strings / fair-esm (target ~250x)", "store / seq-models"], tput_rows))
    labels = list(plans)
    print(f"\n## Padding waste at max_tokens = {args.max_tokens} "
          f"(pad / all tokens, mean of {args.epochs} epochs; target seqpad <= 3%)\n")
    print(table(["proteome", *labels], waste_rows))
    print("\nbatches per epoch:\n")
    print(table(["proteome", *labels], nb_rows))
    print("\nbatches of epoch 1 that repeat a batch of epoch 0 (0% = fully reshuffled):\n")
    print(table(["proteome", *labels], rep_rows))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
