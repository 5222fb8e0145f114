"""MaskedSyncBatchNorm1d across two processes (gloo, CPU) against a single-process run.

Each rank holds an uneven shard (different batch sizes and lengths; in one scenario a
shard that is all padding). Outputs, input gradients and running statistics must equal
one process running MaskedBatchNorm1d on the concatenated batch; weight and bias
gradients after DDP averaging must equal the single-process ones / world size (each
rank's loss is the sum over its own shard).
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.nn.batchnorm import MaskedBatchNorm1d, MaskedSyncBatchNorm1d, convert_sync_batchnorm

C = 5
STEPS = 2
# per rank: (lengths of its sequences, padded length); scenario "empty": rank 1 all padding
SCENARIOS = {
    "uneven": [([7, 3, 6], 8), ([4, 5], 5)],
    "empty": [([6, 2, 8, 1], 9), ([0, 0], 4)],
}
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _shard(scenario: str, rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths, length = SCENARIOS[scenario][rank]
    gen = torch.Generator().manual_seed(1000 * step + 10 * rank + len(scenario))
    x = torch.randn(len(lengths), C, length, generator=gen) * 2 + 1
    dy = torch.randn(len(lengths), C, length, generator=gen)
    mask = lengths_to_mask(lengths, length)
    x = x.masked_fill(~mask, 3.0)  # garbage padding
    return x, dy, mask


def _initial_module() -> MaskedBatchNorm1d:
    torch.manual_seed(0)
    bn = MaskedBatchNorm1d(C)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    return bn


class _Net(nn.Module):
    """A model holding the layer, as convert_sync_batchnorm sees real models."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = _initial_module()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bn(x, mask)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        for scenario in SCENARIOS:
            model = convert_sync_batchnorm(_Net())
            assert isinstance(model.bn, MaskedSyncBatchNorm1d)
            ddp = nn.parallel.DistributedDataParallel(model)
            results = []
            for step in range(STEPS):
                x, dy, mask = _shard(scenario, rank, step)
                x.requires_grad_()
                ddp.zero_grad(set_to_none=True)
                y = ddp(x, mask)
                (y * dy).sum().backward()  # DDP averages weight / bias gradients
                bn = model.bn
                results.append(
                    {
                        "y": y.detach(),
                        "dx": x.grad,
                        "dw": bn.weight.grad.clone(),
                        "db": bn.bias.grad.clone(),
                        "rm": bn.running_mean.clone(),
                        "rv": bn.running_var.clone(),
                        "nbt": bn.num_batches_tracked.clone(),
                    }
                )
            ddp.eval()
            x, _, mask = _shard(scenario, rank, STEPS)
            results.append({"eval": ddp(x, mask).detach()})
            torch.save(results, os.path.join(out_dir, f"{scenario}{rank}.pt"))
        dist.barrier()  # both ranks reach teardown together (gloo can abort at exit otherwise)
    finally:
        dist.destroy_process_group()


def _single_process(scenario: str) -> list[dict[str, torch.Tensor]]:
    bn = _initial_module()
    results = []
    for step in range(STEPS):
        shards = [_shard(scenario, r, step) for r in range(2)]
        length = max(s[0].shape[2] for s in shards)
        pad = [(torch.nn.functional.pad(x, (0, length - x.shape[2])),
                torch.nn.functional.pad(dy, (0, length - dy.shape[2])),
                torch.nn.functional.pad(m, (0, length - m.shape[2]))) for x, dy, m in shards]
        x = torch.cat([p[0] for p in pad]).requires_grad_()
        dy = torch.cat([p[1] for p in pad])
        mask = torch.cat([p[2] for p in pad])
        bn.zero_grad(set_to_none=True)
        y = bn(x, mask)
        (y * dy).sum().backward()
        results.append(
            {
                "y": y.detach(), "dx": x.grad, "dw": bn.weight.grad.clone(),
                "db": bn.bias.grad.clone(), "rm": bn.running_mean.clone(),
                "rv": bn.running_var.clone(), "nbt": bn.num_batches_tracked.clone(),
                "sizes": [s[0].shape for s in shards],
            }
        )
    return results


@pytest.fixture(scope="module")
def distributed_results():  # type: ignore[no-untyped-def]
    """Run the two-rank job once (one spawn: process start-up dominates the cost)."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _worker, args=(2, os.path.join(out, "init"), out), nprocs=2, join=True,
            start_method="spawn",
        )
        yield {
            scenario: [torch.load(os.path.join(out, f"{scenario}{r}.pt")) for r in range(2)]
            for scenario in SCENARIOS
        }


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_process_gloo_equals_single_process(scenario, distributed_results):
    ranks = distributed_results[scenario]
    single = _single_process(scenario)
    for step, ref in enumerate(single):
        offset = 0
        for r in range(2):
            got = ranks[r][step]
            b, _, length = ref["sizes"][r]
            sl = slice(offset, offset + b)
            offset += b
            torch.testing.assert_close(got["y"], ref["y"][sl, :, :length], **TOL)
            torch.testing.assert_close(got["dx"], ref["dx"][sl, :, :length], **TOL)
            torch.testing.assert_close(got["rm"], ref["rm"], **TOL)
            torch.testing.assert_close(got["rv"], ref["rv"], **TOL)
            assert got["nbt"].item() == ref["nbt"].item() == step + 1
            # each rank's loss is the sum over its shard; DDP averages: single / world
            torch.testing.assert_close(got["dw"], ref["dw"] / 2, **TOL)
            torch.testing.assert_close(got["db"], ref["db"] / 2, **TOL)
        if scenario == "empty":
            assert torch.count_nonzero(ranks[1][step]["y"]) == 0
            assert torch.count_nonzero(ranks[1][step]["dx"]) == 0
    # evaluation uses the (identical) running statistics, no communication
    bn = _initial_module()
    bn.load_state_dict({**bn.state_dict(), "running_mean": single[-1]["rm"],
                        "running_var": single[-1]["rv"]})
    bn.eval()
    for r in range(2):
        x, _, mask = _shard(scenario, r, STEPS)
        torch.testing.assert_close(ranks[r][STEPS]["eval"], bn(x, mask), **TOL)
