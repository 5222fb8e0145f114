"""Train a small ByteNet-style CNN masked language model on the bundled E. coli proteome.

The whole seqpad pipeline, end to end:

    FASTA --(read_fasta, write_store)--> tokenized store --(TokenizedDataset)-->
    TokenBudgetBatchSampler (length-bucketed batches under a token budget) -->
    MaskedLMCollator (masked ids and labels (B, L), mask (B, 1, L)) --> build_model(...) -->
    cross-entropy on the masked positions --> save_checkpoint

Run (a few hundred steps on a laptop CPU take a minute or two)::

    python examples/train_masked_lm.py --steps 300
    python examples/train_masked_lm.py --steps 300 --device cuda --max-tokens 32768

The store is built once from ``data/UP000000625-E.coli.fasta.gz`` (or ``--fasta``) into
``--store`` (default: a cache directory under the system temp dir) and reused afterwards.
The script prints the loss and tokens/s as it goes (a progress bar on stderr), then the
first and last smoothed losses, and exits with status 1 if the loss did not fall.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from seqpad.collate import Batch
from seqpad.fasta import read_fasta
from seqpad.masked_lm import MaskedLMCollator
from seqpad.models import build_model, load_model, save_checkpoint
from seqpad.samplers import TokenBudgetBatchSampler
from seqpad.store import StoreError, TokenizedDataset, write_store
from seqpad.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FASTA = REPO / "data" / "UP000000625-E.coli.fasta.gz"


# ------------------------------------------------------------------- data
def default_store_path(fasta: Path) -> Path:
    """A cache location for the store of ``fasta``, keyed by its path, size and mtime."""
    st = fasta.stat()
    key = hashlib.sha1(f"{fasta.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return Path(tempfile.gettempdir()) / "seqpad-examples" / f"{fasta.name}.{key[:12]}.store"


def ensure_store(fasta: Path, store: Path, *, quiet: bool = False) -> TokenizedDataset:
    """Tokenize ``fasta`` into ``store`` unless it is already there; open it.

    ``write_store`` writes atomically (temporary directory, then rename), so a concurrent
    run that loses the race finds a complete store and just opens it.
    """
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        if not quiet:
            print(f"tokenizing {fasta} -> {store}", flush=True)
        try:
            summary = write_store(store, read_fasta(fasta), Tokenizer("protein"))
            if not quiet:
                print(summary.format(), flush=True)
        except StoreError:
            if not store.exists():
                raise
    return TokenizedDataset(store)


def make_loader(
    ds: TokenizedDataset,
    *,
    max_tokens: int,
    max_length: int,
    seed: int,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> tuple[DataLoader[Batch], TokenBudgetBatchSampler, MaskedLMCollator]:
    """DataLoader over length-bucketed batches of at most ``max_tokens`` padded positions.

    The sampler sees the lengths after cropping to ``max_length`` (what the collator will
    produce), so the budget holds for the padded batches it builds.
    """
    lengths = ds.lengths.clip(max=max_length)
    sampler = TokenBudgetBatchSampler(
        lengths, max_tokens, shuffle=True, seed=seed, num_replicas=num_replicas, rank=rank
    )
    # BERT-style masking (15% of residues; 80% mask, 10% random residue, 10% unchanged)
    # is drawn with the crops, from one stream per (seed, epoch, worker); each rank its own.
    collator = MaskedLMCollator(ds.tokenizer, max_length=max_length, crop="random",
                                seed=seed * 1000 + (rank or 0))
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collator, num_workers=0)
    return loader, sampler, collator


def endless(
    loader: DataLoader[Batch], sampler: TokenBudgetBatchSampler, collator: MaskedLMCollator
) -> Iterator[Batch]:
    """Batches epoch after epoch, reshuffled (sampler) and re-cropped (collator) each time."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        collator.set_epoch(epoch)
        yield from loader
        epoch += 1


