"""k-mer tokenizers (``Tokenizer("dna" | "rna", k=K, stride=S)``), checked against an
independent plain-Python reference, and k-mer stores (uint16 / uint32 ids, format
version 2) through the store, the Collator, the sampler and the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import seqpad.fasta
import seqpad.store
from seqpad.cli import cli
from seqpad.collate import Collator
from seqpad.fasta import read_fasta
from seqpad.samplers import TokenBudgetBatchSampler
from seqpad.store import TokenizedDataset, write_store
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

SINGLES = "ACGTNRYSWKMBDHV"  # the dna alphabet, in id order from 5
N_SPECIAL = 5


def ref_ids(seq: str, k: int, stride: int, bases: str = "ACGT") -> list[int]:
    """The documented rule, written plainly: windows at 0, S, 2S, ...; a clean window is
    one k-mer id, any other emits its first S symbols; then the symbols not yet reached."""
    singles = bases + SINGLES[4:]
    up = seq.upper()
    kmer_base = N_SPECIAL + len(singles)

    def single(c: str) -> int:
        return N_SPECIAL + singles.index(c) if c in singles else 1  # 1 = unk

    out: list[int] = []
    reached = 0
    p = 0
    while p + k <= len(up):
        w = up[p:p + k]
        if k > 1 and all(c in bases for c in w):
            value = 0
            for c in w:
                value = value * 4 + bases.index(c)
            out.append(kmer_base + value)
            reached = max(reached, p + k)
        else:
            out.extend(single(c) for c in up[p:p + stride])
            reached = max(reached, p + stride)
        p += stride
    out.extend(single(c) for c in up[reached:])
    return out


KS = st.integers(1, 8).flatmap(lambda k: st.tuples(st.just(k), st.integers(1, k)))
DNA = st.text(alphabet="ACGTacgtACGTNnRY", max_size=60)


@settings(max_examples=150, deadline=None)
@given(ks=KS, seq=DNA)
def test_encode_matches_plain_python_reference(ks: tuple[int, int], seq: str) -> None:
    k, s = ks
    tok = Tokenizer("dna", k=k, stride=s)
    ids = tok.encode(seq)
    assert ids.dtype == tok.ids_dtype
    assert ids.tolist() == ref_ids(seq, k, s)
    if s == k:
        assert tok.decode(ids) == seq.upper()


@settings(max_examples=60, deadline=None)
@given(ks=KS, seqs=st.lists(st.text(alphabet="ACGUNacgu", max_size=30), max_size=6))
def test_rna_batch_equals_one_by_one(ks: tuple[int, int], seqs: list[str]) -> None:
    k, s = ks
    tok = Tokenizer("rna", k=k, stride=s)
    got = tok.encode_batch(seqs)
    assert [g.tolist() for g in got] == [ref_ids(x, k, s, "ACGU") for x in seqs]


@settings(max_examples=60, deadline=None)
@given(ks=KS, seq=st.text(alphabet="ACGTN\u00e9xZ", max_size=40))
def test_unknown_policy_applies_to_symbols_outside_the_alphabet(ks: tuple[int, int],
                                                              seq: str) -> None:
    k, s = ks
    unk = Tokenizer("dna", k=k, stride=s, unknown="unk")
    assert unk.encode(seq).tolist() == ref_ids(seq, k, s)
    bad = [i for i, c in enumerate(seq) if c.upper() not in SINGLES]
    if bad:
        with pytest.raises(UnknownSymbolError) as info:
            Tokenizer("dna", k=k, stride=s).encode(seq)
        assert info.value.position == bad[0] + 1


@pytest.mark.parametrize(("k", "dtype"), [(1, np.uint8), (3, np.uint8), (4, np.uint16),
                                          (7, np.uint16), (8, np.uint32)])
def test_vocabulary_order_and_dtype(k: int, dtype: type) -> None:
    tok = Tokenizer("dna", k=k)
    assert tok.ids_dtype == dtype
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)] if k > 1 else []
    assert list(tok.vocab) == ["<pad>", "<unk>", "<mask>", "<bos>", "<eos>", *SINGLES, *kmers]
    assert tok.special_ids == (0, 1, 2, 3, 4)
    assert Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok
    if k == 1:
        assert tok.to_dict() == Tokenizer("dna").to_dict() and "k" not in tok.to_dict()


def test_codons_and_bad_arguments() -> None:
    tok = Tokenizer("dna", k=3)
    ids = tok.encode("ATGaaaTAGc")
    assert tok.decode(ids) == "ATGAAATAGC"
    assert [tok.vocab[i] for i in ids] == ["ATG", "AAA", "TAG", "C"]
    assert [Tokenizer("dna", k=3, stride=1).vocab[i] for i in
            Tokenizer("dna", k=3, stride=1).encode("ATGNA")] == ["ATG", "T", "G", "N", "A"]
    for kw in ({"k": 0}, {"k": 9}, {"k": 3, "stride": 4}, {"k": 3, "stride": 0}):
        with pytest.raises(ValueError):
            Tokenizer("dna", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dna"):
        Tokenizer("protein", k=3)


def _records(n: int = 120) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        seq = "".join(rng.choice(list("ACGTACGTACGTNacgt"), size=int(rng.integers(0, 90))))
        out.append((f"r{i}", seq))
    return out


@pytest.mark.parametrize(("k", "stride", "descr", "version"),
                         [(6, 6, "<u2", 2), (8, 8, "<u4", 2), (4, 1, "<u2", 2), (3, 3, "|u1", 1)])
def test_store_round_trip_numpy_only(tmp_path: Path, k: int, stride: int, descr: str,
                                     version: int) -> None:
    tok = Tokenizer("dna", k=k, stride=stride)
    recs = _records()
    summary = write_store(tmp_path / "s", recs, tok, add_bos=True, add_eos=True,
                          max_length=60, truncate=True)
    kept = [(n, s) for n, s in recs if s]
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["format_version"] == version and meta["files"]["ids.npy"]["dtype"] == descr
    ids = np.load(tmp_path / "s" / "ids.npy", mmap_mode="r")  # numpy alone
    offsets = np.load(tmp_path / "s" / "offsets.npy")
    assert ids.dtype == np.dtype(descr)
    ds = TokenizedDataset(tmp_path / "s")
    assert ds.tokenizer == tok and len(ds) == len(kept)
    assert summary.residues == sum(min(len(s), 60) for _, s in kept)
    for i, (_, s) in enumerate(kept):
        want = [3, *ref_ids(s[:60], k, stride), 4]
        assert ids[offsets[i]:offsets[i + 1]].tolist() == want
        assert ds[i].tolist() == want
    assert ds.lengths.tolist() == [len(ds[i]) for i in range(len(ds))]


def test_parallel_store_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seqpad.fasta, "MIN_CHUNK_BYTES", 1)
    monkeypatch.setattr(seqpad.fasta, "GZIP_CHUNK_BYTES", 1 << 62)
    monkeypatch.setattr(seqpad.store, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(seqpad.fasta, "MAX_CHUNK_BYTES", 700)
    src = tmp_path / "a.fa"
    src.write_text("".join(f">{n}\n{s}\n" for n, s in _records(200)))
    tok = Tokenizer("dna", k=6, stride=2, unknown="unk")
    one = write_store(tmp_path / "one", read_fasta(src), tok)
    many = write_store(tmp_path / "many", read_fasta(src), tok, jobs=2)
    assert one == many
    for name in ("ids.npy", "offsets.npy", "names.npy", "name_offsets.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()


def test_collator_sampler_and_crops_on_a_kmer_store(tmp_path: Path) -> None:
    tok = Tokenizer("dna", k=6)
    recs = [(n, s) for n, s in _records() if s]
    write_store(tmp_path / "s", recs, tok)
    ds = TokenizedDataset(tmp_path / "s")
    sampler = TokenBudgetBatchSampler(ds.lengths, max_tokens=64, seed=1)
    col = Collator(tok, add_bos=True, add_eos=True, pad_to_multiple_of=8)
    for idx in sampler:
        batch = col([ds[i] for i in idx])
        assert int(batch.lengths.max()) + 0 <= batch.tokens.shape[1]
        for row, i in enumerate(idx):
            want = [3, *ref_ids(recs[i][1], 6, 6), 4]
            n = len(want)
            assert batch.lengths[row] == n
            assert batch.tokens[row, :n].tolist() == want
            assert (batch.tokens[row, n:] == tok.pad_id).all()
            assert batch.mask[row, 0].tolist() == [True] * n + [False] * (batch.tokens.shape[1] - n)
        assert sum(len(ds[i]) for i in idx) <= 64 or len(idx) == 1
    # strings collate to the same ids as stored arrays; crops keep bos/eos
    seqs = [s for _, s in recs[:10]]
    a = Collator(tok)(seqs)
    b = Collator(tok)([ds[i] for i in range(10)])
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    crop = Collator(tok, max_length=5, crop="random", add_bos=True, add_eos=True, seed=3)
    out = crop(seqs)
    for row, s in enumerate(seqs):
        full = ref_ids(s, 6, 6)
        got = out.tokens[row, : int(out.lengths[row])].tolist()
        assert got[0] == 3 and got[-1] == 4 and len(got) == min(len(full), 3) + 2
        body = got[1:-1]
        assert any(full[j:j + len(body)] == body for j in range(len(full) - len(body) + 1))


def test_cli_kmer_store(tmp_path: Path) -> None:
    src = tmp_path / "a.fa"
    src.write_text(">x\nACGTACGTNNACG\n>y\nacg\n")
    res = CliRunner().invoke(cli, ["tokenize", str(src), "-o", str(tmp_path / "s"),
                                   "--alphabet", "dna", "--kmer", "4", "--stride", "2"])
    assert res.exit_code == 0, res.output
    ds = TokenizedDataset(tmp_path / "s")
    assert ds.tokenizer == Tokenizer("dna", k=4, stride=2)
    assert ds[0].tolist() == ref_ids("ACGTACGTNNACG", 4, 2)
    assert ds[1].tolist() == ref_ids("acg", 4, 2)
    for bad in (["--alphabet", "protein", "--kmer", "3"], ["--alphabet", "dna", "--kmer", "3",
                                                          "--stride", "4"]):
        res = CliRunner().invoke(cli, ["tokenize", str(src), "-o", str(tmp_path / "t"), *bad])
        assert res.exit_code == 2, res.output
