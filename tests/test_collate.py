"""Collator and Batch against independent references.

References: ``Tokenizer.encode`` one sequence at a time (numpy fancy-index path, not the
collator's joined ``bytes.translate``), a per-sequence Python loop for masks and padding,
and a slow per-item crop.
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpad.collate import Batch, Collator
from seqpad.tokenizer import Tokenizer, UnknownSymbolError

PROTEIN = "ACDEFGHIKLMNPQRSTVWYBZXJUO"
TOK = Tokenizer("protein")


def reference(tok: Tokenizer, seqs: list, *, bos: bool = False, eos: bool = False,
              multiple: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Pad per sequence with a Python loop: tokens (B, L), mask (B, 1, L), lengths."""
    rows = []
    for s in seqs:
        if isinstance(s, str):
            ids = tok.encode(s, add_bos=bos, add_eos=eos).tolist()
        else:
            ids = ([tok.bos_id] if bos else []) + [int(v) for v in s] + ([tok.eos_id] if eos else [])
        rows.append(ids)
    lengths = [len(r) for r in rows]
    width = max(lengths)
    if multiple:
        while width % multiple:
            width += 1
    tokens = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), 1, width), dtype=torch.bool)
    for b, r in enumerate(rows):
        for t, v in enumerate(r):
            tokens[b, t] = v
            mask[b, 0, t] = True
    return tokens, mask, lengths


def check(batch: Batch, tokens: torch.Tensor, mask: torch.Tensor, lengths: list[int]) -> None:
    assert batch.tokens.dtype == torch.long and batch.mask.dtype == torch.bool
    assert batch.lengths.dtype == torch.long
    assert torch.equal(batch.tokens, tokens)
    assert torch.equal(batch.mask, mask)
    assert batch.lengths.tolist() == lengths
    assert len(batch) == len(lengths)


protein_seq = st.text(alphabet=PROTEIN + PROTEIN.lower(), min_size=0, max_size=60)


@settings(max_examples=60, deadline=None)
@given(seqs=st.lists(protein_seq, min_size=1, max_size=12), bos=st.booleans(),
       eos=st.booleans(), multiple=st.sampled_from([None, 1, 4, 8]))
def test_strings_match_per_sequence_encode(seqs, bos, eos, multiple):
    batch = Collator(TOK, add_bos=bos, add_eos=eos, pad_to_multiple_of=multiple)(seqs)
    check(batch, *reference(TOK, seqs, bos=bos, eos=eos, multiple=multiple))
    assert batch.names is None
    if multiple:
        assert batch.tokens.shape[1] % multiple == 0


@settings(max_examples=60, deadline=None)
@given(data=st.data(), bos=st.booleans(), eos=st.booleans())
def test_mixed_item_kinds(data, bos, eos):
    """str, bytes, uint8 arrays, int64 tensors, named or not: same as the reference."""
    seqs = data.draw(st.lists(protein_seq, min_size=1, max_size=8))
    kinds = data.draw(st.lists(st.sampled_from(["str", "bytes", "u8", "i64", "i32np"]),
                               min_size=len(seqs), max_size=len(seqs)))
    named = data.draw(st.booleans())
    items, ref_items = [], []
    for s, kind in zip(seqs, kinds, strict=True):
        ids = TOK.encode(s)
        item = {"str": s, "bytes": s.encode(), "u8": ids,
                "i64": torch.from_numpy(ids.astype(np.int64)),
                "i32np": ids.astype(np.int32)}[kind]
        items.append(item)
        ref_items.append(s if kind in ("str", "bytes") else ids.tolist())
    names = [f"rec{i}" for i in range(len(items))]
    if named:
        items = list(zip(names, items, strict=True))
    batch = Collator(TOK, add_bos=bos, add_eos=eos)(items)
    check(batch, *reference(TOK, ref_items, bos=bos, eos=eos))
    assert batch.names == (names if named else None)


