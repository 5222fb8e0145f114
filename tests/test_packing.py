"""PackingCollator, pack / unpack and PackingBatchSampler against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpad import Batch, PackingBatchSampler, PackingCollator, pack, unpack
from seqpad.collate import Collator
from seqpad.packing import next_fit
from seqpad.tokenizer import Tokenizer

TOK = Tokenizer("protein")
SEQS = st.lists(st.text("ACDEFGHIKLMNPQRSTVWY", min_size=1, max_size=20), min_size=1,
                max_size=8)


@settings(max_examples=40, deadline=None)
@given(seqs=SEQS, row=st.integers(1, 24), bos=st.booleans())
def test_collator_layout(seqs: list[str], row: int, bos: bool) -> None:
    if row < 1 + bos:  # no room for a residue besides bos
        with pytest.raises(ValueError, match="max_length"):
            PackingCollator(TOK, row, add_bos=bos)
        return
    batch = PackingCollator(TOK, row, add_bos=bos, crop="start")(seqs)
    ref = Collator(TOK, add_bos=bos, max_length=row, crop="start")
    ids = [ref([s]).tokens[0].tolist() for s in seqs]  # each sequence alone, cropped
    # plain-Python next fit
    rows, offsets, fill, r = [], [], 0, 0
    for x in ids:
        if fill + len(x) > row:
            r, fill = r + 1, 0
        rows.append(r)
        offsets.append(fill)
        fill += len(x)
    assert batch.rows.tolist() == rows and batch.offsets.tolist() == offsets
    assert batch.lengths.tolist() == list(map(len, ids))
    assert batch.tokens.shape == (r + 1, row) and batch.segment_ids.dtype == torch.int32
    tokens = [[TOK.pad_id] * row for _ in range(r + 1)]
    segs = [[0] * row for _ in range(r + 1)]
    for i, x in enumerate(ids):
        first = rows.index(rows[i])
        for j, t in enumerate(x):
            tokens[rows[i]][offsets[i] + j] = t
            segs[rows[i]][offsets[i] + j] = i - first + 1
    assert batch.tokens.tolist() == tokens
    assert batch.segment_ids.tolist() == segs
    assert torch.equal(batch.mask, batch.segment_ids.unsqueeze(1) > 0)
    # unpack gives each sequence back; pack is its inverse
    assert [u.tolist() for u in unpack(batch.tokens, batch)] == ids
    assert torch.equal(pack(unpack(batch.tokens, batch), batch, value=TOK.pad_id), batch.tokens)
    x = torch.randn(len(batch), 3, row) * batch.mask
    assert torch.equal(pack(unpack(x, batch), batch), x)


def test_collator_options_and_errors() -> None:
    batch = PackingCollator(TOK, 8, num_rows=3)([("a", "ACD"), ("b", "KL")])
    assert batch.tokens.shape == (3, 8) and batch.names == ["a", "b"]
    assert not batch.mask[1:].any()
    batch = batch.to("cpu")
    assert isinstance(batch, Batch) and batch.segment_ids is not None
    with pytest.raises(ValueError, match="num_rows=1"):
        PackingCollator(TOK, 4, num_rows=1)(["ACD", "KL"])
    with pytest.raises(ValueError, match="no token"):
        PackingCollator(TOK, 4)(["ACD", ""])
    with pytest.raises(TypeError, match="Tokenizer"):
        PackingCollator("protein", 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not packed"):
        unpack(torch.zeros(1, 3), Collator(TOK)(["ACD"]))
    with pytest.raises(ValueError, match="length"):
        pack([torch.zeros(2)], PackingCollator(TOK, 4)(["ACD"]))


def test_long_sequences_are_cropped() -> None:
    batch = PackingCollator(TOK, 5, crop="start")(["ACDEFGHIK", "LM"])
    assert batch.lengths.tolist() == [5, 2]
    assert unpack(batch.tokens, batch)[0].tolist() == TOK.encode("ACDEF").tolist()


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), max_size=60), row=st.integers(8, 40),
       rows_per_batch=st.integers(1, 4), open_batches=st.integers(1, 5),
       seed=st.integers(0, 5))
def test_sampler_covers_and_fits(lengths: list[int], row: int, rows_per_batch: int,
                                 open_batches: int, seed: int) -> None:
    sampler = PackingBatchSampler(lengths, row, rows_per_batch=rows_per_batch, seed=seed,
                                  open_batches=open_batches)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    seen = sorted(i for b in batches for i in b)
    assert seen == [i for i, n in enumerate(lengths) if n > 0]  # each once, empties skipped
    for b in batches:
        assert b
        rows, _ = next_fit(np.minimum(np.array(lengths)[b], row), row)
        assert rows[-1] < rows_per_batch  # the collator's next fit needs no more rows


def test_sampler_epochs_and_replicas() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, 300)
    s = PackingBatchSampler(lengths, 64, seed=3)
    e0 = list(s)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    parts = [list(PackingBatchSampler(lengths, 64, seed=3, num_replicas=3, rank=r))
             for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    assert {i for p in parts for b in p for i in b} == set(range(300))


def test_sampler_waste_is_small() -> None:
    """Random order, yet about no padding (the benchmark measures real proteomes)."""
    lengths = np.random.default_rng(1).gamma(2.0, 150.0, 3000).astype(int) + 1
    batches = list(PackingBatchSampler(lengths, 1024, rows_per_batch=4))
    real = sum(int(np.minimum(lengths[b], 1024).sum()) for b in batches)
    slots = sum((int(next_fit(np.minimum(lengths[b], 1024), 1024)[0][-1]) + 1) * 1024
                for b in batches)
    assert 1 - real / slots < 0.01
    # not sorted by length: the first sequences of batches are not monotone
    firsts = [int(lengths[b[0]]) for b in batches[:50]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
