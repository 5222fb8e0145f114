"""Masked batch norm speed: forward + backward, as a ratio to ``nn.BatchNorm1d``.

For each shape, four implementations run interleaved in one process (medians over
``--repeats`` rounds):

- ``native``: ``torch.nn.BatchNorm1d`` on the same tensor, unmasked (the reference, 1.00);
- ``eager``: ``seqpad.nn.MaskedBatchNorm1d`` with the mask (default path);
- ``fused``: ``MaskedBatchNorm1d(..., fused=True)`` (on CPU the C++ kernel of
  ``seqpad/nn/_batchnorm_cpu.py`` for L >= 8, else ``torch.compile``; skip: ``--no-fused``);
- ``seed-2020``: the naive eager formula of the 2020 blog post the project started from
  (variance over all positions / n, so padding adds mean^2; biased running_var).

Masks are realistic: sequence lengths are drawn from a real proteome's length
distribution (``data/UP000000625-E.coli.fasta.gz``) and cropped to L.

    python bench/bench_batchnorm.py                    # CPU, default shapes
    python bench/bench_batchnorm.py --device cuda      # on a GPU
    python bench/bench_batchnorm.py --quick            # smoke test
    python bench/bench_batchnorm.py --split            # + forward-only / backward-only ratios
    python bench/bench_batchnorm.py --device cuda --shape 64x256x512 --dtype float32 \
        --dtype bfloat16 --json bench/_work/bn.json   # as bench/gpu_check.sh runs it

On CUDA with Triton installed, ``fused`` is the Triton kernel path
(``seqpad/nn/_batchnorm_triton.py``). ``--triton-interpret`` (with ``TRITON_INTERPRET=1``
in the environment) runs those kernels on CPU under Triton's interpreter: a smoke test of
the wiring, not a speed figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from seqpad.nn.batchnorm import MaskedBatchNorm1d  # noqa: E402

PROTEOME = REPO / "data" / "UP000000625-E.coli.fasta.gz"


def proteome_lengths(path: Path = PROTEOME) -> list[int]:
    """Residue counts of every record (a minimal FASTA scan; the bench needs only lengths)."""
    lengths: list[int] = []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                lengths.append(0)
            elif lengths:
                lengths[-1] += len(line.strip())
    return lengths


class SeedMaskedBatchNorm1d(nn.BatchNorm1d):
    """The 2020 formula (reference only): masked mean, variance over all positions / n."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        mask = mask.to(x.dtype)
        n = mask.sum()
        masked = x * mask
        if self.training:
            mean = masked.sum(dim=(0, 2)) / n
            var = ((masked - mean[None, :, None]) ** 2).sum(dim=(0, 2)) / n  # padding adds mean^2
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)  # biased
        else:
            mean, var = self.running_mean, self.running_var
        y = (masked - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return (y * self.weight[None, :, None] + self.bias[None, :, None]) * mask


def make_batch(shape: tuple[int, ...], lengths: list[int], gen: torch.Generator,
               device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    b = shape[0]
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    dy = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    if len(shape) == 3:
        length = shape[2]
        idx = torch.randint(len(lengths), (b,), generator=gen)
        lens = torch.tensor([min(lengths[i], length) for i in idx.tolist()])
        mask = (torch.arange(length)[None, :] < lens[:, None]).unsqueeze(1)
    else:  # (B, C): B "tokens" of which the real fraction is the proteome's fill rate at L=512
        fill = sum(min(n, 512) for n in lengths) / (512 * len(lengths))
        mask = torch.rand(b, generator=gen) < fill
    return x, dy, mask.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_shape(shape: tuple[int, ...], dtype: torch.dtype, args: argparse.Namespace,
                lengths: list[int]) -> dict[str, float]:
    device = args.device
    gen = torch.Generator().manual_seed(0)
    x, dy, mask = make_batch(shape, lengths, gen, device, dtype)
    c = shape[1]
    mods: dict[str, nn.Module] = {
        "native": nn.BatchNorm1d(c),
        "eager": MaskedBatchNorm1d(c),
        "seed-2020": SeedMaskedBatchNorm1d(c),
    }
    if args.fused:
        mods["fused"] = MaskedBatchNorm1d(c, fused=True)
    low = dtype in (torch.float16, torch.bfloat16)
    xs = {k: x.clone().requires_grad_() for k in mods}

    def step(name: str) -> tuple[float, float]:
        """One forward + backward; returns (forward seconds, backward seconds)."""
        mod, xi = mods[name], xs[name]
        xi.grad = None
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=low):
            if name == "native":
                y = mod(xi)
            elif name == "seed-2020" and xi.dim() == 2:
                y = mod(xi.unsqueeze(-1), mask.view(-1, 1, 1)).squeeze(-1)
            else:
                y = mod(xi, mask)
        sync(device)
        t1 = time.perf_counter()
        y.backward(dy)
        sync(device)
        return t1 - t0, time.perf_counter() - t1

    for m in mods.values():
        m.to(device)
    for name in mods:  # warm-up (and compilation) outside the timed rounds
        for _ in range(2):
            step(name)
    times: dict[str, list[float]] = {k: [] for k in mods}
    fwd: dict[str, list[float]] = {k: [] for k in mods}
    bwd: dict[str, list[float]] = {k: [] for k in mods}
    for r in range(args.repeats):
        order = list(mods) if r % 2 == 0 else list(reversed(mods))
        for name in order:
            tf, tb = step(name)
            times[name].append(tf + tb)
            fwd[name].append(tf)
            bwd[name].append(tb)
    base = statistics.median(times["native"])
    out = {k: statistics.median(v) / base for k, v in times.items()}
    out["native_ms"] = base * 1e3
    for part, t in (("fwd", fwd), ("bwd", bwd)):
        ref = statistics.median(t["native"])
        out.update({f"{k} {part}": statistics.median(v) / ref for k, v in t.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-fused", dest="fused", action="store_false")
    ap.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--split", action="store_true",
                    help="also forward-only and backward-only ratios (each to native's)")
    ap.add_argument("--shape", action="append", default=None, metavar="BxCxL",
                    help="only these shapes (e.g. 64x256x512 or 8192x256; repeatable)")
    ap.add_argument("--dtype", action="append", default=None,
                    choices=["float32", "bfloat16", "float16"],
                    help="dtypes for --shape (repeatable; default float32); half types "
                         "run under torch.autocast")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--triton-interpret", action="store_true",
                    help="CPU smoke test: fused = the Triton kernels under TRITON_INTERPRET=1")
    args = ap.parse_args()
    if args.triton_interpret:
        from seqpad.nn import _batchnorm_triton

        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--triton-interpret needs TRITON_INTERPRET=1 in the environment")
        _batchnorm_triton._CPU_INTERPRETER = True
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = proteome_lengths()
    if args.quick:
        args.repeats = 3
        cases = [((8, 32, 64), torch.float32), ((256, 32), torch.float32)]
    else:
        big = [(64, 256, 512), (32, 128, 1024), (16, 512, 256)]
        if args.device == "cuda":
            big = [(64, 256, 512), (256, 512, 1024), (32, 1024, 1024)]
        cases = [(s, torch.float32) for s in big]
        cases += [((8192, 256), torch.float32), ((64, 256, 512), torch.bfloat16)]
        if args.device == "cuda":
            cases += [((64, 256, 512), torch.float16)]
    if args.shape:
        dtypes = [getattr(torch, d) for d in (args.dtype or ["float32"])]
        cases = [(tuple(int(v) for v in sh.split("x")), dt) for sh in args.shape for dt in dtypes]
    names = ["eager", "fused", "seed-2020"] if args.fused else ["eager", "seed-2020"]
    if args.split:
        names += [f"{n} {part}" for part in ("fwd", "bwd") for n in names if n != "seed-2020"]
    print("# masked batch norm, fwd+bwd, ratio to nn.BatchNorm1d (unmasked, same tensor)")
    print(f"# device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"{platform.machine()} {os.cpu_count()} CPUs"
          + (f" {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    print(f"# masks: lengths from {PROTEOME.name} ({len(lengths)} proteins), cropped to L; "
          f"median of {args.repeats} interleaved rounds")
    header = "| shape | dtype | real fraction | native ms | " + " | ".join(names) + " |"
    print(header)
    print("|" + "---|" * (4 + len(names)))
    results = []
    for shape, dtype in cases:
        res = bench_shape(shape, dtype, args, lengths)
        gen = torch.Generator().manual_seed(0)
        _, _, mask = make_batch(shape, lengths, gen, "cpu", torch.float32)
        frac = mask.float().mean().item()
        cells = " | ".join(f"{res[n]:.2f}x" for n in names)
        print(f"| {tuple(shape)} | {str(dtype).replace('torch.', '')} | {frac:.2f} | "
              f"{res['native_ms']:.2f} | {cells} |", flush=True)
        results.append({"shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                        "real_fraction": frac, **res})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": args.device, "results": results}, indent=1))


if __name__ == "__main__":
    main()