def test_store_like_items_and_list_pairs():
    """Items as TokenizedDataset returns them: memmap-like uint8 views, (name, ids) pairs."""
    flat = TOK.encode("MKVLAAGIWWQ")
    views = [flat[0:3], flat[3:3], flat[3:11]]
    batch = Collator(TOK)([("a", views[0]), ["b", views[1]], ("c", views[2])])
    check(batch, *reference(TOK, [v.tolist() for v in views]))
    assert batch.names == ["a", "b", "c"]


def test_hand_checked_ids():
    tok = Tokenizer("dna")  # A=5 C=6 G=7 T=8
    batch = Collator(tok, add_bos=True, add_eos=True)(["acg", "", "T"])
    assert batch.tokens.tolist() == [[3, 5, 6, 7, 4], [3, 4, 0, 0, 0], [3, 8, 4, 0, 0]]
    assert batch.lengths.tolist() == [5, 2, 3]
    assert batch.mask[:, 0].tolist() == [[True] * 5, [True, True, False, False, False],
                                         [True, True, True, False, False]]


def test_batch_of_one_and_empty_sequences():
    batch = Collator(TOK)(["MKV"])
    assert batch.tokens.shape == (1, 3) and bool(batch.mask.all())
    batch = Collator(TOK)(["", "", ""])
    assert batch.tokens.shape == (3, 0) and batch.mask.shape == (3, 1, 0)
    assert batch.lengths.tolist() == [0, 0, 0]
    batch = Collator(TOK, pad_to_multiple_of=8)(["", "M"])
    assert batch.tokens.shape == (2, 8)
    assert not bool(batch.mask[0].any())  # an all-False row for the empty sequence
    assert batch.mask[1, 0].tolist() == [True] + [False] * 7
    batch = Collator(TOK, add_eos=True)([""])
    assert batch.tokens.tolist() == [[TOK.eos_id]] and batch.lengths.tolist() == [1]


def test_empty_batch_raises():
    with pytest.raises(ValueError, match="empty"):
        Collator(TOK)([])


def test_ids_containing_pad_still_get_the_mask_from_lengths():
    """A real token equal to pad_id must not be read as padding."""
    ids = np.array([5, 0, 6, 0], dtype=np.uint8)
    batch = Collator(TOK)([ids, np.array([7], dtype=np.uint8)])
    check(batch, *reference(TOK, [ids.tolist(), [7]]))
    batch = Collator(TOK)(["MK", torch.tensor([0, 0, 5, 0])])  # mixed kinds, general path
    check(batch, *reference(TOK, ["MK", [0, 0, 5, 0]]))


