"""Alphabets and the tokenizer, against hand-checked ids and a per-character reference."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpad import Tokenizer, UnknownSymbolError
from seqpad.alphabet import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    UNK_ID,
    Alphabet,
    get_alphabet,
)

PROTEIN = "ACDEFGHIKLMNPQRSTVWY" + "BZXJUO"


def reference_encode(seq: str, symbols: str) -> list[int]:
    """Independent per-character reference: the index in the symbol string plus 5."""
    return [symbols.index(c.upper()) + NUM_SPECIAL_TOKENS for c in seq]


def test_special_ids_are_fixed() -> None:
    assert (PAD_ID, UNK_ID, MASK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3, 4)
    tok = Tokenizer("protein")
    assert (tok.pad_id, tok.unk_id, tok.mask_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3, 4)
    assert tok.vocab[:5] == ("<pad>", "<unk>", "<mask>", "<bos>", "<eos>")


@pytest.mark.parametrize(
    ("name", "symbols"),
    [("protein", PROTEIN), ("dna", "ACGTNRYSWKMBDHV"), ("rna", "ACGUNRYSWKMBDHV")],
)
def test_builtin_alphabets_and_hand_checked_ids(name: str, symbols: str) -> None:
    tok = Tokenizer(name)
    assert tok.vocab_size == len(tok) == 5 + len(symbols)
    assert "".join(tok.vocab[5:]) == symbols
    assert tok.encode(symbols).tolist() == list(range(5, 5 + len(symbols)))


def test_hand_checked_protein_ids() -> None:
    tok = Tokenizer("protein")
    # A=5 C=6 D=7 ... M=15 K=13 W=23 Y=24 U=29
    assert tok.encode("MKWY").tolist() == [15, 13, 23, 24]
    assert tok.encode("U").tolist() == [29]


def test_lowercase_maps_to_uppercase_ids() -> None:
    tok = Tokenizer("dna")
    assert tok.encode("acgtn").tolist() == tok.encode("ACGTN").tolist()
    cs = Tokenizer("ACGTacgt", case_sensitive=True)
    assert cs.encode("Aa").tolist() == [5, 9]
    assert cs.decode(cs.encode("Aa")) == "Aa"


def test_gaps_and_stop_are_off_by_default_and_opt_in() -> None:
    with pytest.raises(UnknownSymbolError):
        Tokenizer("protein").encode("MK-")
    with pytest.raises(UnknownSymbolError):
        Tokenizer("protein").encode("MK*")
    tok = Tokenizer("protein", gaps=True, stop=True)
    assert tok.vocab[-3:] == ("-", ".", "*")
    assert tok.decode(tok.encode("MK-.*")) == "MK-.*"


def test_unknown_error_names_symbol_position_and_record() -> None:
    tok = Tokenizer("dna")
    with pytest.raises(UnknownSymbolError) as info:
        tok.encode("ACGTEA", record="chr1")
    err = info.value
    assert (err.symbol, err.position, err.record) == ("E", 5, "chr1")
    assert "position 5" in str(err) and "'E'" in str(err) and "chr1" in str(err)
    assert isinstance(err, ValueError)


def test_non_ascii_symbol_reports_character_position() -> None:
    with pytest.raises(UnknownSymbolError) as info:
        Tokenizer("dna").encode("ACé")
    assert info.value.position == 3 and info.value.symbol == "é"


def test_unknown_unk_and_skip_policies() -> None:
    unk = Tokenizer("dna", unknown="unk")
    assert unk.encode("AXC").tolist() == [5, UNK_ID, 6]
    assert unk.decode(unk.encode("AXC")) == "A<unk>C"
    with pytest.raises(UnknownSymbolError):
        Tokenizer("dna", unknown="skip").encode("AXC")
    with pytest.raises(ValueError, match="unknown must be"):
        Tokenizer("dna", unknown="drop")  # type: ignore[arg-type]


def test_bos_eos_and_decode_specials() -> None:
    tok = Tokenizer("rna")
    ids = tok.encode("ACGU", add_bos=True, add_eos=True)
    assert ids.tolist() == [BOS_ID, 5, 6, 7, 8, EOS_ID]
    assert tok.decode(ids) == "<bos>ACGU<eos>"
    assert tok.decode(ids, skip_special=True) == "ACGU"
    assert tok.decode(torch.tensor([5, 0, 0])) == "A<pad><pad>"
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode([99])


def test_encode_returns_uint8_and_accepts_bytes() -> None:
    tok = Tokenizer("protein")
    a = tok.encode(b"MKV")
    assert a.dtype == np.uint8
    assert a.tolist() == tok.encode("MKV").tolist()
    assert tok.encode("").shape == (0,)
    assert tok.decode([]) == ""


def test_encode_batch_matches_encode() -> None:
    tok = Tokenizer("protein")
    seqs = ["MKV", "", "acdef", "W"]
    assert [a.tolist() for a in tok.encode_batch(seqs)] == [tok.encode(s).tolist() for s in seqs]
    with pytest.raises(UnknownSymbolError) as info:
        tok.encode_batch(["MK", "MK1"])
    assert info.value.position == 3


def test_custom_alphabet_validation() -> None:
    tok = Tokenizer("01")
    assert tok.alphabet.name == "custom" and tok.encode("0110").tolist() == [5, 6, 6, 5]
    with pytest.raises(ValueError, match="repeat"):
        get_alphabet("AaC")
    with pytest.raises(ValueError, match="cannot be used"):
        get_alphabet("AC>")
    with pytest.raises(ValueError, match="cannot be used"):
        get_alphabet("A C")


def test_config_round_trip_and_pickle() -> None:
    tok = Tokenizer("protein", unknown="unk", gaps=True)
    again = Tokenizer.from_dict(tok.to_dict())
    assert again == tok
    assert again.encode("MK-X").tolist() == tok.encode("MK-X").tolist()
    assert pickle.loads(pickle.dumps(tok)) == tok
    bad = tok.to_dict() | {"vocab": ["x"]}
    with pytest.raises(ValueError, match="vocabulary"):
        Tokenizer.from_dict(bad)
    assert "gaps=True" in repr(tok)


def test_alphabet_instance_is_used_as_is() -> None:
    a = Alphabet("custom", "XY", stop=True)
    assert Tokenizer(a).vocab[5:] == ("X", "Y", "*")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=PROTEIN + PROTEIN.lower(), max_size=300))
def test_round_trip_protein(seq: str) -> None:
    tok = Tokenizer("protein")
    ids = tok.encode(seq)
    assert ids.tolist() == reference_encode(seq, PROTEIN)
    assert tok.decode(ids) == seq.upper()


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["dna", "rna"]),
    st.data(),
)
def test_round_trip_nucleotides_with_gaps(name: str, data: st.DataObject) -> None:
    tok = Tokenizer(name, gaps=True)
    symbols = "".join(tok.vocab[5:])
    seq = data.draw(st.text(alphabet=symbols + symbols.lower(), max_size=200))
    assert tok.decode(tok.encode(seq)) == seq.upper()
    assert tok.encode(seq).tolist() == reference_encode(seq, symbols)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=50))
def test_any_text_either_encodes_or_names_first_bad_symbol(seq: str) -> None:
    tok = Tokenizer("dna")
    valid = set("ACGTNRYSWKMBDHVacgtnryswkmbdhv")
    bad = [i for i, c in enumerate(seq) if c not in valid]
    if not bad:
        assert tok.decode(tok.encode(seq)) == seq.upper()
    else:
        with pytest.raises(UnknownSymbolError) as info:
            tok.encode(seq)
        assert info.value.position == bad[0] + 1
        assert info.value.symbol == seq[bad[0]]


def test_unk_policy_maps_non_ascii_characters_one_to_one() -> None:
    tok = Tokenizer("dna", unknown="unk")
    assert tok.encode("Aé\u4e2dC").tolist() == [5, UNK_ID, UNK_ID, 6]


def test_unknown_symbol_error_pickles_with_its_attributes() -> None:
    """Worker processes (seqpad tokenize --jobs, DataLoader workers) send it back pickled."""
    import pickle

    with pytest.raises(UnknownSymbolError) as info:
        Tokenizer("dna").encode("ACGTX", record="r1")
    e = info.value
    e.record_index = 7  # type: ignore[attr-defined]
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is UnknownSymbolError and str(back) == str(e)
    assert (back.symbol, back.position, back.record, back.record_index) == ("X", 5, "r1", 7)


def test_special_ids_are_the_special_tokens_of_the_vocab():
    for name in ("protein", "dna", "rna"):
        tok = Tokenizer(name)
        assert [tok.vocab[i] for i in tok.special_ids] == [
            "<pad>", "<unk>", "<mask>", "<bos>", "<eos>"]
        residues = set(range(tok.vocab_size)) - set(tok.special_ids)
        assert all(not tok.vocab[i].startswith("<") for i in residues)
