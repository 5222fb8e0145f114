"""MaskedConv1d against nn.Conv1d run on each sequence alone, unpadded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.nn.conv import MaskedConv1d

CONFIGS = [
    # (kernel_size, dilation, groups, causal)
    (1, 1, 1, False),
    (3, 1, 1, False),
    (4, 1, 1, False),  # even kernel: must not shorten L
    (5, 3, 1, False),
    (2, 4, 1, False),
    (3, 2, 2, False),
    (3, 1, 1, True),
    (4, 2, 1, True),
    (6, 1, 2, True),
]


def _native_twin(conv: MaskedConv1d) -> nn.Conv1d:
    """A plain nn.Conv1d (no padding) holding the same weights."""
    native = nn.Conv1d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        dilation=conv.dilation[0],
        groups=conv.groups,
        bias=conv.bias is not None,
        dtype=conv.weight.dtype,
    )
    native.load_state_dict(conv.state_dict())
    return native


def _reference_pad(k: int, d: int, causal: bool) -> tuple[int, int]:
    """Written out independently of seqpad: PyTorch 'same' split / causal left pad."""
    total = d * (k - 1)
    if causal:
        return total, 0
    return total // 2, total - total // 2


@pytest.mark.parametrize(("k", "d", "g", "causal"), CONFIGS)
def test_matches_native_per_sequence(k: int, d: int, g: int, causal: bool) -> None:
    torch.manual_seed(0)
    conv = MaskedConv1d(4, 6, k, dilation=d, groups=g, causal=causal).double()
    native = _native_twin(conv)
    lengths = [9, 1, 5, 0, 13]
    L = 13
    x = torch.randn(len(lengths), 4, L, dtype=torch.float64)
    mask = lengths_to_mask(lengths, L)
    # garbage (even NaN) in padding must not leak
    x = x.masked_fill(~mask, float("nan"))
    out = conv(x, mask)
    assert out.shape == (len(lengths), 6, L)
    left, right = _reference_pad(k, d, causal)
    for b, n in enumerate(lengths):
        if n:
            ref = native(F.pad(x[b : b + 1, :, :n], (left, right)))
            assert ref.shape[-1] == n
            torch.testing.assert_close(out[b, :, :n], ref[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(out[b, :, n:], torch.zeros_like(out[b, :, n:]))
    assert not out.isnan().any()


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 8])
def test_same_length_odd_and_even(k: int) -> None:
    conv = MaskedConv1d(3, 5, k)
    for L in (1, 2, 10):
        assert conv(torch.randn(2, 3, L)).shape == (2, 5, L)
        assert conv(torch.randn(2, 3, L), torch.ones(2, 1, L, dtype=torch.bool)).shape == (2, 5, L)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(("k", "d", "g", "causal"), CONFIGS)
def test_parity_without_mask(k: int, d: int, g: int, causal: bool) -> None:
    """mask=None (and an all-True mask) equals native nn.Conv1d, forward and backward."""
    torch.manual_seed(1)
    conv = MaskedConv1d(4, 6, k, dilation=d, groups=g, causal=causal)
    if causal:
        native = _native_twin(conv)
        left = d * (k - 1)

        def run_native(t: torch.Tensor) -> torch.Tensor:
            return native(F.pad(t, (left, 0)))
    else:
        native = nn.Conv1d(4, 6, k, dilation=d, groups=g, padding="same")
        native.load_state_dict(conv.state_dict())
        run_native = native

    x1 = torch.randn(3, 4, 11, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    go = torch.randn(3, 6, 11)
    for mask in (None, torch.ones(3, 1, 11, dtype=torch.bool)):
        conv.zero_grad()
        native.zero_grad()
        x1.grad = x2.grad = None
        out = conv(x1, mask)
        ref = run_native(x2)
        torch.testing.assert_close(out, ref)
        out.backward(go)
        ref.backward(go)
        torch.testing.assert_close(x1.grad, x2.grad)
        torch.testing.assert_close(conv.weight.grad, native.weight.grad)
        torch.testing.assert_close(conv.bias.grad, native.bias.grad)


def test_state_dict_both_ways() -> None:
    conv = MaskedConv1d(4, 6, 3, dilation=2, groups=2)
    native = nn.Conv1d(4, 6, 3, dilation=2, groups=2)
    assert list(conv.state_dict()) == list(native.state_dict()) == ["weight", "bias"]
    conv.load_state_dict(native.state_dict())
    assert torch.equal(conv.weight, native.weight)
    native2 = nn.Conv1d(4, 6, 3, dilation=2, groups=2)
    native2.load_state_dict(conv.state_dict())
    assert torch.equal(native2.bias, conv.bias)
    assert isinstance(conv, nn.Conv1d)
    nobias = MaskedConv1d(4, 6, 3, bias=False)
    assert nobias.bias is None
    assert list(nobias.state_dict()) == ["weight"]


def test_causal_never_sees_the_future() -> None:
    torch.manual_seed(2)
    conv = MaskedConv1d(2, 3, 4, dilation=2, causal=True)
    x = torch.randn(1, 2, 12)
    y = x.clone()
    y[..., 7:] = torch.randn(1, 2, 5)
    torch.testing.assert_close(conv(x)[..., :7], conv(y)[..., :7], rtol=0, atol=0)
    assert not torch.allclose(conv(x)[..., 7:], conv(y)[..., 7:])


def test_gradient_at_padding_is_zero() -> None:
    torch.manual_seed(3)
    conv = MaskedConv1d(3, 4, 5, dilation=2)
    mask = lengths_to_mask([6, 2, 9], 9)
    x = torch.randn(3, 3, 9, requires_grad=True)
    conv(x, mask).square().sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad.masked_fill(mask, 0), torch.zeros_like(x.grad))
    assert x.grad.masked_select(mask.expand_as(x)).abs().sum() > 0


def test_mask_forms_agree() -> None:
    conv = MaskedConv1d(3, 4, 3)
    mask = lengths_to_mask([5, 3], 6)
    x = torch.randn(2, 3, 6)
    ref = conv(x, mask)
    torch.testing.assert_close(conv(x, mask.squeeze(1)), ref, rtol=0, atol=0)
    torch.testing.assert_close(conv(x, mask.float()), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not fit"):
        conv(x, mask[:, :, :5])


def test_arguments_and_repr() -> None:
    conv = MaskedConv1d(4, 8, 4, dilation=2, causal=True)
    text = repr(conv)
    assert "causal=True" in text and "kernel_size=4" in text and "padding=(6, 0)" in text
    assert conv.same_padding == (6, 0)
    assert MaskedConv1d(4, 8, 4).same_padding == (1, 2)
    # The module pads by itself: the inherited attribute says so, no kwarg overrides it.
    assert conv.padding == (0,)
    with pytest.raises(TypeError):
        MaskedConv1d(4, 8, 3, padding=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        MaskedConv1d(4, 8, 3, stride=2)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="kernel_size"):
        MaskedConv1d(4, 8, 0)
    with pytest.raises(ValueError, match="dilation"):
        MaskedConv1d(4, 8, 3, dilation=0)


@pytest.mark.parametrize("k", [1, 3])
def test_zero_length_batch(k: int) -> None:
    """A batch whose sequences are all empty collates to L = 0: output (B, C_out, 0)."""
    conv = MaskedConv1d(3, 4, k)
    out = conv(torch.randn(2, 3, 0), lengths_to_mask([0, 0], 0))
    assert out.shape == (2, 4, 0)
