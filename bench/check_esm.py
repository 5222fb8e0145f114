"""Check: seqpad's ESM-2 batches are fair-esm's, record for record, on real proteomes.

For every proteome found (``data/*.fasta.gz`` and ``../shared/data/proteome``) and the
bundled test files, every record is collated by ``Collator(pretrained_tokenizer("esm2"),
add_bos=True, add_eos=True)`` and by fair-esm's ``BatchConverter`` (ESM-1b alphabet, the
one ESM-2 uses), in batches of ``--batch`` records, and the token tensors compared. Also
through a store written with ``--bos --eos``. Prints the number of identical records and
collate throughput of both, side by side.

Run:  python bench/check_esm.py               (every record; ~1 min)
      python bench/check_esm.py --quick       (first 500 records of each file)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, find_proteomes, machine_note, read_records, short_name, table

sys.path.insert(0, str(REPO))

import esm

from seqpad import Collator, TokenizedDataset, pretrained_tokenizer, write_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    convert = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    tok = pretrained_tokenizer("esm2")
    col = Collator(tok, add_bos=True, add_eos=True)
    rows = []
    all_same = True
    for path in find_proteomes():
        recs = read_records(path)
        if args.quick:
            recs = recs[:500]
        same = t_esm = t_sp = 0.0
        residues = sum(len(s) for _, s in recs)
        with tempfile.TemporaryDirectory() as tmp:
            write_store(Path(tmp) / "s", recs, tok, add_bos=True, add_eos=True)
            ds = TokenizedDataset(Path(tmp) / "s")
            plain = Collator(ds.tokenizer)
            same_store = 0
            for i in range(0, len(recs), args.batch):
                chunk = recs[i:i + args.batch]
                t0 = time.perf_counter()
                _, _, want = convert(chunk)
                t1 = time.perf_counter()
                got = col([s for _, s in chunk])
                t2 = time.perf_counter()
                t_esm += t1 - t0
                t_sp += t2 - t1
                from_store = plain([ds[j] for j in range(i, i + len(chunk))]).tokens
                if got.tokens.shape == want.shape:
                    same += int((got.tokens == want).all(dim=1).sum())
                if from_store.shape == want.shape:
                    same_store += int((from_store == want).all(dim=1).sum())
        all_same &= same == len(recs) == same_store
        rows.append([short_name(path), len(recs), f"{int(same)}", same_store,
                     f"{residues / t_esm / 1e6:.2f}", f"{residues / t_sp / 1e6:.1f}",
                     f"{t_esm / t_sp:.0f}x"])
    print(machine_note())
    print(table(["proteome", "records", "identical (strings)", "identical (store)",
                 "fair-esm M res/s", "seqpad M res/s", "speed-up"], rows))
    print("ALL IDENTICAL" if all_same else "MISMATCH")
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()
