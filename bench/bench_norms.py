"""Masked instance / group / layer norm speed: forward + backward as a ratio to native.

For each shape, every pair runs interleaved in one process (medians over ``--repeats``
rounds): the masked module with a padding mask (lengths drawn uniformly in
``[L / 4, L]``) against the native module on the same tensor without a mask:

- ``MaskedInstanceNorm1d(C, affine=True)`` vs ``nn.InstanceNorm1d(C, affine=True)``;
- ``MaskedGroupNorm(G, C)`` vs ``nn.GroupNorm(G, C)``;
- ``MaskedLayerNorm1d(C)`` vs ``nn.LayerNorm(C)`` on ``x.transpose(1, 2)``;
- the packed path (``segment_ids``, 4 segments per row) of instance norm, informational.

Target (issue 12): masked instance / group norm fwd+bwd <= 1.5x native at (64, 256, 512)
on CPU.

    python bench/bench_norms.py                  # (64, 256, 512), fp32
    python bench/bench_norms.py --quick          # small shape, 3 repeats
    python bench/bench_norms.py --shape 64x256x512 --threads 2 --repeats 15
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from seqpad.masks import lengths_to_mask  # noqa: E402
from seqpad.nn import MaskedGroupNorm, MaskedInstanceNorm1d, MaskedLayerNorm1d  # noqa: E402


def step(fn: Callable[[], Tensor], grad: Tensor) -> float:
    t0 = time.perf_counter()
    fn().backward(grad)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="64x256x512", help="BxCxL (default 64x256x512)")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="shape 8x64x128, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.shape, args.repeats = "8x64x128", 3
    if args.threads:
        torch.set_num_threads(args.threads)
    b, c, length = (int(v) for v in args.shape.split("x"))
    torch.manual_seed(0)
    x = torch.randn(b, c, length, requires_grad=True)
    grad = torch.randn(b, c, length)
    lengths = torch.randint(max(1, length // 4), length + 1, (b,))
    mask = lengths_to_mask(lengths, length)
    seg = torch.zeros(b, length, dtype=torch.int32)
    quarter = max(1, length // 4)
    for k in range(4):
        seg[:, k * quarter:(k + 1) * quarter] = k + 1
    seg = seg.masked_fill(~mask.squeeze(1), 0)

    inorm, inorm_n = MaskedInstanceNorm1d(c, affine=True), nn.InstanceNorm1d(c, affine=True)
    gnorm, gnorm_n = MaskedGroupNorm(args.groups, c), nn.GroupNorm(args.groups, c)
    lnorm, lnorm_n = MaskedLayerNorm1d(c), nn.LayerNorm(c)
    gt = grad.transpose(1, 2)
    pairs: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {
        "instance": (lambda: step(lambda: inorm(x, mask), grad), lambda: step(lambda: inorm_n(x), grad)),
        "group": (lambda: step(lambda: gnorm(x, mask), grad), lambda: step(lambda: gnorm_n(x), grad)),
        "layer": (lambda: step(lambda: lnorm(x, mask), grad),
                  lambda: step(lambda: lnorm_n(x.transpose(1, 2)), gt)),
        "instance, packed": (lambda: step(lambda: inorm(x, segment_ids=seg), grad),
                             lambda: step(lambda: inorm_n(x), grad)),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
    for masked, native in pairs.values():  # warm-up
        masked(), native()
    for _ in range(args.repeats):
        for name, (masked, native) in pairs.items():
            times[name][1].append(native())
            times[name][0].append(masked())
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"shape {args.shape}, fp32, {args.repeats} repeats (medians), groups {args.groups}")
    print("| norm | native ms | masked ms | masked / native |")
    print("|---|---|---|---|")
    for name, (tm, tn) in times.items():
        mm, mn = statistics.median(tm) * 1e3, statistics.median(tn) * 1e3
        print(f"| {name} | {mn:.1f} | {mm:.1f} | {mm / mn:.2f}x |")


if __name__ == "__main__":
    main()
