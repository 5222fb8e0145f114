"""MaskedLSTM / MaskedGRU against nn.LSTM / nn.GRU run on each sequence alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.nn.rnn import MaskedGRU, MaskedLSTM

PAIRS = [(MaskedLSTM, nn.LSTM), (MaskedGRU, nn.GRU)]
IDS = ["lstm", "gru"]


def _native_twin(rnn: nn.RNNBase, native_cls: type[nn.RNNBase]) -> nn.RNNBase:
    native = native_cls(
        rnn.input_size,
        rnn.hidden_size,
        rnn.num_layers,
        bias=rnn.bias,
        batch_first=True,
        dropout=rnn.dropout,
        bidirectional=rnn.bidirectional,
        dtype=next(rnn.parameters()).dtype,
    )
    native.load_state_dict(rnn.state_dict())
    return native


def _states(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
@pytest.mark.parametrize(("layers", "bidir"), [(1, False), (1, True), (2, True), (3, False)])
def test_matches_native_per_sequence(cls, native_cls, layers: int, bidir: bool) -> None:
    torch.manual_seed(0)
    rnn = cls(5, 4, layers, bidirectional=bidir).eval()
    native = _native_twin(rnn, native_cls).eval()
    lengths = [6, 1, 0, 9, 3, 9]  # unsorted, with ties and an empty sequence
    L = 11
    mask = lengths_to_mask(lengths, L)
    x = torch.randn(len(lengths), 5, L).masked_fill(~mask, float("nan"))
    out, state = rnn(x, mask, return_state=True)
    # LSTM: return_state packs, the plain call runs per direction; both must hold.
    plain = rnn(x, mask)
    torch.testing.assert_close(plain, out, rtol=1e-5, atol=1e-5)
    assert torch.equal(plain.masked_fill(mask, 0), torch.zeros_like(plain))
    dirs = 2 if bidir else 1
    assert out.shape == (len(lengths), 4 * dirs, L)
    assert not out.isnan().any()
    for s in _states(state):
        assert s.shape == (layers * dirs, len(lengths), 4)
    for b, n in enumerate(lengths):
        assert torch.equal(out[b, :, n:], torch.zeros(4 * dirs, L - n))
        if n == 0:
            for s in _states(state):
                assert torch.equal(s[:, b], torch.zeros(layers * dirs, 4))
            continue
        ref, ref_state = native(x[b : b + 1, :, :n].transpose(1, 2))
        torch.testing.assert_close(out[b, :, :n], ref[0].T, rtol=1e-5, atol=1e-5)
        for s, r in zip(_states(state), _states(ref_state), strict=True):
            torch.testing.assert_close(s[:, b], r[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_inter_layer_dropout_obeys_train_and_eval(cls, native_cls) -> None:
    torch.manual_seed(4)
    rnn = cls(3, 8, 3, bidirectional=True, dropout=0.5)
    x = torch.randn(3, 3, 6)
    mask = lengths_to_mask([6, 4, 1], 6)
    ref = rnn.eval()(x, mask)
    torch.testing.assert_close(rnn(x, mask), ref, rtol=0, atol=0)
    rnn.train()
    a, b = rnn(x, mask), rnn(x, mask)
    assert not torch.allclose(a, ref) and not torch.allclose(a, b)
    assert torch.equal(a.masked_fill(mask, 0), torch.zeros_like(a))
    rnn.dropout = 0.0
    torch.testing.assert_close(rnn(x, mask), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_reverse_direction_starts_at_true_end(cls, native_cls) -> None:
    """The backward output at t=0 covers exactly the real tokens, not the padding."""
    torch.manual_seed(1)
    rnn = cls(3, 2, bidirectional=True).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    padded = torch.cat([x, torch.randn(1, 3, 6, dtype=torch.float64)], dim=-1)
    mask = lengths_to_mask([4], 10)
    alone = rnn(x)
    torch.testing.assert_close(rnn(padded, mask)[..., :4], alone, rtol=1e-12, atol=1e-12)
    # ...whereas the native module run over the padding would see it in reverse
    assert not torch.allclose(rnn(padded)[..., :4], alone)


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_parity_without_mask(cls, native_cls) -> None:
    torch.manual_seed(2)
    rnn = cls(4, 3, 2, bidirectional=True)
    native = _native_twin(rnn, native_cls)
    x1 = torch.randn(3, 4, 7, requires_grad=True)
    x2 = x1.detach().transpose(1, 2).clone().requires_grad_(True)
    out, state = rnn(x1, return_state=True)
    ref, ref_state = native(x2)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=0, atol=0)
    for s, r in zip(_states(state), _states(ref_state), strict=True):
        torch.testing.assert_close(s, r, rtol=0, atol=0)
    go = torch.randn_like(out)
    (out * go).sum().backward()
    (ref * go.transpose(1, 2)).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad.transpose(1, 2))
    for (name, p), (name2, q) in zip(rnn.named_parameters(), native.named_parameters(),
                                     strict=True):
        assert name == name2
        torch.testing.assert_close(p.grad, q.grad)
    # A full mask packs, but gives the same numbers.
    full = torch.ones(3, 1, 7, dtype=torch.bool)
    torch.testing.assert_close(rnn(x1, full), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_state_dict_both_ways(cls, native_cls) -> None:
    rnn = cls(4, 3, 2, bidirectional=True, bias=False)
    native = native_cls(4, 3, 2, bidirectional=True, bias=False)
    assert isinstance(rnn, native_cls)
    assert list(rnn.state_dict()) == list(native.state_dict())
    assert [n for n, _ in rnn.named_parameters()] == [n for n, _ in native.named_parameters()]
    rnn.load_state_dict(native.state_dict())
    for a, b in zip(rnn.parameters(), native.parameters(), strict=True):
        assert torch.equal(a, b)
    native2 = native_cls(4, 3, 2, bidirectional=True, bias=False, batch_first=True)
    native2.load_state_dict(cls(4, 3, 2, bidirectional=True, bias=False).state_dict())
    assert rnn.batch_first  # internal layout; the module itself takes (B, C, L)
    assert "batch_first" not in repr(rnn)


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_gradient_never_reaches_padding(cls, native_cls) -> None:
    torch.manual_seed(3)
    rnn = cls(3, 4, 2, bidirectional=True)
    mask = lengths_to_mask([5, 0, 2], 6)
    x = torch.randn(3, 3, 6, requires_grad=True)
    out, state = rnn(x, mask, return_state=True)
    loss = out.square().sum() + sum(s.square().sum() for s in _states(state))
    loss.backward()
    assert x.grad is not None
    assert torch.equal(x.grad.masked_fill(mask, 0), torch.zeros_like(x.grad))
    assert x.grad[0, :, :5].abs().sum() > 0 and x.grad[2, :, :2].abs().sum() > 0


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_all_empty_batch(cls, native_cls) -> None:
    rnn = cls(3, 4, 2, bidirectional=True)
    for L in (0, 5):
        x = torch.randn(2, 3, L, requires_grad=True)
        out, state = rnn(x, lengths_to_mask([0, 0], L), return_state=True)
        assert torch.equal(out, torch.zeros(2, 8, L))
        for s in _states(state):
            assert torch.equal(s, torch.zeros(4, 2, 4))
        out.sum().backward()
        for p in rnn.parameters():
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
        rnn.zero_grad()


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_masks_that_cannot_be_packed_raise(cls, native_cls) -> None:
    rnn = cls(3, 4)
    x = torch.randn(2, 3, 5)
    holes = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="row 1 is not a right-padded prefix"):
        rnn(x, holes)
    left_padded = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="row 1 is not a right-padded prefix"):
        rnn(x, left_padded)
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        rnn(torch.randn(3, 5))


@pytest.mark.parametrize(("cls", "native_cls"), PAIRS, ids=IDS)
def test_mask_forms_agree(cls, native_cls) -> None:
    rnn = cls(3, 4, bidirectional=True)
    x = torch.randn(3, 3, 6)
    mask = lengths_to_mask([6, 2, 4], 6)
    ref = rnn(x, mask)
    torch.testing.assert_close(rnn(x, mask.squeeze(1)), ref, rtol=0, atol=0)
    torch.testing.assert_close(rnn(x, mask.float()), ref, rtol=0, atol=0)


def test_signature() -> None:
    with pytest.raises(TypeError):
        MaskedLSTM(3, 4, 1, True)  # type: ignore[misc]  # keyword-only options
    with pytest.raises(TypeError):
        MaskedGRU(3, 4, batch_first=False)  # type: ignore[call-arg]
    lstm = MaskedLSTM(3, 4, 2, bidirectional=True, dropout=0.25, dtype=torch.float64)
    assert lstm.dropout == 0.25 and lstm.weight_ih_l0.dtype == torch.float64
    assert "dropout=0.25" in repr(lstm) and "bidirectional=True" in repr(lstm)


def test_lstm_runs_in_float32_where_cpu_autocast_lstm_fails(monkeypatch) -> None:
    """CPUs without bf16 instructions cannot run oneDNN's bf16 LSTM (native nn.LSTM raises
    "could not create a primitive descriptor" under CPU autocast): MaskedLSTM runs that
    layer in float32 instead. The failure is simulated here, so any CPU runs this path."""
    real = torch.lstm
    calls = []

    def lstm_without_bf16(inp, hx, params, *args):  # type: ignore[no-untyped-def]
        calls.append(torch.is_autocast_enabled("cpu"))
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("could not create a primitive descriptor for the LSTM")
        return real(inp, hx, params, *args)

    torch.manual_seed(0)
    rnn = MaskedLSTM(5, 4, 2, bidirectional=True).eval()
    x = torch.randn(3, 5, 7)
    mask = lengths_to_mask(torch.tensor([7, 3, 0]), 7)
    ref = rnn(x, mask)
    monkeypatch.setattr(torch, "lstm", lstm_without_bf16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rnn(x, mask)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert True in calls and False in calls  # it did fail, then ran without autocast
    # outside autocast a failure is not hidden
    monkeypatch.setattr(torch, "lstm", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        rnn(x, mask)
