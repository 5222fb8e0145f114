"""Benchmark: masked-LM batches from store records, seqpad against Hugging Face and the old example.

For random batches of ``B`` = 64 ``TokenizedDataset`` records (uint8 memmap views fetched
before timing; the same batches for every method), repeats interleaved, medians,
residues/s (real residues; higher is better):

* seqpad ``MaskedLMCollator(tok, seed=0)`` -> ``Batch`` with corrupted ``tokens``,
  ``labels``, ``mask``, ``lengths`` (15% of residues; 80% mask / 10% random / 10% kept);
* seqpad ``Collator`` alone (no masking: the floor);
* the masking ``examples/train_masked_lm.py`` had before ``MaskedLMCollator`` (torch ops on
  the padded batch, copied below), after ``Collator``;
* Hugging Face ``DataCollatorForLanguageModeling`` (``mlm_probability=0.15``, seeded) with an
  ``EsmTokenizer`` over the same vocabulary, on the same records as 1-D int64 tensors (made
  before timing) -- when ``transformers`` imports; it also builds no padding mask.

Run:  python bench/bench_masked_lm.py            (every proteome, 5 repeats)
      python bench/bench_masked_lm.py --quick    (E. coli only, 3 repeats of 30 batches)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import WORK, find_proteomes, machine_note, median, read_records, short_name, table

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"


def old_mask_tokens(tokens: torch.Tensor, mask: torch.Tensor, tokenizer: Any, *,
                    rate: float = 0.15, generator: torch.Generator | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The example's masking before MaskedLMCollator (verbatim, for the baseline)."""
    real = mask[:, 0, :]
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    chosen = real & (u < rate)
    if not bool(chosen.any()):  # tiny batch: choose at least one real position
        first = real.flatten().nonzero()[:1]
        chosen = chosen.flatten().index_fill(0, first.flatten(), True).view_as(real)
    targets = tokens.masked_fill(~chosen, -100)
    v = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    aa = torch.as_tensor(tokenizer.encode(STANDARD_AA).astype("int64"), device=tokens.device)
    random_aa = aa[torch.randint(len(aa), tokens.shape, generator=generator,
                                 device=tokens.device)]
    inputs = torch.where(chosen & (v < 0.8), torch.full_like(tokens, tokenizer.mask_id), tokens)
    inputs = torch.where(chosen & (v >= 0.8) & (v < 0.9), random_aa, inputs)
    return inputs, targets


def hf_collator(tok: Any) -> Any | None:
    """HF DataCollatorForLanguageModeling over an EsmTokenizer with seqpad's vocabulary."""
    try:
        from transformers import DataCollatorForLanguageModeling
        from transformers.models.esm.tokenization_esm import EsmTokenizer
    except Exception as e:  # any import failure: not available
        print(f"transformers not importable ({type(e).__name__}: {e}); HF column skipped")
        return None
    vocab = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(tok.vocab) + "\n")
    names = dict(zip(tok.vocab[:5], ("pad", "unk", "mask", "bos", "eos"), strict=True))
    assert names == {"<pad>": "pad", "<unk>": "unk", "<mask>": "mask", "<bos>": "bos",
                     "<eos>": "eos"}
    hf = EsmTokenizer(vocab, unk_token="<unk>", cls_token="<bos>", pad_token="<pad>",
                      mask_token="<mask>", eos_token="<eos>")
    return DataCollatorForLanguageModeling(hf, mlm_probability=0.15, seed=0)


def make_methods(tok: Any, recs: list[list[Any]], tens: list[list[torch.Tensor]],
                 hf: Any | None) -> dict[str, Callable[[], Any]]:
    """The timed callables, each collating (and masking) every batch once."""
    from seqpad import Collator, MaskedLMCollator

    mlm = MaskedLMCollator(tok, seed=0)
    plain = Collator(tok)
    gen = torch.Generator().manual_seed(0)
    methods: dict[str, Callable[[], Any]] = {
        "seqpad MaskedLMCollator": lambda: [mlm(b) for b in recs],
        "seqpad Collator (no masking)": lambda: [plain(b) for b in recs],
        "Collator + old example masking": lambda: [
            old_mask_tokens((x := plain(b)).tokens, x.mask, tok, generator=gen)
            for b in recs],
    }
    if hf is not None:
        methods["HF DataCollatorForLanguageModeling"] = lambda: [hf(b) for b in tens]
    return methods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="E. coli only, 3 repeats of 30 batches")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=100, help="batches per proteome")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", default=str(WORK))
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in DataLoader workers

    from pathlib import Path

    from seqpad import Tokenizer
    from seqpad.store import TokenizedDataset, write_store

    tok = Tokenizer("protein")
    hf = hf_collator(tok)
    proteomes = find_proteomes()
    if args.quick:
        proteomes = [p for p in proteomes if "coli" in p.name][:1] or proteomes[:1]
        args.repeats, args.batches = 3, min(args.batches, 30)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(machine_note(), f"; torch threads 1; B={args.batch_size}")
    rows = []
    for path in proteomes:
        name = short_name(path)
        store = work / f"{name}.seqpad"
        if not store.exists():
            write_store(store, read_records(path), tok)
        ds = TokenizedDataset(store)
        rng = np.random.default_rng(0)
        idx = [rng.choice(len(ds), args.batch_size, replace=False).tolist()
               for _ in range(args.batches)]
        recs = [[ds[i] for i in b] for b in idx]
        tens = [[torch.from_numpy(r.astype(np.int64)) for r in b] for b in recs]
        residues = sum(len(r) for b in recs for r in b)

        methods = make_methods(tok, recs, tens, hf)
        for fn in methods.values():  # warm-up: first calls, lazy imports
            fn()
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.repeats):
            for k, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        base = median(times["seqpad MaskedLMCollator"])
        for k, ts in times.items():
            t = median(ts)
            rows.append([name, k, f"{residues / t / 1e6:,.1f}", f"{t / base:.2f}x"])
    print(table(["proteome", "method", "M residues/s", "time / MaskedLMCollator"], rows))
    print("target (issue 11): MaskedLMCollator >= 30 M residues/s from store records at B=64")


if __name__ == "__main__":
    main()
