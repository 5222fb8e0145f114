"""Errors and warnings a newcomer meets (issue 10, "Friction to remove"): each one clear
sentence, or a warning given once, checked against the exact behaviour asked for."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from seqpad.collate import Collator
from seqpad.tokenizer import Tokenizer

TOK = Tokenizer("protein")


def test_collator_given_a_string_says_to_build_a_tokenizer() -> None:
    with pytest.raises(TypeError, match=r"^Collator needs a seqpad Tokenizer as its first "
                       r"argument, got str 'protein'; use Collator\(Tokenizer\('protein'\)\)$"):
        Collator("protein")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got NoneType None$"):
        Collator(None)  # type: ignore[arg-type]


def _stored(seq: str, bos: bool, eos: bool) -> np.ndarray:
    """Ids as a store written with --bos / --eos holds them."""
    return TOK.encode(seq, add_bos=bos, add_eos=eos)


@pytest.mark.parametrize(("bos", "eos"), [(True, False), (False, True), (True, True)])
def test_double_specials_warn_once(bos: bool, eos: bool) -> None:
    col = Collator(TOK, add_bos=bos, add_eos=eos)
    items = [_stored("MKV", bos, eos), _stored("MK", bos, eos)]
    with pytest.warns(UserWarning, match="get a second (bos|eos)") as rec:
        batch = col(items)
    assert len(rec) == int(bos) + int(eos)
    # the ids really do carry the specials twice (what the warning is about)
    row = batch.tokens[0].tolist()
    if bos:
        assert row[:2] == [TOK.bos_id, TOK.bos_id]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col(items)  # once per Collator
        pickle.loads(pickle.dumps(col))(items)  # a worker's copy does not warn again
        # ids without stored specials, and text, never warn
        fresh = Collator(TOK, add_bos=bos, add_eos=eos)
        fresh([("a", _stored("MKV", False, False)), ("x", "MK")])
        fresh(["MKV"])


def test_crop_that_removes_stored_specials_warns_once() -> None:
    ids = _stored("MKVLAGHIKL", True, True)  # 12 ids: bos, 10 residues, eos
    col = Collator(TOK, max_length=6, crop="start")
    with pytest.warns(UserWarning, match=r"batch item 0: cropping to max_length=6 removes "
                      "the bos/eos stored"):
        batch = col([ids])
    assert batch.tokens[0].tolist() == ids[:6].tolist()  # eos cut off
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col([ids])
        # nothing stored to lose: no warning
        Collator(TOK, max_length=6, crop="start")([_stored("MKVLAGHIKL", False, False)])
        # a crop that keeps both (short enough) does not warn either
        Collator(TOK, max_length=12, crop="random", seed=0)([ids])
