"""MaskedEmbedding against nn.Embedding on each sequence alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.nn.embedding import MaskedEmbedding


def _padded_ids(lengths: list[int], vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(5, vocab, (n,), generator=g)
    return ids


def test_matches_native_per_sequence() -> None:
    torch.manual_seed(0)
    emb = MaskedEmbedding(25, 6)
    native = nn.Embedding(25, 6, padding_idx=0)
    native.load_state_dict(emb.state_dict())
    lengths = [7, 3, 0, 5]
    ids = _padded_ids(lengths, 25)
    out = emb(ids)
    assert out.shape == (4, 6, 7) and out.dtype == torch.float32
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b, :, :n], native(ids[b, :n]).T, rtol=0, atol=0)
        assert torch.equal(out[b, :, n:], torch.zeros(6, 7 - n))


def test_pad_row_zero_and_never_learns() -> None:
    torch.manual_seed(1)
    emb = MaskedEmbedding(25, 6)
    assert torch.equal(emb.weight[0], torch.zeros(6))
    # even a non-zero pad row never reaches the output
    with torch.no_grad():
        emb.weight[0] = 1.0
    ids = _padded_ids([6, 2, 4], 25)
    out = emb(ids)
    assert torch.equal(out.masked_select(~(ids != 0).unsqueeze(1).expand_as(out)),
                       torch.zeros(int((ids == 0).sum()) * 6))
    out.square().sum().backward()
    assert emb.weight.grad is not None
    assert torch.equal(emb.weight.grad[0], torch.zeros(6))
    used = ids[ids != 0].unique()
    assert (emb.weight.grad[used].abs().sum(-1) > 0).all()
    # an optimiser step leaves the pad row where it was
    torch.optim.SGD(emb.parameters(), lr=1.0).step()
    assert torch.equal(emb.weight[0].detach(), torch.ones(6))


def test_explicit_mask_overrides_ids() -> None:
    """A mask (e.g. from the collator) zeroes positions whatever their ids, with no grad."""
    emb = MaskedEmbedding(25, 4)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = lengths_to_mask([3, 2], 4)  # position 3 of row 0 is masked though its id is real
    out = emb(ids, mask)
    assert torch.equal(out[0, :, 3], torch.zeros(4))
    torch.testing.assert_close(out[0, :, :3], emb.weight[[5, 6, 7]].T, rtol=0, atol=0)
    out.sum().backward()
    assert torch.equal(emb.weight.grad[8], torch.zeros(4))
    torch.testing.assert_close(emb(ids, mask.squeeze(1).float()), out, rtol=0, atol=0)


def test_parity_and_state_dict() -> None:
    emb = MaskedEmbedding(30, 5, padding_idx=0)
    native = nn.Embedding(30, 5, padding_idx=0)
    assert isinstance(emb, nn.Embedding)
    assert list(emb.state_dict()) == list(native.state_dict()) == ["weight"]
    emb.load_state_dict(native.state_dict())
    native.load_state_dict(emb.state_dict())
    ids = torch.randint(5, 30, (3, 8))
    torch.testing.assert_close(emb(ids), native(ids).transpose(1, 2), rtol=0, atol=0)
    emb(ids).sum().backward()
    native(ids).sum().backward()
    torch.testing.assert_close(emb.weight.grad, native.weight.grad)
    # uint8 ids, as stored on disk, are accepted
    torch.testing.assert_close(emb(ids.to(torch.uint8)), emb(ids), rtol=0, atol=0)


def test_no_padding_idx_and_errors() -> None:
    emb = MaskedEmbedding(10, 3, padding_idx=None)
    ids = torch.tensor([[0, 1, 2]])
    torch.testing.assert_close(emb(ids), emb.weight[[0, 1, 2]].T.unsqueeze(0), rtol=0, atol=0)
    assert "padding_idx" not in repr(emb)
    assert "padding_idx=0" in repr(MaskedEmbedding(10, 3))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        emb(torch.tensor([1, 2, 3]))


def test_masked_out_positions_may_hold_any_id() -> None:
    """With an explicit mask, ids at padded positions are never looked up (e.g. -100)."""
    torch.manual_seed(0)
    emb = MaskedEmbedding(10, 4)
    ids = torch.tensor([[5, 6, 7], [5, -100, 999]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = emb(ids, mask)
    ref = emb.weight.detach()[torch.tensor([5, 6, 7])].T
    torch.testing.assert_close(out[0], ref, rtol=0, atol=0)
    torch.testing.assert_close(out[1, :, 0], emb.weight.detach()[5], rtol=0, atol=0)
    assert torch.equal(out[1, :, 1:], torch.zeros(4, 2))
