"""MaskedLMCollator / mask_tokens: statistics, specials never chosen, seeding, workers."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from seqpad import Batch, Collator, MaskedLMCollator, Tokenizer, mask_tokens
from seqpad.masked_lm import residue_ids

AA = "ACDEFGHIKLMNPQRSTVWY"


def _seqs(n: int, seed: int, lo: int = 0, hi: int = 200) -> list[str]:
    r = random.Random(seed)
    return ["".join(r.choice(AA) for _ in range(r.randint(lo, hi))) for _ in range(n)]


def _within(count: int, n: int, p: float, z: float = 5.0) -> bool:
    """``count`` successes of ``n`` Bernoulli(p) trials lie within z standard deviations."""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


# A vocabulary whose specials are not 0..4 and whose pad is not 0 (like ESM-2's):
# 0 bos, 1 pad, 2 eos, 3 unk, 4..33 residues, 34 an extra special, 35 mask.
# residue_ids() only reads vocab_size and special_ids.
SHIFTED = SimpleNamespace(vocab_size=36, special_ids=(0, 1, 2, 3, 34, 35), mask_id=35)


def test_labels_and_inputs_agree_with_original() -> None:
    tok = Tokenizer("protein")
    seqs = _seqs(64, 0)
    plain = Collator(tok)(seqs)
    batch = MaskedLMCollator(tok, seed=1)(seqs)
    assert batch.labels is not None and batch.labels.dtype == torch.int64
    assert batch.labels.shape == batch.tokens.shape == plain.tokens.shape
    assert torch.equal(batch.mask, plain.mask) and torch.equal(batch.lengths, plain.lengths)
    chosen = batch.labels != -100
    assert torch.equal(batch.labels[chosen], plain.tokens[chosen])
    # unchosen positions are untouched, padding included
    assert torch.equal(batch.tokens[~chosen], plain.tokens[~chosen])
    assert not bool((chosen & ~batch.mask[:, 0]).any())


def test_fractions_over_many_batches() -> None:
    tok = Tokenizer("protein")
    collate = MaskedLMCollator(tok, seed=3, add_bos=True, add_eos=True)
    plain = Collator(tok, add_bos=True, add_eos=True)
    n_res = n_chosen = n_mask = n_random = n_same = 0
    specials = torch.tensor(tok.special_ids)
    for k in range(20):
        seqs = _seqs(64, 100 + k, lo=50, hi=300)  # long: the >= 1 rule barely matters
        orig = plain(seqs).tokens
        b = collate(seqs)
        chosen = b.labels != -100
        residue = ~torch.isin(orig, specials)
        assert not bool((chosen & ~residue).any()), "a special or pad position was chosen"
        n_res += int(residue.sum())
        n_chosen += int(chosen.sum())
        inp = b.tokens[chosen]
        n_mask += int((inp == tok.mask_id).sum())
        same = inp == orig[chosen]
        n_same += int(same.sum())
        rnd = inp[(inp != tok.mask_id) & ~same]
        assert not bool(torch.isin(rnd, specials).any()), "random replacement is special"
        n_random += rnd.numel()
    assert _within(n_chosen, n_res, 0.15)
    assert _within(n_mask, n_chosen, 0.8)
    # a random draw equals the original residue 1 time in 26
    p_random = 0.1 * (1 - 1 / 26)
    assert _within(n_random, n_chosen, p_random)
    assert _within(n_same, n_chosen, 1 - 0.8 - p_random)


def test_custom_fractions_and_random_ids_cover_residues() -> None:
    tok = Tokenizer("dna")
    collate = MaskedLMCollator(tok, mlm_probability=0.5, mask_fraction=0.0,
                               random_fraction=1.0, seed=0)
    b = collate(["A" * 4000])
    chosen = b.labels != -100
    assert _within(int(chosen.sum()), 4000, 0.5)
    drawn = set(b.tokens[chosen].tolist())
    assert drawn == set(residue_ids(tok).tolist())  # every residue id, no special
    assert not bool((b.tokens == tok.mask_id).any())


def test_shifted_specials_never_chosen_and_pad_not_zero() -> None:
    tok = SHIFTED
    ids = residue_ids(tok)  # type: ignore[arg-type]
    assert ids.tolist() == list(range(4, 34))
    rng = np.random.default_rng(0)
    rows = []
    for n in rng.integers(0, 100, size=200):
        body = rng.integers(0, 36, size=int(n))
        rows.append(np.concatenate([[0], body, [2]]))
    width = max(map(len, rows))
    tokens = torch.from_numpy(np.stack([np.pad(r, (0, width - len(r)), constant_values=1)
                                      for r in rows]))
    inputs, labels = mask_tokens(tokens, ids, tok.mask_id, mlm_probability=0.3,
                                 mask_fraction=0.5, random_fraction=0.5,
                                 generator=np.random.default_rng(1))
    chosen = labels != -100
    specials = torch.tensor(tok.special_ids)
    assert not bool(torch.isin(tokens[chosen], specials).any())
    assert bool(torch.isin(inputs[chosen], torch.cat([torch.tensor([35]),
                                                      torch.from_numpy(ids)])).all())
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    has_res = torch.isin(tokens, torch.from_numpy(ids)).any(1)
    assert torch.equal(chosen.any(1), has_res)


def test_uint16_like_large_vocab() -> None:
    """Ids above 255 (k-mer vocabularies) are chosen and drawn like any other."""
    residues = np.arange(5, 4101)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(5, 4101, size=(8, 500)))
    inputs, labels = mask_tokens(tokens, residues, 2, mask_fraction=0.0, random_fraction=1.0,
                                 generator=np.random.default_rng(0))
    chosen = labels != -100
    assert int(inputs[chosen].max()) > 255 and int(inputs[chosen].min()) >= 5


def test_at_least_one_target_per_sequence() -> None:
    tok = Tokenizer("protein")
    collate = MaskedLMCollator(tok, mlm_probability=0.01, seed=5, add_bos=True, add_eos=True)
    seqs = ["M", "", "MK", *_seqs(100, 7, lo=0, hi=5)]
    for _ in range(5):
        b = collate(seqs)
        per_row = (b.labels != -100).sum(1)
        residues = torch.tensor([len(s) for s in seqs])
        assert torch.equal(per_row >= 1, residues >= 1)
        assert bool((per_row[residues == 1] == 1).all())
    # a single residue is chosen uniformly among the row's residues
    counts = np.zeros(3, dtype=int)
    for seed in range(600):
        b = MaskedLMCollator(tok, mlm_probability=1e-9, seed=seed)(["ACD"])
        counts[int((b.labels[0] != -100).nonzero()[0, 0])] += 1
    assert all(_within(c, 600, 1 / 3) for c in counts)


def test_seeded_reproducible_per_epoch_and_differs() -> None:
    tok = Tokenizer("protein")
    seqs = _seqs(32, 11, lo=20, hi=100)

    def run(seed: int, epoch: int) -> list[Batch]:
        c = MaskedLMCollator(tok, seed=seed, max_length=40)
        c.set_epoch(epoch)
        return [c(seqs) for _ in range(3)]

    a, b = run(0, 0), run(0, 0)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.labels, y.labels)
    assert not torch.equal(a[0].labels, a[1].labels)  # the stream advances per batch
    assert not torch.equal(run(0, 1)[0].labels, a[0].labels)
    assert not torch.equal(run(1, 0)[0].labels, a[0].labels)
    # unseeded: random
    c1, c2 = MaskedLMCollator(tok), MaskedLMCollator(tok)
    assert not torch.equal(c1(seqs).labels, c2(seqs).labels)


class _Items(torch.utils.data.Dataset[str]):
    def __init__(self, seqs: list[str]) -> None:
        self.seqs = seqs

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> str:
        return self.seqs[i]


def test_dataloader_workers_reproducible_and_distinct() -> None:
    tok = Tokenizer("protein")
    seqs = [AA * 5] * 16  # identical items: batches differ only by their masking

    def epoch(e: int) -> list[Batch]:
        c = MaskedLMCollator(tok, seed=7)
        c.set_epoch(e)
        loader = DataLoader(_Items(seqs), batch_size=4, num_workers=2, collate_fn=c)
        return list(loader)

    a, b = epoch(0), epoch(0)
    assert all(torch.equal(x.labels, y.labels) and torch.equal(x.tokens, y.tokens)
               for x, y in zip(a, b, strict=True))
    # batches 0 and 1 come from workers 0 and 1: both first in their stream
    assert not torch.equal(a[0].labels, a[1].labels)
    assert not torch.equal(epoch(1)[0].labels, a[0].labels)
    assert all(x.labels is not None for x in a)


def test_batch_to_moves_labels() -> None:
    b = MaskedLMCollator(Tokenizer("dna"), seed=0)(["ACGT"]).to("cpu")
    assert b.labels is not None and b.pin_memory is not None


def test_rejects_bad_options() -> None:
    tok = Tokenizer("protein")
    with pytest.raises(ValueError, match="mlm_probability"):
        MaskedLMCollator(tok, mlm_probability=0.0)
    with pytest.raises(ValueError, match="sum to"):
        MaskedLMCollator(tok, mask_fraction=0.8, random_fraction=0.3)
    with pytest.raises(ValueError, match="\\(B, L\\)"):
        mask_tokens(torch.zeros(3, dtype=torch.long), [5], 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="ACGTN", max_size=40), min_size=1, max_size=8),
       st.floats(0.01, 1.0), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_properties(seqs: list[str], p: float, mask_frac: float, seed: int) -> None:
    tok = Tokenizer("dna")
    rand_frac = (1 - mask_frac) / 2
    plain = Collator(tok, add_bos=True)(seqs)
    b = MaskedLMCollator(tok, mlm_probability=p, mask_fraction=mask_frac,
                         random_fraction=rand_frac, seed=seed, add_bos=True)(seqs)
    chosen = b.labels != -100
    residues = torch.isin(plain.tokens, torch.from_numpy(residue_ids(tok)))
    assert not bool((chosen & ~residues).any())
    assert torch.equal(b.labels[chosen], plain.tokens[chosen])
    assert torch.equal(b.tokens[~chosen], plain.tokens[~chosen])
    assert torch.equal(chosen.any(1), residues.any(1))
    changed = b.tokens[chosen]
    assert bool(((changed == tok.mask_id) | torch.isin(
        changed, torch.from_numpy(residue_ids(tok)))).all())
    again = MaskedLMCollator(tok, mlm_probability=p, mask_fraction=mask_frac,
                             random_fraction=rand_frac, seed=seed, add_bos=True)(seqs)
    assert torch.equal(again.tokens, b.tokens) and torch.equal(again.labels, b.labels)


@pytest.mark.parametrize("p", [0.15, 1 / 256, 0.5, 0.999, 1.0])
def test_bernoulli_from_bytes_is_exact(p: float) -> None:
    from seqpad.masked_lm import _bernoulli

    n = 400_000
    draws = _bernoulli(np.random.default_rng(0), n, p)
    assert draws.shape == (n,) and draws.dtype == bool
    assert _within(int(draws.sum()), n, p)
    # p = 0.15 sits between two byte thresholds: 38/256 = 0.1484 would fail this bound
    if p == 0.15:
        assert abs(draws.mean() - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)


def test_lengths_limit_the_choice() -> None:
    """With lengths, residue ids past a row's length (not padding ids) are never chosen."""
    tokens = torch.full((3, 50), 7, dtype=torch.long)  # every position holds a residue id
    lengths = torch.tensor([50, 10, 0])
    for seed in range(20):
        _, labels = mask_tokens(tokens, [7], 2, mlm_probability=0.5, lengths=lengths,
                                generator=np.random.default_rng(seed))
        chosen = labels != -100
        assert not bool(chosen[1, 10:].any()) and not bool(chosen[2].any())
        assert bool(chosen[0].any()) and bool(chosen[1, :10].any())
    _, labels = mask_tokens(tokens, [7], 2, mlm_probability=0.5,
                            generator=np.random.default_rng(0))
    assert bool((labels != -100).any(1).all())  # without lengths every position counts


