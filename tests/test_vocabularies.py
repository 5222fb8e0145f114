"""Pretrained vocabularies (ESM-2 / ESM-1b) against fair-esm's own BatchConverter, and
``Tokenizer.from_vocab`` for any ordered vocabulary (ids and pad anywhere)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqpad import pretrained_tokenizer
from seqpad.collate import Collator
from seqpad.fasta import FastaFormatError, read_fasta
from seqpad.samplers import TokenBudgetBatchSampler
from seqpad.store import TokenizedDataset, write_store
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

ROOT = Path(__file__).parent.parent
ECOLI = ROOT / "data" / "UP000000625-E.coli.fasta.gz"
DATA = Path(__file__).parent / "data"


def esm_alphabet():  # type: ignore[no-untyped-def]
    esm = pytest.importorskip("esm")
    return esm.data.Alphabet.from_architecture("ESM-1b")


def bundled_records() -> list[tuple[str, str]]:
    """Every record of every parseable file under tests/data (protein and nucleotide)."""
    out = []
    for f in sorted(DATA.glob("*/*")):
        try:
            out.extend(read_fasta(f))
        except (FastaFormatError, ValueError, OSError):
            continue
    return out


@pytest.mark.parametrize("name", ["esm2", "esm1b", "ESM-2"])
def test_ids_are_fair_esms(name: str) -> None:
    alphabet = esm_alphabet()
    tok = pretrained_tokenizer(name)
    assert list(tok.vocab) == alphabet.all_toks
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (
        alphabet.cls_idx, alphabet.padding_idx, alphabet.eos_idx, alphabet.unk_idx,
        alphabet.mask_idx) == (0, 1, 2, 3, 32)
    assert tok.special_ids == (0, 1, 2, 3, 31, 32)
    assert tok.ids_dtype == np.uint8


def test_batches_equal_batch_converter_on_the_bundled_proteome(tmp_path: Path) -> None:
    alphabet = esm_alphabet()
    convert = alphabet.get_batch_converter()
    tok = pretrained_tokenizer("esm2")
    col = Collator(tok, add_bos=True, add_eos=True)
    recs = list(read_fasta(ECOLI))
    for i in range(0, len(recs), 97):
        chunk = recs[i:i + 97]
        _, _, want = convert(chunk)
        got = col([s for _, s in chunk])
        assert torch.equal(got.tokens, want), i
        assert torch.equal(got.mask[:, 0], want != alphabet.padding_idx)
    # through a store written with --bos --eos (ids kept as stored, no extra specials)
    write_store(tmp_path / "s", recs[:400], tok, add_bos=True, add_eos=True)
    ds = TokenizedDataset(tmp_path / "s")
    assert ds.tokenizer == tok and ds.meta["format_version"] == 1
    plain = Collator(ds.tokenizer)
    for idx in TokenBudgetBatchSampler(ds.lengths, max_tokens=4096, shuffle=False):
        _, _, want = convert([recs[j] for j in idx])
        assert torch.equal(plain([ds[j] for j in idx]).tokens, want)


def test_every_bundled_test_file_record() -> None:
    """Records fair-esm accepts give its ids; where it raises KeyError (lowercase,
    symbols outside the vocabulary) seqpad gives the uppercase id, or <unk> under
    unknown="unk" (the documented difference)."""
    alphabet = esm_alphabet()
    tok = pretrained_tokenizer("esm2", unknown="unk")
    col = Collator(tok, add_bos=True, add_eos=True)
    recs = bundled_records()
    assert len(recs) > 300
    accepted, rejected = 0, 0
    for name, seq in recs:
        got = col([seq]).tokens[0].tolist()
        try:
            want = [0, *alphabet.encode(seq), 2]
            accepted += 1
        except KeyError:
            rejected += 1
            want = [0, *(alphabet.tok_to_idx.get(c.upper(), 3) for c in seq), 2]
        assert got == want, name
    assert accepted > 300 and rejected > 10
    with pytest.raises(UnknownSymbolError, match="esm2"):
        pretrained_tokenizer("esm2").encode("MKJ")
    strict = pretrained_tokenizer("esm2", case_sensitive=True, unknown="unk")
    assert strict.encode("MKa").tolist() == [20, 15, 3]


def test_from_vocab_round_trips_through_a_store(tmp_path: Path) -> None:
    tokens = ["A", "<pad>", "C", "G", "<unk>", "T", "<sep>", "<m>"]
    tok = Tokenizer.from_vocab(tokens, pad="<pad>", unk=4, mask="<m>", name="toy")
    assert tok.pad_id == 1 and tok.unk_id == 4 and tok.bos_id is None
    assert tok.special_ids == (1, 4, 6, 7)
    assert tok.encode("ACgt").tolist() == [0, 2, 3, 5]
    assert tok.decode([0, 1, 6, 5], skip_special=True) == "AT"
    assert Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok
    write_store(tmp_path / "s", [("a", "ACGT"), ("b", "A")], tok)
    ds = TokenizedDataset(tmp_path / "s")
    assert ds.tokenizer == tok and ds[0].tolist() == [0, 2, 3, 5]
    # pad is id 1, not 0: padding and mask still right; a residue id 0 is real
    batch = Collator(ds.tokenizer)([ds[0], ds[1]])
    assert batch.tokens.tolist() == [[0, 2, 3, 5], [0, 1, 1, 1]]
    assert batch.mask[:, 0].tolist() == [[True] * 4, [True, False, False, False]]
    with pytest.raises(ValueError, match="bos"):
        Collator(tok, add_bos=True)
    with pytest.raises(ValueError, match="bos"):
        write_store(tmp_path / "t", [("a", "A")], tok, add_bos=True)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(("tokens", "kw", "match"), [
    (["A", "<pad>"], {"pad": "<pad>", "unk": "<unk>"}, "unk token"),
    (["A", "A", "<pad>", "<unk>"], {"pad": "<pad>", "unk": "<unk>"}, "repeat"),
    (["AB", "<pad>", "<unk>"], {"pad": "<pad>", "unk": "<unk>"}, "one-character"),
    (["A", "<pad>", "<unk>"], {"pad": 1, "unk": 1}, "distinct"),
    (["A", "<pad>", "<unk>"], {"pad": 7, "unk": 2}, "pad"),
    (["A", "a", "<pad>", "<unk>"], {"pad": 2, "unk": 3}, "ignoring case"),
])
def test_from_vocab_rejects_bad_vocabularies(tokens: list[str], kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_vocab(tokens, **kw)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="esm2"):
        pretrained_tokenizer("bert")


def test_cli_vocab_esm2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from seqpad.cli import cli

    src = tmp_path / "a.fa"
    src.write_text(">x\nMKVLA\n>y\nmkw\n")
    res = CliRunner().invoke(cli, ["tokenize", str(src), "-o", str(tmp_path / "s"),
                                   "--vocab", "esm2", "--bos", "--eos"])
    assert res.exit_code == 0, res.output
    ds = TokenizedDataset(tmp_path / "s")
    assert ds.tokenizer == pretrained_tokenizer("esm2")
    assert ds[0].tolist() == [0, 20, 15, 7, 4, 5, 2]
    assert ds[1].tolist() == [0, 20, 15, 22, 2]
    res = CliRunner().invoke(cli, ["tokenize", str(src), "-o", str(tmp_path / "t"),
                                   "--vocab", "esm2", "--alphabet", "protein"])
    assert res.exit_code == 2 and "exactly one" in res.output


def test_damaged_vocab_section_is_refused(tmp_path: Path) -> None:
    from seqpad.store import StoreError

    write_store(tmp_path / "s", [("a", "MKV")], pretrained_tokenizer("esm2"))
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["tokenizer"]["kind"] == "vocab" and meta["tokenizer"]["pad"] == 1
    meta["tokenizer"]["vocab"][5] = "J"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="esm2"):
        TokenizedDataset(tmp_path / "s")
    meta["tokenizer"] = {**meta["tokenizer"], "vocab": ["<pad>", "<unk>", "<pad>"]}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="tokenizer"):
        TokenizedDataset(tmp_path / "s")
