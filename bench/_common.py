"""Small helpers shared by the seqpad benchmarks (not part of the package).

Finding the real proteomes, reading them with Biopython, medians, and printing
plain-text / markdown tables.
"""

from __future__ import annotations

import gzip
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from Bio.SeqIO.FastaIO import SimpleFastaParser

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "_work"
#: Where the extra real proteomes live when the shared data folder is mounted.
SHARED_PROTEOMES = (REPO.parent / "shared" / "data" / "proteome",
                    Path("/work/shared/data/proteome"))


def find_proteomes(extra_dirs: Sequence[Path] = ()) -> list[Path]:
    """Real proteome FASTA files: ``data/*.fasta.gz`` plus the shared copies, by name."""
    found: dict[str, Path] = {}
    for d in (REPO / "data", *extra_dirs, *SHARED_PROTEOMES):
        if d.is_dir():
            for p in sorted(d.glob("*.fasta*")):
                found.setdefault(p.name, p)
    if not found:
        sys.exit("no proteome FASTA found in data/ or ../shared/data/proteome")
    return sorted(found.values(), key=lambda p: p.name)


def short_name(path: Path) -> str:
    """``UP000000625-E.coli.fasta.gz`` -> ``E.coli``."""
    stem = path.name.split(".fasta")[0]
    return stem.split("-", 1)[1] if "-" in stem else stem


def read_records(path: Path) -> list[tuple[str, str]]:
    """All ``(title, sequence)`` records of a (gzipped) FASTA, parsed by Biopython."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return list(SimpleFastaParser(handle))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def machine_note() -> str:
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}").replace("  ", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (readable as plain text too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)
