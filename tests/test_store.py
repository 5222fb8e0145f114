"""seqpad.store: round trips, options, atomicity and reader checks."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio.SeqIO.FastaIO import SimpleFastaParser
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpad.fasta import read_fasta
from seqpad.store import StoreError, TokenizedDataset, write_store
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

ROOT = Path(__file__).parent.parent
ECOLI = ROOT / "data" / "UP000000625-E.coli.fasta.gz"
DATA = Path(__file__).parent / "data"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def ecoli_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ecoli") / "ecoli.store"
    write_store(out, read_fasta(ECOLI), Tokenizer("protein"), batch_residues=100_000)
    return out


def test_ecoli_matches_biopython_and_manifest(ecoli_store: Path) -> None:
    with gzip.open(ECOLI, "rt") as h:
        ref = [(t.split(None, 1)[0], s) for t, s in SimpleFastaParser(h)]
    ds = TokenizedDataset(ecoli_store, with_names=True)
    tok = ds.tokenizer
    assert tok == Tokenizer("protein")
    assert len(ds) == len(ref) == 4363  # MANIFEST: 4,363 sequences
    assert ds.names == [n for n, _ in ref]
    assert ds.lengths.tolist() == [len(s) for _, s in ref]
    for i in (0, 1, 2017, 4362, -1):
        name, ids = ds[i]
        assert name == ref[i][0]
        assert tok.decode(ids) == ref[i][1].upper()
    s = ds.summary()
    # MANIFEST's independent length statistics for this proteome:
    assert (s.records, s.residues, s.length_min, s.length_median, s.length_max) == \
        (4363, 1358898, 13, 274, 2358)
    assert "records written   4,363" in s.format()


def test_ids_hand_checked(tmp_path: Path) -> None:
    # protein ids: specials 0..4, then ACDEFGHIKLMNPQRSTVWY from 5 (A=5, C=6, ..., Y=24).
    write_store(tmp_path / "s", [("p", "ACDy"), ("q", "W")], Tokenizer("protein"),
                add_bos=True, add_eos=True)
    ds = TokenizedDataset(tmp_path / "s")
    assert ds[0].tolist() == [3, 5, 6, 7, 24, 4]
    assert ds[1].tolist() == [3, 23, 4]
    assert ds.lengths.tolist() == [6, 3]
    assert ds[0].dtype == np.uint8


def test_readable_with_numpy_alone(ecoli_store: Path) -> None:
    ids = np.load(ecoli_store / "ids.npy", mmap_mode="r")
    offsets = np.load(ecoli_store / "offsets.npy", mmap_mode="r")
    names = np.load(ecoli_store / "names.npy", mmap_mode="r")
    name_offsets = np.load(ecoli_store / "name_offsets.npy", mmap_mode="r")
    meta = json.loads((ecoli_store / "meta.json").read_text())
    vocab = meta["tokenizer"]["vocab"]
    i = 7
    seq = "".join(vocab[k] for k in ids[offsets[i]: offsets[i + 1]])
    name = bytes(names[name_offsets[i]: name_offsets[i + 1]]).decode()
    ds = TokenizedDataset(ecoli_store, with_names=True)
    assert (name, seq) == (ds[i][0], ds.tokenizer.decode(ds[i][1]))
    assert meta["format"] == "seqpad-store" and meta["format_version"] == 1
    assert offsets.dtype == np.int64 and ids.dtype == np.uint8


def test_opening_is_lazy_and_items_are_memmap_views(ecoli_store: Path) -> None:
    ds = TokenizedDataset(ecoli_store)
    assert isinstance(ds._open()["ids.npy"], np.memmap)
    item = ds[3]
    assert isinstance(item, np.memmap) or isinstance(item.base, np.memmap)
    assert not item.flags.writeable
    assert isinstance(ds, torch.utils.data.Dataset)
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds[np.int64(2)].tolist() == ds[2].tolist()


def test_pickle_and_dataloader_workers(ecoli_store: Path) -> None:
    ds = TokenizedDataset(ecoli_store, with_names=True)
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000  # no arrays travel, only the path and meta
    again = pickle.loads(blob)
    assert again[10][0] == ds[10][0] and again[10][1].tolist() == ds[10][1].tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                         sampler=range(0, 4363, 500),
                                         collate_fn=lambda x: (x[0], x[1].tolist()))
    got = list(loader)
    assert got == [(ds[i][0], ds[i][1].tolist()) for i in range(0, 4363, 500)]


# ----------------------------------------------------------------------- options
RECS = [("a", "ACDE"), ("b", ""), ("c", "AC"), ("d", "ACDEFGHIKL"), ("e", "ACDEFG")]


def test_length_options_and_summary(tmp_path: Path) -> None:
    tok = Tokenizer("protein")
    s = write_store(tmp_path / "s1", RECS, tok, min_length=3, max_length=6)
    assert TokenizedDataset(tmp_path / "s1").names == ["a", "e"]
    assert s.skipped == {"empty": 1, "too_short": 1, "too_long": 1}
    assert (s.records, s.residues, s.length_min, s.length_median, s.length_max) == \
        (2, 10, 4, 5.0, 6)

    s = write_store(tmp_path / "s2", RECS, tok, max_length=5, truncate=True, add_bos=True)
    ds = TokenizedDataset(tmp_path / "s2", with_names=True)
    assert ds.names == ["a", "c", "d", "e"]
    assert [tok.decode(ids, skip_special=True) for _, ids in
            (ds[i] for i in range(len(ds)))] == ["ACDE", "AC", "ACDEF", "ACDEF"]
    assert ds[2][1][0] == tok.bos_id
    assert s.truncated == 2 and s.skipped == {"empty": 1}
    assert s.tokens == s.residues + 4

    s = write_store(tmp_path / "s3", RECS, tok, min_length=0)
    ds = TokenizedDataset(tmp_path / "s3")
    assert len(ds) == 5 and ds[1].tolist() == [] and s.skipped == {}


def test_unknown_policies(tmp_path: Path) -> None:
    recs = [("ok", "ACGT"), ("bad", "ACXGT"), ("ok2", "GG")]
    s = write_store(tmp_path / "skip", recs, Tokenizer("dna", unknown="skip"))
    assert TokenizedDataset(tmp_path / "skip").names == ["ok", "ok2"]
    assert s.skipped == {"unknown_symbol": 1}
    write_store(tmp_path / "unk", recs, Tokenizer("dna", unknown="unk"))
    assert TokenizedDataset(tmp_path / "unk")[1].tolist() == [5, 6, 1, 7, 8]
    before = leftovers(tmp_path)
    with pytest.raises(UnknownSymbolError) as info:
        write_store(tmp_path / "err", [("x", "A")] * 3 + [("", "")] + recs,
                    Tokenizer("dna"), batch_residues=2)
    e = info.value
    assert (e.record, e.position, e.symbol, e.record_index) == ("bad", 3, "X", 5)
    assert leftovers(tmp_path) == before  # nothing left behind


# -------------------------------------------------------------------- atomicity
def _failing(n: int):
    for i in range(n):
        yield f"r{i}", "ACDE" * 50
    raise RuntimeError("disk on fire")


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        write_store(tmp_path / "s", _failing(5000), Tokenizer("protein"),
                    batch_residues=10_000)
    assert leftovers(tmp_path) == []
    with pytest.raises(StoreError, match="no such store"):
        TokenizedDataset(tmp_path / "s")


def test_failed_overwrite_keeps_old_store(tmp_path: Path) -> None:
    out = tmp_path / "s"
    write_store(out, RECS, Tokenizer("protein"))
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError):
        write_store(out, _failing(100), Tokenizer("protein"), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert leftovers(tmp_path) == ["s"]


def test_failed_final_rename_restores_old_store(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s"
    write_store(out, RECS, Tokenizer("protein"))
    real_rename = os.rename
    calls = []

    def flaky(src, dst):  # type: ignore[no-untyped-def]
        calls.append((src, dst))
        if len(calls) == 2:  # temp store -> target
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError):
        write_store(out, [("new", "WWW")], Tokenizer("protein"), overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert TokenizedDataset(out).names == ["a", "c", "d", "e"]
    assert [p for p in leftovers(tmp_path) if p != "s" and not p.startswith(".s.old-")] == []


def test_overwrite_rules(tmp_path: Path) -> None:
    out = tmp_path / "s"
    write_store(out, RECS, Tokenizer("protein"))
    with pytest.raises(StoreError, match="already exists"):
        write_store(out, RECS, Tokenizer("protein"))
    write_store(out, [("z", "WW")], Tokenizer("protein"), overwrite=True)
    assert TokenizedDataset(out).names == ["z"]
    assert leftovers(tmp_path) == ["s"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match=r"thesis\.tex: not part of a seqpad store"):
        write_store(precious, RECS, Tokenizer("protein"), overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        write_store(tmp_path / "file", RECS, Tokenizer("protein"), overwrite=True)


# ------------------------------------------------------------------ reader checks
def test_reader_rejects_incomplete_foreign_and_corrupt(tmp_path: Path) -> None:
    out = tmp_path / "s"
    write_store(out, RECS, Tokenizer("protein"))
    meta = json.loads((out / "meta.json").read_text())

    bad = tmp_path / "no_meta"
    bad.mkdir()
    (bad / "ids.npy").write_bytes(b"")
    with pytest.raises(StoreError, match="not a complete seqpad store"):
        TokenizedDataset(bad)

    (out / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(StoreError, match="newer than this seqpad"):
        TokenizedDataset(out)
    (out / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(StoreError, match="not a seqpad store"):
        TokenizedDataset(out)
    (out / "meta.json").write_text("{truncated")
    with pytest.raises(StoreError, match="unreadable"):
        TokenizedDataset(out)

    (out / "meta.json").write_text(json.dumps(meta))
    ids = np.load(out / "ids.npy")
    np.save(out / "ids.npy", ids[:-1])  # a short ids file
    with pytest.raises(StoreError, match="corrupt"):
        TokenizedDataset(out)
    np.save(out / "ids.npy", ids)
    assert len(TokenizedDataset(out)) == 4
    (out / "offsets.npy").unlink()
    with pytest.raises(StoreError, match=r"missing offsets\.npy"):
        TokenizedDataset(out)


def test_empty_store(tmp_path: Path) -> None:
    s = write_store(tmp_path / "e", [], Tokenizer("dna"))
    ds = TokenizedDataset(tmp_path / "e")
    assert len(ds) == 0 and ds.names == [] and ds.lengths.tolist() == []
    assert s.records == 0 and s.length_median is None
    assert "records written   0" in ds.summary().format()


def test_median_is_exact_for_long_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lengths = [70_000, 100_000, 1, 5, 65_536, 65_535, 3]
    recs = [(f"r{i}", "A" * n) for i, n in enumerate(lengths)]
    s = write_store(tmp_path / "s", recs, Tokenizer("dna"), batch_residues=int(rng.integers(1, 9)))
    assert (s.length_min, s.length_median, s.length_max) == (1, float(np.median(lengths)), 100_000)
    assert TokenizedDataset(tmp_path / "s").summary().length_median == float(np.median(lengths))


def test_fasta_file_into_store_keeps_odd_names(tmp_path: Path) -> None:
    # real file with empty names and empty records (seqkit), bytes sequences too
    src = DATA / "seqkit" / "empty_id_and_seq.fa"
    s = write_store(tmp_path / "s", read_fasta(src), Tokenizer("dna"), min_length=0)
    ds = TokenizedDataset(tmp_path / "s", with_names=True)
    assert [ds[i][0] for i in range(len(ds))] == [n for n, _ in read_fasta(src)]
    assert s.records == 11
    write_store(tmp_path / "b", [("x", b"acgt"), ("y", bytearray(b"GG"))], Tokenizer("dna"))
    assert TokenizedDataset(tmp_path / "b").tokenizer.decode(TokenizedDataset(tmp_path / "b")[0]) \
        == "ACGT"


# ------------------------------------------------------------ property: round trip
_name = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(
    ["\t", "\x01", "\n", ">", "é", "名"]), max_size=10)
_seq = st.text(st.sampled_from("ACDEFGHIKLMNPQRSTVWYBZXJUOacdefghiklmnpqrstvwy"), max_size=60)


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.tuples(_name, _seq), max_size=12), bos=st.booleans(),
       eos=st.booleans(), batch=st.integers(1, 100))
def test_round_trip(records: list[tuple[str, str]], bos: bool, eos: bool, batch: int) -> None:
    tok = Tokenizer("protein")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s"
        s = write_store(out, records, tok, min_length=0, add_bos=bos, add_eos=eos,
                        batch_residues=batch)
        ds = TokenizedDataset(out, with_names=True)
        assert len(ds) == len(records) == s.records
        assert ds.names == [n for n, _ in records]
        for i, (name, seq) in enumerate(records):
            got_name, ids = ds[i]
            assert got_name == name
            body = ids[int(bos): len(ids) - int(eos)]
            assert tok.decode(body) == seq.upper()
            assert ds.lengths[i] == len(seq) + bos + eos
            if bos:
                assert ids[0] == tok.bos_id
            if eos:
                assert ids[-1] == tok.eos_id
        assert s.residues == sum(len(q) for _, q in records)


def test_summary_str_lists_reasons() -> None:
    from seqpad.store import StoreSummary

    text = str(StoreSummary(records=3, skipped={"too_long": 2}, residues=30, tokens=30,
                            length_min=5, length_median=10.5, length_max=15))
    assert "skipped           2" in text and "too_long        2" in text
    assert "5 / 10.5 / 15" in text
    assert io.StringIO(text).read().count("\n") == 4


def test_non_utf8_header_bytes_are_stored_unchanged(tmp_path: Path) -> None:
    # A Latin-1 header (e.g. "Müller"): not valid UTF-8, but names must not be altered.
    src = tmp_path / "latin1.fa"
    src.write_bytes(b">M\xfcller_1 desc\nACGT\n>plain\nGG\n")
    write_store(tmp_path / "s", read_fasta(src), Tokenizer("dna"))
    raw = np.load(tmp_path / "s" / "names.npy")
    assert raw.tobytes() == b"M\xfcller_1plain"
    assert TokenizedDataset(tmp_path / "s").names[0].encode("utf-8", "surrogateescape") == \
        b"M\xfcller_1"


# ------------------------------------- FASTA files: the batched read_fasta -> store path
def _reference(text: str, full_title: bool) -> list[tuple[str, str]]:
    """Independent reference: Biopython's parser on the text, name = first word (Biopython's
    record id rule), tabs removed from sequences."""
    recs = list(SimpleFastaParser(io.StringIO(text, newline=None)))
    return [(t if full_title else (t.split(None, 1) or [""])[0], s.replace("\t", ""))
            for t, s in recs]


_title = st.text(st.sampled_from(["a", "B", "1", "|", " ", "\t", "\x1c", "\x85", "\u3000", "é",
                                  "_"]), max_size=8)
_body = st.lists(st.text(st.sampled_from("ACDEFGHIKLMNPQRSTVWYacgt \t"), max_size=12),
                 max_size=4)


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.tuples(_title, _body), max_size=10), batch=st.integers(1, 60),
       full_title=st.booleans(), crlf=st.booleans(), min_length=st.integers(0, 3))
def test_fasta_batches_match_biopython(records: list[tuple[str, list[str]]], batch: int,
                                       full_title: bool, crlf: bool, min_length: int) -> None:
    nl = "\r\n" if crlf else "\n"
    text = "".join(f">{t}{nl}" + "".join(line + nl for line in body) for t, body in records)
    tok = Tokenizer("protein")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.fa"
        src.write_bytes(text.encode("utf-8"))
        expect = [(n, s) for n, s in _reference(text, full_title) if len(s) >= min_length]
        s = write_store(Path(d) / "s", read_fasta(src, full_title=full_title), tok,
                        min_length=min_length, batch_residues=batch)
        ds = TokenizedDataset(Path(d) / "s", with_names=True)
        assert s.records == len(ds) == len(expect)
        for i, (name, seq) in enumerate(expect):
            got_name, ids = ds[i]
            assert got_name == name
            assert ids.tolist() == tok.encode(seq).tolist()
        # the per-record reader gives the same records as the batched path
        assert [(n, q) for n, q in read_fasta(src, full_title=full_title)
                if len(q) >= min_length] == expect


@pytest.mark.parametrize("batch", [1, 5, 1 << 20])
@pytest.mark.parametrize("where", ["sequence", "title"])
def test_nul_byte_in_later_record_fails_whole_write(tmp_path: Path, batch: int,
                                                    where: str) -> None:
    from seqpad.fasta import FastaFormatError

    bad = ">c\nAC\x00GT\n" if where == "sequence" else ">c x\x00y\nACGT\n"
    src = tmp_path / "in.fa"
    src.write_bytes((">a\nACGT\n>b\nAC\nGT\n" + bad + ">d\nAAAA\n").encode())
    out = tmp_path / "out"
    line = 7 if where == "sequence" else 6
    with pytest.raises(FastaFormatError, match=rf"in\.fa: line {line}: binary data"):
        write_store(out, read_fasta(src), Tokenizer("protein"), batch_residues=batch)
    assert leftovers(tmp_path) == ["in.fa"]


@pytest.mark.parametrize("batch", [1, 6, 1 << 20])
def test_unknown_symbol_index_counts_skipped_records(tmp_path: Path, batch: int) -> None:
    src = tmp_path / "in.fa"
    # records 0..4: empty, short, ok, too long (dropped), ok; record 5 has 'X' at residue 3
    src.write_text(">e\n>s\nA\n>ok\nACGT\n>long\nACGTACGTAC\n>ok2\nGGG\n>bad\nACXGT\n>z\nA\n")
    with pytest.raises(UnknownSymbolError) as info:
        write_store(tmp_path / "out", read_fasta(src), Tokenizer("dna"), min_length=2,
                    max_length=6, batch_residues=batch)
    e = info.value
    assert (e.record, e.position, e.symbol, e.record_index) == ("bad", 3, "X", 5)
    assert leftovers(tmp_path) == ["in.fa"]
    s = write_store(tmp_path / "out", read_fasta(src), Tokenizer("dna", unknown="skip"),
                    min_length=2, max_length=6, batch_residues=batch)
    assert s.skipped == {"empty": 1, "too_short": 2, "too_long": 1, "unknown_symbol": 1}
    assert TokenizedDataset(tmp_path / "out").names == ["ok", "ok2"]


def test_reader_partly_iterated_then_stored(tmp_path: Path) -> None:
    """write_store continues a read_fasta reader from where the caller left it."""
    reader = read_fasta(ECOLI)
    first = [next(reader) for _ in range(3)]
    write_store(tmp_path / "s", reader, Tokenizer("protein"), batch_residues=50_000)
    with gzip.open(ECOLI, "rt") as h:
        ref = [t.split(None, 1)[0] for t, _s in SimpleFastaParser(h)]
    assert [n for n, _ in first] == ref[:3]
    assert TokenizedDataset(tmp_path / "s").names == ref[3:]
