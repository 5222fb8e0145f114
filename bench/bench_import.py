"""Benchmark: import time of seqpad's layers and models against ``import torch``.

Each import runs in a fresh interpreter (``python -c 'import X'``), the variants
interleaved in a rotating order, repeated; reports the median wall time of each and the
ratio of medians to ``import torch`` measured side by side in the same run. Target
(issue 10): ``import seqpad.nn`` / ``import seqpad.models`` <= 1.2x ``import torch``.

Run:  python bench/bench_import.py             (9 rounds, ~1 min)
      python bench/bench_import.py --repeats 3 (short)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

VARIANTS = {
    "torch": "import torch",
    "seqpad.nn": "import seqpad.nn",
    "seqpad.models": "import seqpad.models",
    "seqpad.nn + models": "import seqpad.nn, seqpad.models",
    "torch + torch._dynamo": "import torch, torch._dynamo",
}


def time_import(code: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    names = list(VARIANTS)
    for name in names:  # warm the OS file cache and bytecode caches
        time_import(VARIANTS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(time_import(VARIANTS[name]))
    base = statistics.median(times["torch"])
    print(f"# import time, fresh interpreter each, median of {args.repeats} interleaved rounds")
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| import | median s | ratio to import torch |")
    print("|---|---|---|")
    for name in names:
        med = statistics.median(times[name])
        print(f"| `{VARIANTS[name]}` | {med:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
