"""Mask helpers, against a per-sequence Python loop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpad import as_mask, lengths_to_mask, mask_to_lengths


def loop_mask(lengths: list[int], max_len: int) -> torch.Tensor:
    out = torch.zeros(len(lengths), 1, max_len, dtype=torch.bool)
    for b, n in enumerate(lengths):
        for t in range(n):
            out[b, 0, t] = True
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(0, 5))
def test_lengths_to_mask_matches_loop(lengths: list[int], extra: int) -> None:
    longest = max(lengths)
    mask = lengths_to_mask(torch.tensor(lengths))
    assert mask.dtype == torch.bool and mask.shape == (len(lengths), 1, longest)
    assert torch.equal(mask, loop_mask(lengths, longest))
    padded = lengths_to_mask(lengths, longest + extra)
    assert torch.equal(padded, loop_mask(lengths, longest + extra))
    assert mask_to_lengths(padded).tolist() == lengths
    assert mask_to_lengths(padded.squeeze(1)).tolist() == lengths


def test_lengths_to_mask_errors_and_empty() -> None:
    with pytest.raises(ValueError, match="shorter"):
        lengths_to_mask([3, 5], max_len=4)
    with pytest.raises(ValueError, match="non-negative"):
        lengths_to_mask([-1])
    with pytest.raises(ValueError, match="1-D"):
        lengths_to_mask(torch.ones(2, 2, dtype=torch.long))
    assert lengths_to_mask([]).shape == (0, 1, 0)
    assert lengths_to_mask([0, 0]).shape == (2, 1, 0)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.int64, torch.uint8])
@pytest.mark.parametrize("two_d", [True, False])
def test_as_mask_accepts_forms(dtype: torch.dtype, two_d: bool) -> None:
    x = torch.randn(3, 4, 6)
    ref = loop_mask([6, 2, 0], 6)
    m = ref.squeeze(1) if two_d else ref
    out = as_mask(m.to(dtype), x)
    assert out is not None and out.dtype == torch.bool
    assert torch.equal(out, ref)


def test_as_mask_none_and_2d_input() -> None:
    x = torch.randn(3, 4, 6)
    assert as_mask(None, x) is None
    x2 = torch.randn(3, 4)
    out = as_mask(torch.tensor([1.0, 0.0, 1.0]), x2)
    assert out is not None and out.tolist() == [[True], [False], [True]]


def test_as_mask_errors_name_both_shapes() -> None:
    x = torch.randn(3, 4, 6)
    with pytest.raises(ValueError, match=r"\(3, 5\).*\(3, 4, 6\)"):
        as_mask(torch.ones(3, 5, dtype=torch.bool), x)
    with pytest.raises(ValueError, match=r"\(3, 2, 6\)"):
        as_mask(torch.ones(3, 2, 6, dtype=torch.bool), x)
    with pytest.raises(ValueError, match="only 0 and 1"):
        as_mask(torch.full((3, 6), 0.5), x)
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        as_mask(torch.ones(3, 6), torch.randn(3))
    with pytest.raises(ValueError, match=r"\(B, 1, L\) or \(B, L\)"):
        mask_to_lengths(torch.ones(2, 3, 4))
