"""Sequence models built from masked blocks: a ByteNet-style CNN, an RNN and a CNN->RNN hybrid.

Every model maps token ids ``(B, L)`` (and optionally a mask) to either

* per-position outputs (``head="token"``): logits ``(B, n_out, L)``, channels first like
  every block in :mod:`seqpad.nn`, zero at padded positions. ``n_out`` defaults to the
  vocabulary size (language modelling), and the layout feeds ``F.cross_entropy(logits,
  targets)`` with ``targets`` ``(B, L)`` directly; or
* one output per sequence (``head="pooled"``): masked mean or max pooling over real
  positions -> MLP -> ``(B, n_out)`` (classification logits or regression values).

Padding invariance holds end to end: in eval mode a sequence's outputs do not depend on
how much padding it got or on the other sequences in its batch; in train mode batch-norm
statistics come from real tokens only, and no gradient reaches padding or the pad
embedding.

:func:`build_model` builds any model from a plain JSON-serialisable dict; every model
keeps its resolved config in ``model.config`` and :func:`save_checkpoint` stores it with
the weights, so :func:`load_model` rebuilds the model from the file alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from seqpad.collate import Batch
from seqpad.masks import as_mask
from seqpad.nn.batchnorm import MaskedBatchNorm1d
from seqpad.nn.conv import MaskedConv1d
from seqpad.nn.embedding import MaskedEmbedding
from seqpad.nn.norm import MaskedGroupNorm, MaskedInstanceNorm1d, MaskedLayerNorm1d
from seqpad.nn.pooling import MaskedMaxPool, MaskedMeanPool
from seqpad.nn.rnn import MaskedGRU, MaskedLSTM
from seqpad.nn.segments import segment_mask

__all__ = [
    "ByteNetBlock",
    "ByteNetCNN",
    "ByteNetEncoder",
    "HybridModel",
    "PooledHead",
    "RNNEncoder",
    "RNNModel",
    "SequenceModel",
    "TokenHead",
    "build_model",
    "bytenet_dilations",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]

ARCHS = ("cnn", "rnn", "hybrid")
HEADS = ("token", "pooled")
POOLINGS = ("mean", "max")
RNN_TYPES = ("lstm", "gru")
NORMS = ("batch", "instance", "group", "layer")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    # Each maps 0 to 0, so a block input that is zero at padding stays zero there.
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
CHECKPOINT_FORMAT = "seqpad-checkpoint"
CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------ validation
def _int(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"model config: {name!r} must be an int >= {minimum}, got {value!r}")
    return value


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"model config: {name!r} must be one of {list(choices)}, got {value!r}")
    return str(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"model config: {name!r} must be true or false, got {value!r}")
    return value


def _prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"model config: {name!r} must be a number in [0, 1), got {value!r}")
    return float(value)


def bytenet_dilations(n_layers: int, max_dilation: int = 8) -> list[int]:
    """ByteNet's dilation schedule: ``1, 2, 4, ..., max_dilation`` repeated over ``n_layers``.

    ``max_dilation`` must be a power of two (as in ByteNet: ``r``).

    >>> bytenet_dilations(6, 4)
    [1, 2, 4, 1, 2, 4]
    """
    _int("n_layers", n_layers)
    _int("max_dilation", max_dilation)
    if max_dilation & (max_dilation - 1):
        raise ValueError(f"model config: 'max_dilation' must be a power of two, got {max_dilation}")
    cycle = int(math.log2(max_dilation)) + 1
    return [2 ** (i % cycle) for i in range(n_layers)]


def _resolve_mask(tokens: Tensor, mask: Tensor | None, pad_id: int) -> Tensor:
    """``(B, 1, L)`` bool mask: the given one canonicalised, else ``tokens != pad_id``."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (B, L) integer ids; got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if mask is None:
        return (tokens != pad_id).unsqueeze(1)
    m = as_mask(mask, tokens.unsqueeze(1))
    assert m is not None
    return m


