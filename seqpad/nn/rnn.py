"""Masked recurrent layers over ``(B, C, L)`` blocks.

Every sequence gets exactly what ``nn.LSTM`` / ``nn.GRU`` with the same weights gives it
alone and unpadded: the forward direction stops and the reverse direction starts at each
sequence's true end. Two exact ways to get there:

* **per-direction native calls** (the default): padded inputs are zeroed, the forward
  direction runs the native kernel over the padded batch (padding only follows the real
  tokens, so real outputs are untouched), the reverse direction runs it over each
  sequence reversed *within its length*, and the outputs are reversed back. Final
  hidden states are read at each sequence's last real step. Inter-layer dropout draws
  one number per real token, so it does not depend on the padding either.
* **packed sequences** (``pack_padded_sequence(enforce_sorted=False)``), used for
  ``MaskedLSTM.forward(x, mask, return_state=True)`` (a ``forward()`` keyword, not a
  constructor argument), whose cell state ``c_n`` at the true end is
  not visible in the outputs. Packed RNNs are much slower in PyTorch (per-step kernels
  on CUDA; a backward pass quadratic in L on CPU, pytorch/pytorch#149194), hence not the
  default.

Masks must be right-padded prefixes (``mask[b, 0, t]`` True for ``t < length_b``, as
:func:`seqpad.masks.lengths_to_mask` and the collator build them); a mask with holes or
left padding raises ``ValueError`` on CPU. The check never synchronises with a device:
it is a :func:`torch._assert_async`, so on an accelerator a bad mask fails as a
device-side assert at a later synchronising call, and under ``torch.compile`` it is part
of the graph.

Under ``torch.compile`` a masked RNN layer runs eagerly behind a graph break, as a native
``nn.LSTM`` / ``nn.GRU`` does (dynamo does not trace RNN modules); the layers around it
still compile. Only packing (``return_state=True`` on the LSTM: the lengths go to the
host) synchronises with an accelerator; the inter-layer dropout's one draw per real token
is a hash of the token's index among the real tokens (no data-dependent sizes).
With ``segment_ids`` ``(B, L)`` (packed batches) every segment is run as a sequence of
its own (:func:`seqpad.nn.segments.segment_rnn`); states are per segment.

Under ``torch.compile`` the packed path runs eagerly behind one graph break (packing
needs the lengths on the host); the layers around it still compile.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqpad.masks import as_mask
from seqpad.nn.segments import segment_rnn

__all__ = ["MaskedGRU", "MaskedLSTM"]

State = Tensor | tuple[Tensor, Tensor]


def _first_bad_row(m: Tensor, lengths: Tensor) -> Tensor:
    """0-d long tensor: the first row of ``m`` that is not a right-padded prefix, or -1."""
    positions = torch.arange(m.shape[-1], device=m.device)
    bad = (m != (positions < lengths[:, None])).any(dim=-1)  # (B,)
    none = torch.full((), -1, dtype=torch.long, device=m.device)
    return torch.where(bad.any(), bad.long().argmax(), none) if len(bad) else none


_BAD_ROW = (
    "mask row {row} is not a right-padded prefix (it has a hole or left padding); "
    "masked RNNs need mask[b, 0, t] == (t < length_b), as lengths_to_mask builds it"
)


def _raise_bad_row(row: int) -> None:
    if row >= 0:
        raise ValueError(_BAD_ROW.format(row=row))


def _check_prefix(m: Tensor, lengths: Tensor) -> None:
    """Check that ``m`` ``(B, L)`` is right-padded without a host sync.

    The check is :func:`torch._assert_async`: on CPU it fails at once and is re-raised as
    ``ValueError`` naming the row; on an accelerator it fails asynchronously (a
    device-side assert, reported by a later synchronising call) and no row is named;
    under ``torch.compile`` it is part of the graph.
    """
    bad = _first_bad_row(m, lengths)
    if m.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(bad < 0, _BAD_ROW.format(row="of the mask"))
        return
    try:
        torch._assert_async(bad < 0, "mask is not a right-padded prefix")
    except RuntimeError:
        _raise_bad_row(int(bad))  # error path only: the read costs nothing on CPU


def _prefix_lengths(mask: Tensor) -> Tensor:
    """Per-sequence lengths ``(B,)`` int64 on CPU of a right-padded ``(B, 1, L)`` mask.

    The prefix check rides on the same device-to-host copy as the lengths (which
    packing needs on the CPU anyway), so it costs no extra synchronisation.
    """
    m = mask[:, 0, :]
    lengths = m.sum(dim=-1, dtype=torch.long)
    both = torch.cat([lengths, _first_bad_row(m, lengths).reshape(1)]).cpu()
    _raise_bad_row(int(both[-1]))
    return both[:-1]


def _extra_repr(rnn: nn.RNNBase) -> str:
    # batch_first is an internal detail: the module takes (B, C, L) blocks.
    return nn.RNNBase.extra_repr(rnn).replace(", batch_first=True", "")


def _zero_state(rnn: nn.RNNBase, like: Tensor, batch: int) -> State:
    dirs = 2 if rnn.bidirectional else 1
    h = like.new_zeros(rnn.num_layers * dirs, batch, rnn.hidden_size)
    if isinstance(rnn, nn.LSTM):
        return h, h.clone()
    return h


# Dynamo does not trace RNN modules (nn.LSTM / nn.GRU and subclasses): under
# torch.compile a masked RNN layer, like a native one, runs eagerly behind a graph break.
# Its inner functions are kept out of the compiler as a whole (not compiled piecewise
# around each native RNN call), so the layer costs the same breaks as a native one.
# The disable is applied on first call: applying it imports torch._dynamo.
_masked_rnn_forward_disabled: Callable[..., Any] | None = None


def _masked_rnn_forward(
    rnn: nn.RNNBase,
    native_forward: Callable[[Any], tuple[Any, Any]],
    x: Tensor,
    mask: Tensor | None,
    return_state: bool,
) -> Tensor | tuple[Tensor, State]:
    global _masked_rnn_forward_disabled
    if _masked_rnn_forward_disabled is None:
        _masked_rnn_forward_disabled = torch.compiler.disable(_masked_rnn_forward_eager)
    return _masked_rnn_forward_disabled(rnn, native_forward, x, mask, return_state)


def _masked_rnn_forward_eager(
    rnn: nn.RNNBase,
    native_forward: Callable[[Any], tuple[Any, Any]],
    x: Tensor,
    mask: Tensor | None,
    return_state: bool,
) -> Tensor | tuple[Tensor, State]:
    if x.dim() != 3:
        raise ValueError(f"x must be (B, C, L); got shape {tuple(x.shape)}")
    seq = x.transpose(1, 2)  # (B, L, C), batch_first
    m = as_mask(mask, x)
    if m is None:
        # No mask: the plain native call (exact parity with nn.LSTM / nn.GRU).
        out, state = native_forward(seq)
        out = out.transpose(1, 2)
        return (out, state) if return_state else out
    if return_state and isinstance(rnn, nn.LSTM):
        return _packed_forward(rnn, native_forward, seq, m, return_state)
    return _per_direction_forward(rnn, seq, m, return_state)


def _layer_params(rnn: nn.RNNBase, layer: int, reverse: bool) -> list[Tensor]:
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    names = [f"weight_ih{sfx}", f"weight_hh{sfx}"]
    if rnn.bias:
        names += [f"bias_ih{sfx}", f"bias_hh{sfx}"]
    return [getattr(rnn, n) for n in names]


def _run_direction(rnn: nn.RNNBase, inp: Tensor, params: list[Tensor]) -> Tensor:
    """One layer, one direction, native kernel, zero initial state: ``(B, L, H)``."""
    h0 = inp.new_zeros(1, inp.shape[0], rnn.hidden_size)
    if inp.is_cuda:
        # cuDNN copies one layer-direction's weights (a slice of the module's flat
        # buffer) into a buffer of its own on each call and warns "call
        # flatten_parameters()", which cannot help here: silence that warning only.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_CUDNN_WEIGHT_WARNING)
            return _native_direction(rnn, inp, h0, params)
    return _native_direction(rnn, inp, h0, params)


_CUDNN_WEIGHT_WARNING = "RNN module weights are not part of single contiguous chunk"


def _native_direction(rnn: nn.RNNBase, inp: Tensor, h0: Tensor, params: list[Tensor]) -> Tensor:
    if isinstance(rnn, nn.LSTM):
        try:
            return torch.lstm(inp, (h0, h0), params, rnn.bias, 1, 0.0, rnn.training, False,
                              True)[0]
        except RuntimeError:
            if inp.is_cuda or not _cpu_autocast_enabled():
                raise
        # CPU autocast runs LSTMs through oneDNN in bfloat16, which CPUs without bf16
        # instructions cannot do ("could not create a primitive descriptor"; native
        # nn.LSTM fails the same way): this direction runs in float32 instead, as
        # autocast runs the GRU.
        with torch.autocast("cpu", enabled=False):
            h = h0.float()
            return torch.lstm(inp.float(), (h, h), [p.float() for p in params], rnn.bias, 1,
                              0.0, rnn.training, False, True)[0]
    return torch.gru(inp, h0, params, rnn.bias, 1, 0.0, rnn.training, False, True)[0]


_M32 = 0xFFFFFFFF


def _hash32(v: Tensor) -> Tensor:
    """A 32-bit integer mix (xorshift-multiply rounds) of int64 values in ``[0, 2**32)``.

    Multipliers stay below 2**31 so no int64 product overflows.
    """
    v = v & _M32
    for mult in (0x7FEB352D, 0x5BD1E995, 0x2C1B3C6D):
        v = v ^ (v >> 16)
        v = (v * mult) & _M32
    return v ^ (v >> 15)


def _token_dropout(inp: Tensor, real: Tensor, p: float) -> Tensor:
    """Inter-layer dropout with one draw per real token and channel, without a host sync.

    The keep decision of value ``h`` of the ``k``-th real token (in batch order) is a hash
    of ``(seed, k, h)``, with one ``seed`` drawn from torch's generator per call: the
    draws do not depend on how much padding the batch has, and no data-dependent size
    (``masked_select``) is needed, so nothing waits for the device.

    Args:
        inp: ``(B, L, H)`` layer output, zero at padding.
        real: ``(B, L, 1)`` bool, True at real tokens.
        p: drop probability.
    """
    h = inp.shape[-1]
    seed = torch.randint(0, 2**31 - 1, (), device=inp.device)
    k = real.reshape(-1).cumsum(0).reshape(real.shape) - 1  # (B, L, 1): real-token index
    idx = k * h + torch.arange(h, device=inp.device)  # (B, L, H)
    bits = _hash32(_hash32(idx) ^ seed)
    keep = bits.to(torch.float64) >= p * 2.0**32  # P(keep) = 1 - p to 2**-32
    return torch.where(keep & real, inp / (1.0 - p), 0.0).to(inp.dtype)


def _cpu_autocast_enabled() -> bool:
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4
        return bool(torch.is_autocast_cpu_enabled())


def _per_direction_forward(
    rnn: nn.RNNBase, seq: Tensor, m: Tensor, return_state: bool
) -> Tensor | tuple[Tensor, Tensor]:
    B, L, _ = seq.shape
    lengths = m[:, 0, :].sum(dim=-1, dtype=torch.long)  # (B,), on the device
    _check_prefix(m[:, 0, :], lengths)
    dirs = 2 if rnn.bidirectional else 1
    real = m.transpose(1, 2)  # (B, L, 1)
    if L == 0:
        anchor = (sum(p.sum() for p in rnn.parameters()) * 0).to(seq.dtype)
        out = seq.new_zeros(B, rnn.hidden_size * dirs, 0) + anchor
        h = seq.new_zeros(rnn.num_layers * dirs, B, rnn.hidden_size) + anchor
        return (out, h) if return_state else out

    # Reversal of each sequence within its length (an involution; padding stays put).
    t = torch.arange(L, device=seq.device)
    last = lengths[:, None] - 1
    rev = torch.where(t < lengths[:, None], last - t, t)  # (B, L)
    end = last.clamp_min(0)[:, :, None]  # (B, 1, 1): index of the last real step
    empty = (lengths == 0)[:, None]  # (B, 1)

    inp = seq.masked_fill(~real, 0)  # keeps padding finite: no NaN can flow back
    finals: list[Tensor] = []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            x_in = inp if d == 0 else inp.gather(1, rev[:, :, None].expand_as(inp))
            y = _run_direction(rnn, x_in, _layer_params(rnn, layer, reverse=d == 1))
            if return_state:  # the state after the last real step (reversed: also at len-1)
                h = y.gather(1, end.expand(B, 1, y.shape[-1])).squeeze(1)
                finals.append(h.masked_fill(empty, 0))
            outs.append(y if d == 0 else y.gather(1, rev[:, :, None].expand_as(y)))
        inp = (torch.cat(outs, dim=-1) if dirs == 2 else outs[0]).masked_fill(~real, 0)
        if rnn.training and rnn.dropout > 0 and layer < rnn.num_layers - 1:
            inp = _token_dropout(inp, real, rnn.dropout)
    out = inp.transpose(1, 2)
    return (out, torch.stack(finals)) if return_state else out


# Packing is data-dependent (lengths go to the host): under torch.compile this part
# runs eagerly behind one clean graph break; the layers around it still compile.
# ``torch.compiler.disable`` is applied on first call, not as a decorator: applying it
# imports ``torch._dynamo``, which would double the time of ``import seqpad.nn``.
_packed_forward_disabled: Callable[..., Any] | None = None


def _packed_forward(
    rnn: nn.RNNBase,
    native_forward: Callable[[Any], tuple[Any, Any]],
    seq: Tensor,
    m: Tensor,
    return_state: bool,
) -> Tensor | tuple[Tensor, State]:
    global _packed_forward_disabled
    if _packed_forward_disabled is None:
        _packed_forward_disabled = torch.compiler.disable(_packed_forward_eager)
    return _packed_forward_disabled(rnn, native_forward, seq, m, return_state)


def _packed_forward_eager(
    rnn: nn.RNNBase,
    native_forward: Callable[[Any], tuple[Any, Any]],
    seq: Tensor,
    m: Tensor,
    return_state: bool,
) -> Tensor | tuple[Tensor, State]:
    B, L, _ = seq.shape
    lengths = _prefix_lengths(m)
    # Always pack (even when nothing is padded): the computation, and the inter-layer
    # dropout draws in train mode, then do not depend on how much padding the batch got.
    keep = lengths > 0
    n_keep = int(keep.sum())
    if n_keep == 0:
        dirs = 2 if rnn.bidirectional else 1
        # Touch every parameter so the graph (and DDP) sees them, with zero gradient.
        anchor = (sum(p.sum() for p in rnn.parameters()) * 0).to(seq.dtype)
        out = seq.new_zeros(B, rnn.hidden_size * dirs, L) + anchor
        state = _zero_state(rnn, out, B)
        state = tuple(s + anchor for s in state) if isinstance(state, tuple) else state + anchor
        return (out, state) if return_state else out

    if n_keep < B:
        idx = keep.nonzero().squeeze(1).to(seq.device)
        packed = pack_padded_sequence(
            seq.index_select(0, idx), lengths[keep], batch_first=True, enforce_sorted=False
        )
    else:
        idx = None
        packed = pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
    packed_out, state = native_forward(packed)
    out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=L)  # (b, L, H*D)

    if idx is not None:
        out = out.new_zeros(B, L, out.shape[-1]).index_copy(0, idx, out)
        if return_state:
            if isinstance(state, tuple):
                state = tuple(s.new_zeros(s.shape[0], B, s.shape[2]).index_copy(1, idx, s)
                              for s in state)
            else:
                state = state.new_zeros(state.shape[0], B, state.shape[2]).index_copy(1, idx, state)
    out = out.transpose(1, 2)
    return (out, state) if return_state else out


class MaskedLSTM(nn.LSTM):
    """``nn.LSTM`` over ``(B, C, L)`` blocks; each sequence is run to its true length only.

    Both directions see exactly the real tokens (the reverse one starts at each true end);
    see the module docstring for how. ``lstm(x, mask, return_state=True)`` (a
    ``forward()`` keyword) also returns ``(h_n, c_n)``; it packs the batch (slower).

    Parameters and ``state_dict`` keys are exactly ``nn.LSTM``'s (``weight_ih_l0``,
    ``weight_hh_l0``, ``bias_ih_l0``, ..., ``_reverse`` for the backward direction), so
    ``load_state_dict`` works both ways. Always ``batch_first`` internally; the zero
    initial state is used.

    Args:
        input_size: ``C``.
        hidden_size: ``H``.
        num_layers: stacked layers.
        bidirectional: run a reverse direction too (it starts at each true end).
        dropout: dropout between layers (train mode only).
        bias: whether to learn biases.

    Shape:
        x: ``(B, C, L)``; mask: ``(B, 1, L)`` / ``(B, L)`` right-padded prefix mask or None;
        output: ``(B, H * directions, L)``, zero at padding. With ``return_state=True``
        also ``(h_n, c_n)``, each ``(num_layers * directions, B, H)``, taken at each
        sequence's true end (zero for a sequence of length 0).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=True,
            dropout=dropout,
            bidirectional=bidirectional,
            device=device,
            dtype=dtype,
        )

    def extra_repr(self) -> str:
        return _extra_repr(self)

    def forward(  # type: ignore[override]
        self, x: Tensor, mask: Tensor | None = None, *, return_state: bool = False,
        segment_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run ``x`` ``(B, C, L)`` -> ``(B, H * directions, L)`` [, ``(h_n, c_n)``]."""
        if segment_ids is not None:  # packed: each segment run as its own sequence
            return segment_rnn(self, x, segment_ids, return_state)  # type: ignore[return-value]
        return _masked_rnn_forward(self, super().forward, x, mask, return_state)  # type: ignore[return-value]


class MaskedGRU(nn.GRU):
    """``nn.GRU`` over ``(B, C, L)`` blocks; each sequence is run to its true length only.

    Both directions see exactly the real tokens (the reverse one starts at each true end);
    see the module docstring for how.

    Parameters and ``state_dict`` keys are exactly ``nn.GRU``'s, so ``load_state_dict``
    works both ways. Always ``batch_first`` internally; the zero initial state is used.

    Args:
        input_size: ``C``.
        hidden_size: ``H``.
        num_layers: stacked layers.
        bidirectional: run a reverse direction too (it starts at each true end).
        dropout: dropout between layers (train mode only).
        bias: whether to learn biases.

    Shape:
        x: ``(B, C, L)``; mask: ``(B, 1, L)`` / ``(B, L)`` right-padded prefix mask or None;
        output: ``(B, H * directions, L)``, zero at padding. With ``return_state=True``
        also ``h_n`` ``(num_layers * directions, B, H)``, taken at each sequence's true
        end (zero for a sequence of length 0).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=True,
            dropout=dropout,
            bidirectional=bidirectional,
            device=device,
            dtype=dtype,
        )

    def extra_repr(self) -> str:
        return _extra_repr(self)

    def forward(  # type: ignore[override]
        self, x: Tensor, mask: Tensor | None = None, *, return_state: bool = False,
        segment_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run ``x`` ``(B, C, L)`` -> ``(B, H * directions, L)`` [, ``h_n``]."""
        if segment_ids is not None:  # packed: each segment run as its own sequence
            return segment_rnn(self, x, segment_ids, return_state)  # type: ignore[return-value]
        return _masked_rnn_forward(self, super().forward, x, mask, return_state)  # type: ignore[return-value]