# ---------------------------------------------------------------- masking
def mlm_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Masked-LM cross-entropy on the chosen positions; returns (loss, real tokens).

    The batch comes from :class:`seqpad.MaskedLMCollator`: ``tokens`` are the corrupted
    inputs (masked positions hold ``mask_id``, a real token, so the mask is unchanged) and
    ``labels`` the original ids at the chosen positions, -100 elsewhere.
    """
    assert batch.labels is not None, "batches must come from MaskedLMCollator"
    logits = model(batch.tokens, batch.mask)  # (B, V, L), zero at padding
    loss = F.cross_entropy(logits, batch.labels, ignore_index=-100)
    return loss, int(batch.lengths.sum())


def model_config(vocab_size: int, pad_id: int, d_model: int, n_layers: int) -> dict[str, Any]:
    return {
        "arch": "cnn",
        "vocab_size": vocab_size,
        "pad_id": pad_id,
        "d_model": d_model,
        "n_layers": n_layers,
        "kernel_size": 5,
        "max_dilation": 4,
        "head": "token",  # per-position logits over the vocabulary
        "dropout": 0.0,
    }


# --------------------------------------------------------------- reporting
class LossTracker:
    """Per-step losses; compares the mean of the first and last windows."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.ema: float | None = None

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss

    def window(self) -> int:
        return max(1, min(50, len(self.losses) // 5))

    def first_last(self) -> tuple[float, float]:
        w = self.window()
        return (sum(self.losses[:w]) / w, sum(self.losses[-w:]) / w)


def report(tracker: LossTracker, steps: int, tokens: int, seconds: float) -> bool:
    """Print the summary lines; returns whether the loss fell."""
    first, last = tracker.first_last()
    print(f"done: {steps} steps, {tokens:,} tokens in {seconds:.1f} s, "
          f"tokens/s {tokens / max(seconds, 1e-9):,.0f}")
    w = tracker.window()
    fell = last < first
    verdict = "loss fell" if fell else "loss did NOT fall"
    print(f"smoothed loss (mean of {w} steps): first {first:.4f} -> last {last:.4f}: {verdict}")
    return fell


def parse_args(argv: list[str] | None = None, description: str = __doc__ or "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--max-tokens", type=int, default=8192,
                   help="padded tokens per batch (per rank for DDP; default 8192)")
    p.add_argument("--max-length", type=int, default=512,
                   help="longer proteins are randomly cropped to this (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    p.add_argument("--store", type=Path, default=None,
                   help="tokenized store (built from --fasta if missing; default: a cache "
                        "directory under the system temp dir)")
    p.add_argument("--save", type=Path, default=None,
                   help="write a checkpoint here at the end (and check it reloads)")
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    store = args.store if args.store is not None else default_store_path(args.fasta)
    ds = ensure_store(args.fasta, store)
    tok = ds.tokenizer
    print(f"store {store}: {len(ds):,} proteins, {int(ds.lengths.sum()):,} residues")

    loader, sampler, collator = make_loader(
        ds, max_tokens=args.max_tokens, max_length=args.max_length, seed=args.seed
    )
    model = build_model(model_config(tok.vocab_size, tok.pad_id, args.d_model, args.n_layers))
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {model.config['arch']} d_model={args.d_model} n_layers={args.n_layers} "
          f"dilations={model.config['dilations']} params={n_params:,}; "
          f"{len(sampler)} batches/epoch at max_tokens={args.max_tokens}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, min(100, args.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )

    tracker = LossTracker()
    tokens_seen = 0
    batches = endless(loader, sampler, collator)
    start = time.perf_counter()

    def status(_: Any) -> str:
        elapsed = time.perf_counter() - start
        return f"loss {tracker.ema or float('nan'):.3f}  {tokens_seen / max(elapsed, 1e-9):,.0f} tokens/s"

    with click.progressbar(length=args.steps, label="training", file=sys.stderr,
                           item_show_func=status) as bar:
        for step in range(1, args.steps + 1):
            batch = next(batches).to(device, non_blocking=True)
            loss, n_tok = mlm_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tracker.add(loss.item())
            tokens_seen += n_tok
            bar.update(1, step)
            if step % args.log_every == 0 or step == args.steps:
                elapsed = time.perf_counter() - start
                print(f"step {step}/{args.steps} loss {tracker.ema:.4f} "
                      f"tokens/s {tokens_seen / elapsed:,.0f}", flush=True)
    seconds = time.perf_counter() - start
    fell = report(tracker, args.steps, tokens_seen, seconds)

    if args.save is not None:
        save_checkpoint(args.save, model, step=args.steps, optimizer=opt.state_dict())
        reloaded = load_model(args.save, map_location=device)
        model.eval()
        probe = collator([ds[i] for i in range(4)]).to(device)
        with torch.no_grad():
            same = torch.equal(model(probe.tokens, probe.mask), reloaded(probe.tokens, probe.mask))
        print(f"saved checkpoint {args.save}; reloaded model gives identical outputs: {same}")
        if not same:
            return 1
    return 0 if fell or args.steps < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
