"""Distributed (DDP) masked-LM training: ``train_masked_lm.py`` over several processes.

Run on CPU with two processes (gloo)::

    torchrun --nproc_per_node 2 examples/ddp_train.py --steps 300
    # or, without the torchrun script on PATH, bound to the loopback interface:
    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 \\
        --master_port 29500 examples/ddp_train.py --steps 300

On GPUs pass ``--device cuda`` (each rank uses ``cuda:LOCAL_RANK``, backend nccl).

What changes from the single-process example:

* ``convert_sync_batchnorm`` turns every ``MaskedBatchNorm1d`` into a
  ``MaskedSyncBatchNorm1d``: batch statistics are taken over the real tokens of *all*
  ranks' batches (ranks may hold different batch shapes);
* ``TokenBudgetBatchSampler(num_replicas=world, rank=rank)`` gives each rank disjoint
  batches, the same number on every rank, reshuffled with ``set_epoch``;
* the model is wrapped in ``DistributedDataParallel`` (gradients averaged);
* rank 0 alone builds the store (the others wait at a barrier) and prints; losses and
  token counts are all-reduced for the report. At the end the script checks that every
  rank holds the same weights.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# The single-process example (same folder) provides data, masking and reporting helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_masked_lm import (
    LossTracker,
    default_store_path,
    endless,
    ensure_store,
    make_loader,
    mlm_loss,
    model_config,
    parse_args,
    report,
)

from seqpad.models import build_model, save_checkpoint
from seqpad.nn.batchnorm import MaskedSyncBatchNorm1d, convert_sync_batchnorm
from seqpad.store import TokenizedDataset


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, description=__doc__ or "")
    if "RANK" not in os.environ:
        print("ddp_train.py must be started by torchrun, e.g.\n"
              "  torchrun --nproc_per_node 2 examples/ddp_train.py --steps 300", file=sys.stderr)
        return 2
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device.startswith("cuda"):
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device(args.device)
        backend = "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    is_main = rank == 0

    def log(*parts: object) -> None:
        if is_main:
            print(*parts, flush=True)

    try:
        store = args.store if args.store is not None else default_store_path(args.fasta)
        if is_main:
            ensure_store(args.fasta, store)
        dist.barrier()  # the others open the store only once rank 0 has written it
        ds = TokenizedDataset(store)
        tok = ds.tokenizer
        log(f"world size {world} ({backend}); store {store}: {len(ds):,} proteins")

        loader, sampler, collator = make_loader(
            ds, max_tokens=args.max_tokens, max_length=args.max_length, seed=args.seed,
            num_replicas=world, rank=rank,
        )
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        torch.manual_seed(args.seed)
        model = build_model(model_config(tok.vocab_size, tok.pad_id, args.d_model, args.n_layers))
        model = convert_sync_batchnorm(model).to(device).train()
        n_sync = sum(isinstance(m, MaskedSyncBatchNorm1d) for m in model.modules())
        ddp = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
        log(f"model: {n_sync} MaskedSyncBatchNorm1d layers; {len(sampler)} batches per rank "
            f"per epoch at max_tokens={args.max_tokens}")

        opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.01)
        warmup = max(1, min(100, args.steps // 10))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup)
            * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
        )

        tracker = LossTracker()
        tokens_seen = 0
        batches = endless(loader, sampler, collator)  # set_epoch on sampler and collator
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            batch = next(batches).to(device, non_blocking=True)
            loss, n_tok = mlm_loss(ddp, batch)  # each rank masks with its own stream
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            opt.step()
            sched.step()
            # Report the mean loss and the total tokens over ranks.
            stats = torch.tensor([loss.item(), float(n_tok)], dtype=torch.float64, device=device)
            dist.all_reduce(stats)
            tracker.add(float(stats[0]) / world)
            tokens_seen += int(stats[1])
            if step % args.log_every == 0 or step == args.steps:
                elapsed = time.perf_counter() - start
                log(f"step {step}/{args.steps} loss {tracker.ema:.4f} "
                    f"tokens/s {tokens_seen / elapsed:,.0f} (all ranks)")
        seconds = time.perf_counter() - start

        # Every rank must hold the same weights and running statistics.
        flat = torch.cat([t.detach().reshape(-1).double()
                          for t in (*model.parameters(), *model.buffers())])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = torch.tensor([(flat - ref).abs().max().item()], dtype=torch.float64, device=device)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        in_sync = float(diff) == 0.0
        log(f"ranks in sync: {in_sync} (max weight difference {float(diff):.3g})")

        fell = report(tracker, args.steps, tokens_seen, seconds) if is_main else True
        if is_main and args.save is not None:
            # The checkpoint holds the plain model: MaskedSyncBatchNorm1d shares
            # MaskedBatchNorm1d's state_dict keys, so load_model rebuilds it for one process.
            save_checkpoint(args.save, ddp, step=args.steps)
            log(f"saved checkpoint {args.save}")
        ok = torch.tensor([int(in_sync and (fell or args.steps < 10))], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        dist.barrier()  # both ranks reach teardown together (gloo can abort at exit otherwise)
        return 0 if int(ok) == 1 else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
