"""Opening a store: ``StoreReader(path)`` (meta.json, the tokenizer, the arrays' headers,
and one vectorised pass over offsets.npy that checks it and gives the lengths) against
the least any reader does (``json.load`` of meta.json and ``np.load(mmap_mode="r")`` of
the four arrays), side by side, interleaved repeats, medians.

    python bench/bench_store_open.py                       # the bundled E. coli proteome
    python bench/bench_store_open.py --records 2000000     # plus a synthetic 2M-record store
    python bench/bench_store_open.py --compare-with OLD/seqpad/store.py  # vs another version

``--compare-with`` loads another ``seqpad/store.py`` (e.g. from ``git archive``) as a
module and times its ``StoreReader`` too (alone, and with its ``.lengths``, which this
version's open computes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, WORK, machine_note, median, table

from seqpad.fasta import read_fasta
from seqpad.store import StoreReader, write_store
from seqpad.tokenizer import Tokenizer

ECOLI = REPO / "data" / "UP000000625-E.coli.fasta.gz"


def numpy_alone(path: Path) -> Any:
    with open(path / "meta.json", encoding="utf-8") as f:
        meta = json.load(f)
    arrays = [np.load(path / n, mmap_mode="r")
              for n in ("ids.npy", "offsets.npy", "names.npy", "name_offsets.npy")]
    return meta, arrays


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--records", type=int, default=0,
                    help="also a synthetic store of this many 8-residue records")
    ap.add_argument("--compare-with", type=Path, default=None, metavar="STORE_PY")
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    stores = {"E. coli (4,363 records)": WORK / "open_ecoli.store"}
    write_store(stores["E. coli (4,363 records)"], read_fasta(ECOLI), Tokenizer("protein"),
                overwrite=True)
    if args.records:
        name = f"synthetic ({args.records:,} records)"
        stores[name] = WORK / "open_synth.store"
        write_store(stores[name], ((f"r{i}", "MKVLAAGW") for i in range(args.records)),
                    Tokenizer("protein"), overwrite=True)

    other: Any = None
    if args.compare_with is not None:
        spec = importlib.util.spec_from_file_location("other_store", args.compare_with)
        assert spec is not None and spec.loader is not None
        other = importlib.util.module_from_spec(spec)
        sys.modules["other_store"] = other  # dataclasses look their module up
        spec.loader.exec_module(other)

    rows = []
    for label, path in stores.items():
        cases: dict[str, Callable[[], Any]] = {
            "numpy alone": lambda p=path: numpy_alone(p),
            "StoreReader": lambda p=path: StoreReader(p),
        }
        if other is not None:
            cases["other StoreReader"] = lambda p=path: other.StoreReader(p)
            cases["other StoreReader + .lengths"] = lambda p=path: other.StoreReader(p).lengths
        times: dict[str, list[float]] = {k: [] for k in cases}
        repeats = args.repeats if "E. coli" in label else max(args.repeats // 10, 5)
        for _ in range(repeats):  # interleaved
            for k, fn in cases.items():
                times[k].append(timed(fn))
        base = median(times["numpy alone"])
        for k, ts in times.items():
            rows.append([label, k, f"{median(ts) * 1e3:.3f}", f"{median(ts) / base:.2f}x"])
    print(f"# {machine_note()}; medians of interleaved repeats")
    print(table(["store", "open", "ms", "vs numpy alone"], rows))
    if other is not None:
        for i in range(0, len(rows), 4):
            new, old, old_lengths = (float(rows[i + k][2]) for k in (1, 2, 3))
            print(f"{rows[i][0]}: StoreReader / other {new / old:.2f}x, "
                  f"/ other + .lengths {new / old_lengths:.2f}x")


if __name__ == "__main__":
    main()