def _check_vocab(tok: Tokenizer, seqs: list[str], **options: object) -> None:
    plain = Collator(tok, **options)(seqs)  # type: ignore[arg-type]
    b = MaskedLMCollator(tok, mlm_probability=0.3, mask_fraction=0.4, random_fraction=0.4,
                         seed=0, **options)(seqs)
    specials = torch.tensor(tok.special_ids)
    chosen = b.labels != -100
    assert bool(chosen.any())
    assert not bool(torch.isin(plain.tokens[chosen], specials).any())
    assert torch.equal(b.labels[chosen], plain.tokens[chosen])
    assert torch.equal(b.tokens[~chosen], plain.tokens[~chosen])
    inp = b.tokens[chosen]
    assert not bool(torch.isin(inp[inp != tok.mask_id], specials).any())
    assert bool((inp == tok.mask_id).any())


def test_pretrained_esm2_vocabulary() -> None:
    import seqpad

    if not hasattr(seqpad, "pretrained_tokenizer"):
        pytest.skip("seqpad.pretrained_tokenizer not available in this build")
    tok = seqpad.pretrained_tokenizer("esm2")
    assert tok.pad_id != 0 or tok.mask_id != 2  # the ids really differ from seqpad's own
    _check_vocab(tok, _seqs(32, 3, lo=1, hi=120), add_bos=True, add_eos=True)


def test_kmer_vocabulary() -> None:
    try:
        tok = Tokenizer("dna", k=6)  # type: ignore[call-arg]
    except TypeError:
        pytest.skip("k-mer tokenizers not available in this build")
    r = random.Random(0)
    seqs = ["".join(r.choice("ACGT") for _ in range(r.randint(6, 300))) for _ in range(16)]
    _check_vocab(tok, seqs)