def _zero_padding(h: Tensor, mask: Tensor | None) -> Tensor:
    """``h * mask``: zero a block's result at padding (``mask`` ``(B, 1, L)`` bool or None).

    Inside the models the values being zeroed are finite (a 1x1 convolution's bias, or a
    convolution of finite neighbours), so multiplying by the 0/1 mask is exact: real
    positions are multiplied by 1, padded ones become 0 and get zero gradient. It is about
    twice as fast as ``masked_fill`` (forward + backward, CPU). Real positions are never
    read from padding either way.
    """
    if mask is None:
        return h
    return h * mask.to(h.dtype)


def _norm_layer(norm: str, channels: int, groups: int = 8) -> nn.Module:
    """The masked norm a CNN block uses: ``norm`` is one of :data:`NORMS`.

    "batch": :class:`MaskedBatchNorm1d`; "instance": :class:`MaskedInstanceNorm1d` with
    ``affine=True`` (no running statistics, as ``nn.InstanceNorm1d``'s default); "group":
    :class:`MaskedGroupNorm` with ``groups`` groups; "layer": :class:`MaskedLayerNorm1d`
    (over channels, per position). Each is called ``norm(x, mask)``.
    """
    if norm == "batch":
        return MaskedBatchNorm1d(channels)
    if norm == "instance":
        return MaskedInstanceNorm1d(channels, affine=True)
    if norm == "group":
        return MaskedGroupNorm(groups, channels)
    if norm == "layer":
        return MaskedLayerNorm1d(channels)
    raise ValueError(f"model config: 'norm' must be one of {list(NORMS)}, got {norm!r}")