def test_bad_items_raise_clear_errors():
    col = Collator(TOK)
    with pytest.raises(UnknownSymbolError, match=r"'x2'.*position 3.*'1'") as e:
        col([("x1", "MKV"), ("x2", "MK1V")])
    assert e.value.record == "x2" and e.value.position == 3
    with pytest.raises(UnknownSymbolError, match=r"batch item 1.*position 2") as e:
        col(["MKV", "Mé"])
    assert e.value.symbol == "é"
    with pytest.raises(TypeError, match="batch item 1"):
        col(["MKV", 5])
    with pytest.raises(ValueError, match="every item"):
        col([("a", "MKV"), "MKV"])
    with pytest.raises(ValueError, match="1-D"):
        col([np.zeros((2, 2), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"\[0, 31\)"):
        col([np.array([5, 300])])  # would wrap to 44 as uint8: refused, not altered
    with pytest.raises(TypeError, match="integers"):
        col([np.array([5.0, 6.0])])
    with pytest.raises(TypeError, match="tuple item"):
        col([(1, "MKV")])
    with pytest.raises(UnknownSymbolError):
        Collator(Tokenizer("protein", unknown="skip"))(["MK*"])  # cannot drop from a batch


def test_unknown_as_unk_matches_encode():
    tok = Tokenizer("protein", unknown="unk")
    seqs = ["MK*V", "aéb", "", "Z1"]
    check(Collator(tok)(seqs), *reference(tok, seqs))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="crop"):
        Collator(TOK, crop="end")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        Collator(TOK, max_length=2, add_bos=True, add_eos=True)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        Collator(TOK, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="seed"):
        Collator(TOK, seed=-1)


# ---------------------------------------------------------------------- cropping
def slow_crop(ids: list[int], window: int, start: int) -> list[int]:
    out = []
    for k in range(start, min(len(ids), start + window)):
        out.append(ids[k])
    return out


@settings(max_examples=50, deadline=None)
@given(seqs=st.lists(protein_seq, min_size=1, max_size=8), bos=st.booleans(),
       eos=st.booleans(), max_length=st.integers(3, 30))
def test_crop_start_matches_slow_reference(seqs, bos, eos, max_length):
    window = max_length - bos - eos
    batch = Collator(TOK, max_length=max_length, crop="start", add_bos=bos, add_eos=eos)(seqs)
    cropped = [slow_crop(TOK.encode(s).tolist(), window, 0) for s in seqs]
    check(batch, *reference(TOK, cropped, bos=bos, eos=eos))
    assert batch.tokens.shape[1] <= max_length


@settings(max_examples=50, deadline=None)
@given(seqs=st.lists(protein_seq, min_size=1, max_size=8), bos=st.booleans(),
       eos=st.booleans(), max_length=st.integers(3, 30), seed=st.integers(0, 2**32))
def test_crop_random_is_a_window_and_reproducible(seqs, bos, eos, max_length, seed):
    window = max_length - bos - eos
    col = Collator(TOK, max_length=max_length, add_bos=bos, add_eos=eos, seed=seed)
    batch = col(seqs)
    # The documented stream: SeedSequence([seed, epoch, worker 0]), one integers() draw
    # per batch for the too-long items, in order.
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 0]))
    ids = [TOK.encode(s).tolist() for s in seqs]
    over = [i for i, x in enumerate(ids) if len(x) > window]
    starts = dict.fromkeys(range(len(ids)), 0)
    if over:
        drawn = rng.integers(0, np.array([len(ids[i]) - window + 1 for i in over]))
        starts.update(zip(over, drawn.tolist(), strict=True))
    cropped = [slow_crop(x, window, starts[i]) for i, x in enumerate(ids)]
    check(batch, *reference(TOK, cropped, bos=bos, eos=eos))
    # every cropped row is a contiguous window of its sequence, bos/eos kept
    for row, n, x in zip(batch.tokens.tolist(), batch.lengths.tolist(), ids, strict=True):
        body = row[int(bos): n - int(eos)]
        assert any(x[k: k + len(body)] == body for k in range(len(x) - len(body) + 1))
        assert len(body) == min(len(x), window)
    # same seed -> same crops, call after call; a fresh copy repeats them
    again = Collator(TOK, max_length=max_length, add_bos=bos, add_eos=eos, seed=seed)
    assert torch.equal(again(seqs).tokens, batch.tokens)
    assert torch.equal(again(seqs).tokens, col(seqs).tokens)


def test_random_window_reaches_both_ends_uniformly():
    seq = "ACDEFGHIKL"  # n = 10, window 4 -> starts 0..6
    col = Collator(TOK, max_length=4, seed=7)
    counts = np.zeros(7, dtype=int)
    ids = TOK.encode(seq).tolist()
    for _ in range(700):
        row = col([seq]).tokens[0].tolist()
        counts[[ids[k: k + 4] for k in range(7)].index(row)] += 1
    assert counts.min() > 60, counts  # every start, including n - window = 6, ~100 each


def test_crop_with_bos_eos_keeps_them_inside_the_budget():
    col = Collator(TOK, max_length=6, add_bos=True, add_eos=True, crop="start")
    batch = col(["ACDEFGHIKL", "AC"])
    assert batch.tokens[0].tolist() == [TOK.bos_id, *TOK.encode("ACDE").tolist(), TOK.eos_id]
    assert batch.lengths.tolist() == [6, 4]


def test_crop_error_names_item_and_length():
    col = Collator(TOK, max_length=5, crop="error", add_bos=True)
    col(["ACDE"])  # 4 + bos = 5 fits
    with pytest.raises(ValueError, match=r"'P2' \(batch item 1\): length 7 .*max_length=5"):
        col([("P1", "AC"), ("P2", "ACDEFG")])


