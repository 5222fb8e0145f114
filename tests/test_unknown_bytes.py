"""``unknown="unk"`` on bytes that are not UTF-8 (issue 10, defect 1).

FASTA text is read with ``surrogateescape``, so a stray byte such as ``\\xe9`` reaches the
tokenizer as a lone surrogate (``'\\udce9'``). It must become one ``unk``, exactly as a
non-ASCII character (``é``) does, in ``Tokenizer.encode``, the ``Collator`` and both the
one-process and the parallel store writers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import seqpad.fasta
import seqpad.store
from seqpad.collate import Collator
from seqpad.fasta import read_fasta
from seqpad.store import TokenizedDataset, write_store
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

TOK = Tokenizer("protein", unknown="unk")


def expected(seq: str) -> list[int]:
    """Plain-Python reference: one id per character, unk for anything outside ASCII."""
    return [TOK.unk_id if ord(c) > 127 else int(TOK.encode(c)[0]) for c in seq]


@pytest.mark.parametrize("seq", ["MKV\udce9", "\udc80M\udcffK", "Mé\udce9"])
def test_encode_and_collate_store_one_unk_per_bad_byte(seq: str) -> None:
    assert TOK.encode(seq).tolist() == expected(seq)
    assert TOK.encode_batch([seq, "MK"])[0].tolist() == expected(seq)
    batch = Collator(TOK)([seq, "MK"])
    assert batch.tokens[0, : len(seq)].tolist() == expected(seq)
    named = Collator(TOK)([("a", seq), ("b", np.array([5, 6]))])
    assert named.tokens[0, : len(seq)].tolist() == expected(seq)


def test_error_policy_names_the_lone_surrogate() -> None:
    with pytest.raises(UnknownSymbolError) as info:
        Tokenizer("protein").encode("MKV\udce9")
    assert info.value.position == 4 and info.value.symbol == "\udce9"


@pytest.mark.parametrize("jobs", [1, 2])
def test_store_writes_one_unk_serial_and_parallel(tmp_path: Path, jobs: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seqpad.fasta, "MIN_CHUNK_BYTES", 1)
    monkeypatch.setattr(seqpad.fasta, "GZIP_CHUNK_BYTES", 1 << 62)
    monkeypatch.setattr(seqpad.store, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 64)
    body = b"".join(b">r%d\nMKV\xe9LL%s\n" % (i, b"A" * (i % 7)) for i in range(40))
    src = tmp_path / "a.fa"
    src.write_bytes(body)
    write_store(tmp_path / "s", read_fasta(src), TOK, jobs=jobs)
    ds = TokenizedDataset(tmp_path / "s")
    assert len(ds) == 40
    for i in range(40):
        assert ds[i].tolist() == expected("MKV\udce9LL" + "A" * (i % 7))