# ---------------------------------------------------------------------- blocks
class ByteNetBlock(nn.Module):
    """Pre-activation residual block with a dilated masked convolution (ByteNet).

    With ``bottleneck=True`` (ByteNet): ``x + W(BN -> act -> 1x1 conv (d -> h) -> BN -> act ->
    dilated conv (h -> h, k) -> BN -> act -> 1x1 conv (h -> d))``; otherwise
    ``x + W(BN -> act -> dilated conv (d -> d, k))``. ``W`` is dropout, active in train mode
    only. Norms are :class:`~seqpad.nn.batchnorm.MaskedBatchNorm1d` (statistics over real
    tokens only; ``norm`` picks instance, group or layer norm instead, see
    :func:`_norm_layer`); convolutions are :class:`~seqpad.nn.conv.MaskedConv1d` with
    'same' (or causal) zero padding of each sequence.

    Shape:
        x: ``(B, d_model, L)``, zero at padding (as every seqpad block leaves it; the
        residual adds ``x`` back unmasked); mask: ``(B, 1, L)`` bool; output:
        ``(B, d_model, L)``, zero at padding. Outputs at real positions never depend on
        what ``x`` holds at padding.
    """

    def __init__(
        self,
        d_model: int,
        kernel_size: int,
        dilation: int = 1,
        *,
        bottleneck: bool = True,
        d_hidden: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        causal: bool = False,
        norm: str = "batch",
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.bottleneck = bottleneck
        if bottleneck:
            h = d_hidden if d_hidden is not None else max(1, d_model // 2)
            self.norm_in = _norm_layer(norm, d_model, norm_groups)
            self.act_in = act()
            self.conv_in = MaskedConv1d(d_model, h, 1)
            self.norm = _norm_layer(norm, h, norm_groups)
            self.act = act()
            self.conv = MaskedConv1d(h, h, kernel_size, dilation=dilation, causal=causal)
            self.norm_out = _norm_layer(norm, h, norm_groups)
            self.act_out = act()
            self.conv_out = MaskedConv1d(h, d_model, 1)
        else:
            self.norm = _norm_layer(norm, d_model, norm_groups)
            self.act = act()
            self.conv = MaskedConv1d(d_model, d_model, kernel_size, dilation=dilation, causal=causal)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        # Every convolution here reads the output of a masked batch norm followed by an
        # activation that maps 0 to 0, so its input is already zero at padding and its
        # outputs at real positions are exact without masking again; only the residual
        # branch's result is zeroed at padding, once per block.
        m = as_mask(mask, x) if segment_ids is None else segment_mask(segment_ids)
        h = x
        if self.bottleneck:
            h = self.conv_in(self.act_in(self.norm_in(h, m, segment_ids=segment_ids)))
        # (1x1 convolutions never cross a segment boundary; the dilated one is told.)
        h = self.conv(self.act(self.norm(h, m, segment_ids=segment_ids)), segment_ids=segment_ids)
        if self.bottleneck:
            h = self.conv_out(self.act_out(self.norm_out(h, m, segment_ids=segment_ids)))
        return x + self.dropout(_zero_padding(h, m))


class ByteNetEncoder(nn.Module):
    """A stack of :class:`ByteNetBlock` (one per dilation) followed by a final norm + activation.

    Shape:
        x: ``(B, d_model, L)``; mask: ``(B, 1, L)``; output: ``(B, d_model, L)``, zero at
        padding.
    """

    def __init__(
        self,
        d_model: int,
        dilations: Sequence[int],
        kernel_size: int,
        *,
        bottleneck: bool = True,
        d_hidden: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        causal: bool = False,
        norm: str = "batch",
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ByteNetBlock(
                d_model,
                kernel_size,
                d,
                bottleneck=bottleneck,
                d_hidden=d_hidden,
                activation=activation,
                dropout=dropout,
                causal=causal,
                norm=norm,
                norm_groups=norm_groups,
            )
            for d in dilations
        )
        self.norm = _norm_layer(norm, d_model, norm_groups)
        self.act = ACTIVATIONS[activation]()
        self.out_channels = d_model

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        if segment_ids is not None:
            mask = segment_mask(segment_ids)
        for block in self.blocks:
            x = block(x, mask, segment_ids=segment_ids)
        return self.act(self.norm(x, mask, segment_ids=segment_ids))


class RNNEncoder(nn.Module):
    """A :class:`~seqpad.nn.rnn.MaskedLSTM` / :class:`~seqpad.nn.rnn.MaskedGRU` stack.

    ``dropout`` is applied between recurrent layers (as ``nn.LSTM``'s ``dropout``), in train
    mode only.

    Shape:
        x: ``(B, d_in, L)``; mask: ``(B, 1, L)`` right-padded; output:
        ``(B, hidden_size * directions, L)``, zero at padding.
    """

    def __init__(
        self,
        d_in: int,
        hidden_size: int,
        num_layers: int,
        *,
        rnn: str = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cls = MaskedLSTM if rnn == "lstm" else MaskedGRU
        self.rnn = cls(
            d_in,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_channels = hidden_size * (2 if bidirectional else 1)

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        return self.rnn(x, mask, segment_ids=segment_ids)


# ----------------------------------------------------------------------- heads
class TokenHead(nn.Module):
    """Per-position output: dropout -> 1x1 conv, ``(B, C, L)`` -> ``(B, n_out, L)``, zero at padding.

    Being pointwise, its outputs at real positions never depend on padding; the result
    is zeroed at padding.
    """

    def __init__(self, d_in: int, n_out: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = MaskedConv1d(d_in, n_out, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        if segment_ids is not None:  # pointwise: the mask is all it needs
            mask = segment_mask(segment_ids)
        # x comes from an encoder, zero at padding: no need to mask the 1x1 conv's input.
        return _zero_padding(self.proj(self.dropout(x)), as_mask(mask, x))


class PooledHead(nn.Module):
    """Per-sequence output: masked pooling -> Linear -> act -> dropout -> Linear.

    Shape:
        x: ``(B, C, L)``; mask: ``(B, 1, L)``; output: ``(B, n_out)``. A sequence with no
        real positions pools to zeros.
    """

    def __init__(
        self,
        d_in: int,
        n_out: int,
        *,
        pooling: str = "mean",
        hidden: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = hidden if hidden is not None else d_in
        self.pool = MaskedMeanPool() if pooling == "mean" else MaskedMaxPool()
        self.mlp = nn.Sequential(
            nn.Linear(d_in, hidden),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_out),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        """``(B, n_out)``; packed (``segment_ids``): ``(N, n_out)``, one row per sequence."""
        return self.mlp(self.pool(x, mask, segment_ids=segment_ids))


# ---------------------------------------------------------------------- models
class SequenceModel(nn.Module):
    """Base of the models: ``embed -> encoder -> head``.

    Subclasses set ``embed`` (:class:`~seqpad.nn.embedding.MaskedEmbedding`), ``encoder``
    (``(B, d_model, L) -> (B, C, L)``), ``head`` and ``config``.
    """

    arch: str = ""
    config: dict[str, Any]
    pad_id: int
    embed: MaskedEmbedding
    encoder: nn.Module
    head: nn.Module

    def _common(
        self,
        *,
        vocab_size: int,
        d_model: int,
        head: str,
        n_out: int | None,
        pooling: str | None,
        mlp_hidden: int | None,
        dropout: float,
        activation: str,
        pad_id: int,
    ) -> dict[str, Any]:
        """Validate and resolve the keys shared by every architecture."""
        _int("vocab_size", vocab_size)
        _int("d_model", d_model)
        _choice("head", head, HEADS)
        dropout = _prob("dropout", dropout)
        _choice("activation", activation, tuple(ACTIVATIONS))
        _int("pad_id", pad_id, 0)
        if pad_id >= vocab_size:
            raise ValueError(f"model config: 'pad_id' ({pad_id}) must be < vocab_size ({vocab_size})")
        cfg: dict[str, Any] = {
            "arch": self.arch,
            "vocab_size": vocab_size,
            "d_model": d_model,
            "head": head,
        }
        if head == "token":
            if pooling is not None or mlp_hidden is not None:
                raise ValueError("model config: 'pooling' and 'mlp_hidden' apply only to head 'pooled'")
            cfg["n_out"] = _int("n_out", n_out if n_out is not None else vocab_size)
        else:
            if n_out is None:
                raise ValueError("model config: head 'pooled' needs 'n_out' (number of outputs)")
            cfg["n_out"] = _int("n_out", n_out)
            cfg["pooling"] = _choice("pooling", pooling if pooling is not None else "mean", POOLINGS)
            if mlp_hidden is not None:
                _int("mlp_hidden", mlp_hidden)
            cfg["mlp_hidden"] = mlp_hidden
        cfg.update(dropout=dropout, activation=activation, pad_id=pad_id)
        self.pad_id = pad_id
        self.embed = MaskedEmbedding(vocab_size, d_model, padding_idx=pad_id)
        return cfg

    def _make_head(self, d_in: int) -> None:
        cfg = self.config
        if cfg["head"] == "pooled" and cfg["mlp_hidden"] is None:
            cfg["mlp_hidden"] = d_in
        if cfg["head"] == "token":
            self.head = TokenHead(d_in, cfg["n_out"], dropout=cfg["dropout"])
        else:
            self.head = PooledHead(
                d_in,
                cfg["n_out"],
                pooling=cfg["pooling"],
                hidden=cfg["mlp_hidden"],
                activation=cfg["activation"],
                dropout=cfg["dropout"],
            )

    def _inputs(self, tokens: Tensor | Batch, mask: Tensor | None,
                segment_ids: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(tokens, mask, segment keyword)`` from ids or a :class:`~seqpad.collate.Batch`."""
        if isinstance(tokens, Batch):
            if mask is not None or segment_ids is not None:
                raise TypeError("model(batch) takes the mask and segment_ids from the "
                                "batch; do not pass them as well")
            tokens, mask, segment_ids = tokens.tokens, tokens.mask, tokens.segment_ids
        elif not isinstance(tokens, Tensor):
            raise TypeError(f"{type(self).__name__} expects token ids (B, L) or a seqpad "
                            f"Batch, got {type(tokens).__name__}")
        if segment_ids is None:
            return tokens, _resolve_mask(tokens, mask, self.pad_id), {}
        _resolve_mask(tokens, None, self.pad_id)  # checks the ids' shape and dtype
        if tuple(segment_ids.shape) != tuple(tokens.shape):
            raise ValueError(f"segment_ids of shape {tuple(segment_ids.shape)} do not fit "
                             f"tokens of shape {tuple(tokens.shape)}")
        return tokens, segment_mask(segment_ids), {"segment_ids": segment_ids}

    def features(self, tokens: Tensor | Batch, mask: Tensor | None = None, *,
                 segment_ids: Tensor | None = None) -> Tensor:
        """Encoder output before the head: ``(B, L)`` ids -> ``(B, C, L)``, zero at padding."""
        tokens, m, seg = self._inputs(tokens, mask, segment_ids)
        return self.encoder(self.embed(tokens, m), m, **seg)

    def forward(self, tokens: Tensor | Batch, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        """Run the model.

        Args:
            tokens: ``(B, L)`` integer token ids (right-padded with ``pad_id``), or a
                :class:`~seqpad.collate.Batch` (``model(batch)``: its ``tokens``, ``mask``
                and, when packed, ``segment_ids`` are used).
            mask: ``(B, 1, L)`` / ``(B, L)`` bool or 0/1, True at real tokens; defaults to
                ``tokens != pad_id``. Positions where it is False are treated as padding
                whatever token they hold.
            segment_ids: ``(B, L)`` packed batches (:class:`seqpad.PackingCollator`):
                ``1, 2, ...`` per sequence within a row, 0 at padding; replaces ``mask``.
                Every sequence is then computed as if alone.

        Returns:
            ``head="token"``: ``(B, n_out, L)`` float, zero at padding;
            ``head="pooled"``: ``(B, n_out)`` float; packed: ``(N, n_out)``, one row per
            sequence in row order.
        """
        tokens, m, seg = self._inputs(tokens, mask, segment_ids)
        x = self.encoder(self.embed(tokens, m), m, **seg)
        return self.head(x, m, **seg)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, head={self.config['head']!r}, n_out={self.config['n_out']}"


def _cnn_keys(
    n_layers: int | None,
    kernel_size: int,
    dilations: Sequence[int] | None,
    max_dilation: int | None,
    bottleneck: bool,
    d_hidden: int | None,
    causal: bool,
    d_model: int,
    norm: str = "batch",
    norm_groups: int | None = None,
) -> dict[str, Any]:
    """Validate and resolve the CNN keys; ``dilations`` comes back as an explicit list."""
    _int("kernel_size", kernel_size)
    _choice("norm", norm, NORMS)
    _bool("bottleneck", bottleneck)
    _bool("causal", causal)
    if dilations is not None:
        if max_dilation is not None:
            raise ValueError("model config: give 'dilations' or 'max_dilation', not both")
        if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence) or not dilations:
            raise ValueError(f"model config: 'dilations' must be a non-empty list of ints, got {dilations!r}")
        dil = [_int("dilations[]", d) for d in dilations]
        if n_layers is not None and _int("n_layers", n_layers) != len(dil):
            raise ValueError(
                f"model config: 'n_layers' ({n_layers}) != len('dilations') ({len(dil)})"
            )
    else:
        dil = bytenet_dilations(
            n_layers if n_layers is not None else 4, max_dilation if max_dilation is not None else 8
        )
    if bottleneck:
        h = _int("d_hidden", d_hidden) if d_hidden is not None else max(1, d_model // 2)
    elif d_hidden is not None:
        raise ValueError("model config: 'd_hidden' applies only with 'bottleneck': true")
    cfg: dict[str, Any] = {
        "n_layers": len(dil),
        "kernel_size": kernel_size,
        "dilations": dil,
        "bottleneck": bottleneck,
    }
    if bottleneck:
        cfg["d_hidden"] = h
    cfg["causal"] = causal
    cfg["norm"] = norm
    if norm == "group":
        groups = _int("norm_groups", norm_groups if norm_groups is not None else 8)
        for width in (d_model, h) if bottleneck else (d_model,):
            if width % groups:
                raise ValueError(f"model config: 'norm_groups' ({groups}) must divide every "
                                 f"norm width (d_model, d_hidden); {width} is not divisible")
        cfg["norm_groups"] = groups
    elif norm_groups is not None:
        raise ValueError("model config: 'norm_groups' applies only with 'norm': 'group'")
    return cfg


def _rnn_keys(
    rnn: str, rnn_hidden: int | None, bidirectional: bool, d_model: int
) -> dict[str, Any]:
    _choice("rnn", rnn, RNN_TYPES)
    _bool("bidirectional", bidirectional)
    hidden = _int("rnn_hidden", rnn_hidden) if rnn_hidden is not None else d_model
    return {"rnn": rnn, "rnn_hidden": hidden, "bidirectional": bidirectional}


class ByteNetCNN(SequenceModel):
    """ByteNet-style residual dilated CNN: embedding -> :class:`ByteNetEncoder` -> head.

    Keyword arguments are the config keys (see :func:`build_model`); ``dilations``
    defaults to ByteNet's schedule ``1, 2, ..., max_dilation`` (default 8) repeated over
    ``n_layers`` (default 4).
    """

    arch = "cnn"

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int | None = None,
        kernel_size: int = 5,
        dilations: Sequence[int] | None = None,
        max_dilation: int | None = None,
        bottleneck: bool = True,
        d_hidden: int | None = None,
        causal: bool = False,
        norm: str = "batch",
        norm_groups: int | None = None,
        head: str = "token",
        n_out: int | None = None,
        pooling: str | None = None,
        mlp_hidden: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        cfg = self._common(
            vocab_size=vocab_size, d_model=d_model, head=head, n_out=n_out, pooling=pooling,
            mlp_hidden=mlp_hidden, dropout=dropout, activation=activation, pad_id=pad_id,
        )
        cfg.update(_cnn_keys(n_layers, kernel_size, dilations, max_dilation, bottleneck,
                             d_hidden, causal, d_model, norm, norm_groups))
        self.config = cfg
        self.encoder = ByteNetEncoder(
            d_model,
            cfg["dilations"],
            kernel_size,
            bottleneck=bottleneck,
            d_hidden=cfg.get("d_hidden"),
            activation=activation,
            dropout=cfg["dropout"],
            causal=causal,
            norm=norm,
            norm_groups=cfg.get("norm_groups", 8),
        )
        self._make_head(self.encoder.out_channels)


class RNNModel(SequenceModel):
    """Recurrent model: embedding -> :class:`RNNEncoder` (``n_layers`` LSTM/GRU layers) -> head.

    ``rnn_hidden`` (per direction) defaults to ``d_model``; the head sees
    ``rnn_hidden * (2 if bidirectional else 1)`` channels.
    """

    arch = "rnn"

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 2,
        rnn: str = "lstm",
        rnn_hidden: int | None = None,
        bidirectional: bool = True,
        head: str = "token",
        n_out: int | None = None,
        pooling: str | None = None,
        mlp_hidden: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        cfg = self._common(
            vocab_size=vocab_size, d_model=d_model, head=head, n_out=n_out, pooling=pooling,
            mlp_hidden=mlp_hidden, dropout=dropout, activation=activation, pad_id=pad_id,
        )
        cfg["n_layers"] = _int("n_layers", n_layers)
        cfg.update(_rnn_keys(rnn, rnn_hidden, bidirectional, d_model))
        self.config = cfg
        self.encoder = RNNEncoder(
            d_model,
            cfg["rnn_hidden"],
            n_layers,
            rnn=rnn,
            bidirectional=bidirectional,
            dropout=cfg["dropout"],
        )
        self._make_head(self.encoder.out_channels)


class _HybridEncoder(nn.Module):
    def __init__(self, cnn: ByteNetEncoder, rnn: RNNEncoder) -> None:
        super().__init__()
        self.cnn = cnn
        self.rnn = rnn
        self.out_channels = rnn.out_channels

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                segment_ids: Tensor | None = None) -> Tensor:
        h = self.cnn(x, mask, segment_ids=segment_ids)
        return self.rnn(h, mask, segment_ids=segment_ids)


class HybridModel(SequenceModel):
    """CNN -> RNN hybrid: embedding -> :class:`ByteNetEncoder` (``n_layers`` blocks) ->
    :class:`RNNEncoder` (``rnn_layers`` layers) -> head."""

    arch = "hybrid"

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int | None = None,
        kernel_size: int = 5,
        dilations: Sequence[int] | None = None,
        max_dilation: int | None = None,
        bottleneck: bool = True,
        d_hidden: int | None = None,
        causal: bool = False,
        norm: str = "batch",
        norm_groups: int | None = None,
        rnn: str = "lstm",
        rnn_layers: int = 1,
        rnn_hidden: int | None = None,
        bidirectional: bool = True,
        head: str = "token",
        n_out: int | None = None,
        pooling: str | None = None,
        mlp_hidden: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        cfg = self._common(
            vocab_size=vocab_size, d_model=d_model, head=head, n_out=n_out, pooling=pooling,
            mlp_hidden=mlp_hidden, dropout=dropout, activation=activation, pad_id=pad_id,
        )
        cfg.update(_cnn_keys(n_layers, kernel_size, dilations, max_dilation, bottleneck,
                             d_hidden, causal, d_model, norm, norm_groups))
        cfg["rnn_layers"] = _int("rnn_layers", rnn_layers)
        cfg.update(_rnn_keys(rnn, rnn_hidden, bidirectional, d_model))
        self.config = cfg
        cnn = ByteNetEncoder(
            d_model,
            cfg["dilations"],
            kernel_size,
            bottleneck=bottleneck,
            d_hidden=cfg.get("d_hidden"),
            activation=activation,
            dropout=cfg["dropout"],
            causal=causal,
            norm=norm,
            norm_groups=cfg.get("norm_groups", 8),
        )
        rnn_enc = RNNEncoder(
            d_model,
            cfg["rnn_hidden"],
            rnn_layers,
            rnn=rnn,
            bidirectional=bidirectional,
            dropout=cfg["dropout"],
        )
        self.encoder = _HybridEncoder(cnn, rnn_enc)
        self._make_head(self.encoder.out_channels)


MODEL_CLASSES: dict[str, type[SequenceModel]] = {
    "cnn": ByteNetCNN,
    "rnn": RNNModel,
    "hybrid": HybridModel,
}

_COMMON_KEYS = frozenset(
    {"arch", "vocab_size", "d_model", "head", "n_out", "pooling", "mlp_hidden", "dropout",
     "activation", "pad_id"}
)
_CNN_KEYS = frozenset(
    {"n_layers", "kernel_size", "dilations", "max_dilation", "bottleneck", "d_hidden", "causal",
     "norm", "norm_groups"}
)
_RNN_KEYS = frozenset({"rnn", "rnn_hidden", "bidirectional"})
CONFIG_KEYS: dict[str, frozenset[str]] = {
    "cnn": _COMMON_KEYS | _CNN_KEYS,
    "rnn": _COMMON_KEYS | _RNN_KEYS | {"n_layers"},
    "hybrid": _COMMON_KEYS | _CNN_KEYS | _RNN_KEYS | {"rnn_layers"},
}


def build_model(config: Mapping[str, Any]) -> SequenceModel:
    """Build a model from a plain (JSON-serialisable) dict.

    Keys (defaults in brackets):

    * every arch: ``arch`` ("cnn" | "rnn" | "hybrid", required), ``vocab_size`` (required;
      ``Tokenizer.vocab_size``), ``d_model`` [128], ``head`` ["token"] ("token": per-position
      ``(B, n_out, L)``; "pooled": ``(B, n_out)``), ``n_out`` [vocab_size for "token";
      required for "pooled"], ``dropout`` [0.0], ``activation`` ["relu"] ("relu" | "gelu" |
      "silu"), ``pad_id`` [0];
    * head "pooled" only: ``pooling`` ["mean"] ("mean" | "max"), ``mlp_hidden`` [C, the
      encoder's output width];
    * "cnn" and "hybrid": ``n_layers`` [4 or len(dilations)], ``kernel_size`` [5],
      ``dilations`` (list, one per block) or ``max_dilation`` [8] (ByteNet schedule
      ``1, 2, ..., max_dilation`` repeated), ``bottleneck`` [true] (ByteNet's 1x1 convs
      around the dilated conv), ``d_hidden`` [d_model // 2] (bottleneck width), ``causal``
      [false], ``norm`` ["batch"] ("batch" | "instance" | "group" | "layer": the masked norm
      of every block), ``norm_groups`` [8] ("group" only; must divide d_model and d_hidden);
    * "rnn": ``n_layers`` [2] recurrent layers; "rnn" and "hybrid": ``rnn`` ["lstm"] ("lstm" |
      "gru"), ``rnn_hidden`` [d_model] (per direction), ``bidirectional`` [true];
      "hybrid": ``rnn_layers`` [1].

    The returned model's ``config`` is the resolved dict (defaults filled in, ``dilations``
    explicit); ``build_model(model.config)`` builds the same architecture.

    Raises:
        ValueError: naming the key, for an unknown key, a key of another architecture, a
            missing required key or a bad value.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"model config must be a dict, got {type(config).__name__}")
    if "arch" not in config:
        raise ValueError(f"model config: missing 'arch' (one of {list(ARCHS)})")
    arch = _choice("arch", config["arch"], ARCHS)
    if "vocab_size" not in config:
        raise ValueError("model config: missing 'vocab_size' (Tokenizer.vocab_size)")
    allowed = CONFIG_KEYS[arch]
    unknown = sorted(set(config) - allowed)
    if unknown:
        details = []
        for key in unknown:
            owners = [a for a, keys in CONFIG_KEYS.items() if key in keys]
            if owners:
                details.append(f"{key!r} (applies to arch {', '.join(map(repr, owners))} only)")
            else:
                details.append(f"{key!r} (unknown)")
        raise ValueError(
            f"model config for arch {arch!r}: unexpected key(s) {', '.join(details)}; "
            f"allowed keys: {sorted(allowed)}"
        )
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    return MODEL_CLASSES[arch](**kwargs)


# ------------------------------------------------------------------ checkpoints
def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, **extra: Any) -> None:
    """Save ``model``'s config and weights (plus ``extra`` items) to ``path``.

    The file is a ``torch.save`` of ``{"format", "version", "config", "state_dict",
    **extra}``; keep ``extra`` to tensors, numbers, strings, lists and dicts (e.g.
    ``step=..., optimizer=opt.state_dict()``) so that it loads with ``weights_only=True``.
    DDP and ``torch.compile`` wrappers are unwrapped. The file is written to a temporary
    name and renamed, so an interrupted save never leaves a truncated checkpoint.
    """
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if not isinstance(config, dict):
        raise TypeError(
            f"save_checkpoint needs a model with a .config dict (from build_model); "
            f"got {type(inner).__name__}"
        )
    reserved = {"format", "version", "config", "state_dict"} & set(extra)
    if reserved:
        raise ValueError(f"save_checkpoint: extra keys {sorted(reserved)} are reserved")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": dict(config),
        "state_dict": inner.state_dict(),
        **extra,
    }
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Returns the saved dict: ``config``, ``state_dict`` and any extra items.
    """
    payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{os.fspath(path)}: not a seqpad checkpoint (written by save_checkpoint)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{os.fspath(path)}: checkpoint version {payload.get('version')!r} is not supported "
            f"(this seqpad reads version {CHECKPOINT_VERSION})"
        )
    return payload


def load_model(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> SequenceModel:
    """Rebuild the model saved by :func:`save_checkpoint` and load its weights.

    The model is returned in eval mode (call ``.train()`` to resume training).
    """
    payload = load_checkpoint(path, map_location=map_location)
    model = build_model(payload["config"])
    model.load_state_dict(payload["state_dict"])
    if map_location is not None:
        model.to(map_location)
    return model.eval()

