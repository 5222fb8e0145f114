"""Benchmark: masked batch norm of this tree against another seqpad version, in one process.

For a before/after check of a change to the batch-norm code: the other version's
``seqpad`` package (for example from ``git archive``) is copied and renamed to
``seqpad_old``, both are imported into one process, and fwd+bwd of ``nn.BatchNorm1d``,
old and new ``MaskedBatchNorm1d`` (eager and ``fused=True``) run interleaved in a rotating
order on the same tensor; medians as ratios to native.

Run:  git archive b3ea7b2 seqpad | tar -x -C /tmp/old
      python bench/bench_batchnorm_ab.py --old /tmp/old/seqpad --repeats 21
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.nn import MaskedBatchNorm1d


def load_old(src: Path) -> type:
    root = Path(tempfile.mkdtemp(prefix="seqpad_old_"))
    dst = root / "seqpad_old"
    shutil.copytree(src, dst)
    for py in dst.rglob("*.py"):
        text = py.read_text()
        py.write_text(re.sub(r"\b(from|import) seqpad\b", r"\1 seqpad_old", text))
    sys.path.insert(0, str(root))
    from seqpad_old.nn import MaskedBatchNorm1d as Old  # type: ignore[import-not-found]

    return Old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the other version's seqpad/")
    ap.add_argument("--shape", default="64x256x512")
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    old_cls = load_old(args.old)
    b, c, length = (int(v) for v in args.shape.split("x"))
    torch.manual_seed(0)
    lengths = torch.randint(length // 4, length + 1, (b,))
    lengths[0] = length
    mask = lengths_to_mask(lengths, length)
    x = torch.randn(b, c, length, requires_grad=True)
    mods = {"native": nn.BatchNorm1d(c), "old eager": old_cls(c), "new eager": MaskedBatchNorm1d(c),
            "old fused": old_cls(c, fused=True), "new fused": MaskedBatchNorm1d(c, fused=True)}

    def step(name: str) -> float:
        start = time.perf_counter()
        y = mods[name](x) if name == "native" else mods[name](x, mask)
        y.backward(torch.ones_like(y))
        x.grad = None
        return time.perf_counter() - start

    names = list(mods)
    for name in names:  # warm-up (builds the CPU kernels)
        step(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(step(name))
    native = statistics.median(times["native"])
    print(f"# {args.shape} fp32, threads={torch.get_num_threads()}, median of {args.repeats}")
    print("| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))
    print("| " + " | ".join(f"{statistics.median(times[n]) / native:.2f}x" for n in names) + " |")
    print(f"native: {native * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