def test_seeds_epochs_and_global_rng():
    seqs = ["ACDEFGHIKLMNPQRSTVWY" * 5] * 16
    np_state, torch_state, py_state = np.random.get_state(), torch.get_rng_state(), random.getstate()
    a = Collator(TOK, max_length=10, seed=1)
    b = Collator(TOK, max_length=10, seed=2)
    u = Collator(TOK, max_length=10)
    ta, tb, tu = a(seqs).tokens, b(seqs).tokens, u(seqs).tokens
    assert not torch.equal(ta, tb)
    assert not torch.equal(tu, Collator(TOK, max_length=10)(seqs).tokens)  # OS entropy
    a.set_epoch(1)
    t1 = a(seqs).tokens
    assert not torch.equal(ta, t1)
    a.set_epoch(0)
    assert torch.equal(a(seqs).tokens, ta)  # the epoch-0 stream restarts
    # no global RNG was read or advanced
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state


def test_pickle_round_trip_continues_the_stream():
    col = Collator(TOK, max_length=8, add_bos=True, seed=3, pad_to_multiple_of=4)
    seqs = ["ACDEFGHIKLMNPQRSTVWY", "MKV"]
    col(seqs)
    copy = pickle.loads(pickle.dumps(col))
    assert repr(copy) == repr(col)
    for _ in range(3):
        assert torch.equal(copy(seqs).tokens, col(seqs).tokens)


def test_worker_streams_differ_and_worker0_equals_main(monkeypatch):
    """Each DataLoader worker gets the (seed, epoch, worker id) stream."""
    import seqpad.collate as mod

    class Info:
        def __init__(self, wid: int, seed: int) -> None:
            self.id, self.seed = wid, seed

    seqs = ["ACDEFGHIKLMNPQRSTVWY" * 5] * 8
    main = Collator(TOK, max_length=10, seed=5)(seqs).tokens
    outs = []
    for wid, tseed in [(0, 111), (1, 112), (0, 999)]:
        monkeypatch.setattr(mod.torch.utils.data, "get_worker_info", lambda w=wid, s=tseed: Info(w, s))
        outs.append(Collator(TOK, max_length=10, seed=5)(seqs).tokens)
    assert torch.equal(outs[0], main) and torch.equal(outs[2], main)  # torch's seed unused
    assert not torch.equal(outs[0], outs[1])


# ------------------------------------------------------------------------ Batch
def test_batch_to_and_pin_memory(monkeypatch):
    from torch.utils.data._utils.pin_memory import pin_memory as loader_pin

    batch = Collator(TOK)([("a", "MKV"), ("b", "M")])
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, Batch) and moved.names == ["a", "b"]
    assert torch.equal(moved.tokens, batch.tokens) and torch.equal(moved.mask, batch.mask)
    if torch.cuda.is_available():
        pinned = loader_pin(batch)
        assert pinned.tokens.is_pinned() and pinned.mask.is_pinned()
        assert pinned.lengths.is_pinned() and pinned.names == ["a", "b"]
        return
    # No accelerator here: check the DataLoader's pin path calls Batch.pin_memory on
    # every tensor, with Tensor.pin_memory recorded instead of run.
    calls = []

    def fake_pin(self, *args, **kwargs):
        calls.append(self.dtype)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    pinned = loader_pin(batch)
    assert isinstance(pinned, Batch) and pinned.names == ["a", "b"]
    assert sorted(map(str, calls)) == sorted(map(str, [torch.long, torch.bool, torch.long]))
    assert torch.equal(pinned.tokens, batch.tokens)


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("named", [False, True])
def test_uint8_ids_outside_the_vocabulary_are_rejected(as_tensor: bool, named: bool) -> None:
    tok = Tokenizer("protein")  # vocab_size 31
    bad = np.array([200, 5], dtype=np.uint8)
    item = torch.from_numpy(bad) if as_tensor else bad
    good = np.array([5, 6], dtype=np.uint8)
    items = [("a", good), ("b", item)] if named else [good, item]
    with pytest.raises(ValueError, match=r"batch item 1.*\[0, 31\).*200"):
        Collator(tok)(items)
