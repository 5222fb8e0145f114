"""Masked pooling against a float64 per-sequence Python loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpad.masks import lengths_to_mask
from seqpad.nn.functional import masked_max, masked_mean, masked_sum
from seqpad.nn.pooling import MaskedMaxPool, MaskedMeanPool, MaskedSumPool


def _loop_reference(x: torch.Tensor, lengths: list[int], kind: str) -> torch.Tensor:
    """Pool each sequence's real prefix with plain Python floats (float64)."""
    rows = []
    for b, n in enumerate(lengths):
        row = []
        for c in range(x.shape[1]):
            values = [float(v) for v in x[b, c, :n].tolist()]
            if not values:
                row.append(0.0)
            elif kind == "sum":
                row.append(math.fsum(values))
            elif kind == "mean":
                row.append(math.fsum(values) / len(values))
            else:
                row.append(max(values))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


POOLS = {"mean": MaskedMeanPool, "max": MaskedMaxPool, "sum": MaskedSumPool}
FUNCS = {"mean": masked_mean, "max": masked_max, "sum": masked_sum}


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    extra=st.integers(0, 4),
    kind=st.sampled_from(sorted(POOLS)),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_loop(lengths: list[int], extra: int, kind: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    L = max(max(lengths) + extra, 1)  # L = 0: see test_zero_length_batch
    x = torch.randn(len(lengths), 3, L, generator=g)
    mask = lengths_to_mask(lengths, L)
    x = x.masked_fill(~mask, float("inf") if kind == "max" else float("nan"))
    out = POOLS[kind]()(x, mask)
    assert out.shape == (len(lengths), 3) and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    ref = _loop_reference(x.double(), lengths, kind)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, FUNCS[kind](x, mask), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kind",
    [
        "mean",
        "sum",
        "max",
    ],
)
def test_zero_length_batch(kind: str) -> None:
    """A batch whose sequences are all empty collates to L = 0 and pools to zeros."""
    x = torch.randn(2, 3, 0)
    out = POOLS[kind]()(x, lengths_to_mask([0, 0], 0))
    assert torch.equal(out, torch.zeros(2, 3))


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_all_padding_rows_are_zero_with_zero_gradient(kind: str) -> None:
    x = torch.randn(3, 4, 5, requires_grad=True)
    mask = lengths_to_mask([0, 3, 0], 5)
    out = POOLS[kind]()(x, mask)
    assert torch.equal(out[0], torch.zeros(4)) and torch.equal(out[2], torch.zeros(4))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[0], torch.zeros(4, 5)) and torch.equal(x.grad[2], torch.zeros(4, 5))
    # gradient never reaches padded positions of the real row
    assert torch.equal(x.grad[1, :, 3:], torch.zeros(4, 2))
    assert x.grad[1, :, :3].abs().sum() > 0


@pytest.mark.parametrize(
    ("kind", "native"),
    [("mean", lambda t: t.mean(-1)), ("max", lambda t: t.amax(-1)), ("sum", lambda t: t.sum(-1))],
)
def test_parity_without_mask(kind: str, native) -> None:
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    pool = POOLS[kind]()
    torch.testing.assert_close(pool(x), native(x), rtol=0, atol=0)
    full = torch.ones(2, 1, 7, dtype=torch.bool)
    torch.testing.assert_close(pool(x, full), native(x), rtol=1e-12, atol=1e-12)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    pool(x1, full).sum().backward()
    native(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_mask_forms_and_repr() -> None:
    x = torch.randn(2, 3, 4)
    mask = lengths_to_mask([4, 2], 4)
    for pool in (MaskedMeanPool(), MaskedMaxPool(), MaskedSumPool()):
        ref = pool(x, mask)
        torch.testing.assert_close(pool(x, mask.squeeze(1).float()), ref, rtol=0, atol=0)
        assert repr(pool).endswith("Pool()")
        assert list(pool.state_dict()) == []
