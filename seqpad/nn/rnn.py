"""Masked recurrent layers over ``(B, C, L)`` blocks, built on packed sequences.

Each sequence is packed to its true length, so the forward direction stops and the
reverse direction starts at each sequence's true end: every sequence gets exactly what
``nn.LSTM`` / ``nn.GRU`` with the same weights gives it alone and unpadded.

Masks must be right-padded prefixes (``mask[b, 0, t]`` True for ``t < length_b``, as
:func:`seqpad.masks.lengths_to_mask` and the collator build them); a mask with holes or
left padding cannot be packed and raises ``ValueError``.

Under ``torch.compile`` the packed path runs eagerly behind one graph break (packing
needs the lengths on the host); the layers around it still compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqpad.masks import as_mask

__all__ = ["MaskedGRU", "MaskedLSTM"]

State = Tensor | tuple[Tensor, Tensor]


def _prefix_lengths(mask: Tensor) -> Tensor:
    """Per-sequence lengths ``(B,)`` int64 on CPU of a right-padded ``(B, 1, L)`` mask.

    The prefix check rides on the same device-to-host copy as the lengths (which
    packing needs on the CPU anyway), so it costs no extra synchronisation.
    """
    m = mask[:, 0, :]
    lengths = m.sum(dim=-1, dtype=torch.long)
    positions = torch.arange(m.shape[-1], device=m.device)
    bad = (m != (positions < lengths[:, None])).any(dim=-1)  # (B,)
    none = torch.full((), -1, dtype=torch.long, device=m.device)
    first_bad = torch.where(bad.any(), bad.long().argmax(), none) if len(bad) else none
    both = torch.cat([lengths, first_bad.reshape(1)]).cpu()
    row = int(both[-1])
    if row >= 0:
        raise ValueError(
            f"mask row {row} is not a right-padded prefix (it has a hole or left padding); "
            "packed RNNs need mask[b, 0, t] == (t < length_b), as lengths_to_mask builds it"
        )
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


def _masked_rnn_forward(
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
    return _packed_forward(rnn, native_forward, seq, m, return_state)


# Packing is data-dependent (lengths go to the host): under torch.compile this part
# runs eagerly behind one clean graph break; the layers around it still compile.
@torch.compiler.disable
def _packed_forward(
    rnn: nn.RNNBase,
    native_forward: Callable[[Any], tuple[Any, Any]],
    seq: Tensor,
    m: Tensor,
    return_state: bool,
) -> Tensor | tuple[Tensor, State]:
    B, L, _ = seq.shape
    lengths = _prefix_lengths(m)
    # With a mask, always pack (even when nothing is padded): the computation, and the
    # inter-layer dropout draws in train mode, then do not depend on how much padding
    # the batch got.
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
    """``nn.LSTM`` over ``(B, C, L)`` blocks that packs each sequence to its true length.

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
        self, x: Tensor, mask: Tensor | None = None, *, return_state: bool = False
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run ``x`` ``(B, C, L)`` -> ``(B, H * directions, L)`` [, ``(h_n, c_n)``]."""
        return _masked_rnn_forward(self, super().forward, x, mask, return_state)  # type: ignore[return-value]


class MaskedGRU(nn.GRU):
    """``nn.GRU`` over ``(B, C, L)`` blocks that packs each sequence to its true length.

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
        self, x: Tensor, mask: Tensor | None = None, *, return_state: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run ``x`` ``(B, C, L)`` -> ``(B, H * directions, L)`` [, ``h_n``]."""
        return _masked_rnn_forward(self, super().forward, x, mask, return_state)  # type: ignore[return-value]
