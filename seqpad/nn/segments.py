"""Segment-aware ops for packed batches (``segment_ids``).

A packed batch holds several sequences per row (see :class:`seqpad.PackingCollator`):
``segment_ids`` ``(B, L)`` integer, ``1, 2, ...`` for the consecutive sequences of a row
(each a contiguous run), 0 at padding. Every masked layer takes ``segment_ids=`` and then
treats each segment as a sequence of its own: ``mask = segment_ids > 0``, a convolution
never reads another segment's values, an RNN restarts at every segment, pooling gives
one vector per segment. Segments are numbered globally in row order (row 0's segments
left to right, then row 1's, ...): the order of :func:`seqpad.unpack` and of the items
given to the collator.

Host synchronisation: the segment paths need some sizes on the host: the number of
segments and the longest one (RNN, pooling), and the positions next to a segment
boundary (convolution with ``kernel_size > 1``). Each costs one device-to-host copy per
call on an accelerator (free on CPU); the non-segment paths are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqpad.nn.functional import masked_conv1d, same_padding

__all__ = [
    "SegmentLayout",
    "segment_conv1d",
    "segment_layout",
    "segment_mask",
    "segment_max",
    "segment_mean",
    "segment_rnn",
    "segment_sum",
]


def segment_mask(segment_ids: Tensor) -> Tensor:
    """``(B, 1, L)`` bool mask of a ``(B, L)`` ``segment_ids`` (True where ``> 0``)."""
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be (B, L); got shape {tuple(segment_ids.shape)}")
    if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
        raise ValueError(f"segment_ids must be integers, got dtype {segment_ids.dtype}")
    return (segment_ids > 0).unsqueeze(1)


def _check_fits(x: Tensor, segment_ids: Tensor) -> None:
    if x.dim() != 3 or x.shape[0] != segment_ids.shape[0] or x.shape[2] != segment_ids.shape[1]:
        raise ValueError(f"segment_ids of shape {tuple(segment_ids.shape)} do not fit x of "
                         f"shape {tuple(x.shape)}: expected (B, L) = "
                         f"{(x.shape[0], x.shape[-1]) if x.dim() == 3 else '?'}")


class SegmentLayout:
    """Where every segment of a packed batch lies (built by :func:`segment_layout`).

    Attributes:
        num_segments: ``N`` (host int).
        max_length: the longest segment (host int).
        lengths: ``(N,)`` int64 segment lengths.
        positions: ``(T,)`` flat positions ``b * L + t`` of the real tokens, row order.
        seg: ``(T,)`` global segment of each real token; ``index``: its position in it.
        shape: ``(B, L)``.
    """

    def __init__(self, segment_ids: Tensor) -> None:
        sid = segment_ids.long()
        B, L = sid.shape
        self.shape = (B, L)
        per_row = sid.amax(dim=1) if L else sid.new_zeros(B)  # segments per row
        before = torch.cumsum(per_row, 0) - per_row  # segments in earlier rows
        flat = sid.reshape(-1)
        self.positions = torch.nonzero(flat > 0).squeeze(1)  # host sync (size)
        rows = torch.div(self.positions, max(L, 1), rounding_mode="floor")
        self.seg = flat[self.positions] - 1 + before[rows]
        n = int(per_row.sum()) if B else 0
        self.num_segments = n
        self.lengths = torch.bincount(self.seg, minlength=n)[:n] if n else sid.new_zeros(0)
        starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.index = torch.arange(len(self.positions), device=sid.device) - starts[self.seg]
        self.max_length = int(self.lengths.max()) if n else 0

    def to_padded(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, L)`` packed -> ``(N, C, max_length)`` right-padded and its mask."""
        B, C, L = x.shape
        vals = x.transpose(1, 2).reshape(B * L, C).index_select(0, self.positions)
        out = x.new_zeros(self.num_segments, self.max_length, C)
        out = out.index_put((self.seg, self.index), vals)
        t = torch.arange(self.max_length, device=x.device)
        mask = (t < self.lengths[:, None]).unsqueeze(1)
        return out.transpose(1, 2), mask

    def from_padded(self, y: Tensor) -> Tensor:
        """``(N, H, max_length)`` -> ``(B, H, L)`` packed, zero at padding."""
        B, L = self.shape
        H = y.shape[1]
        vals = y.transpose(1, 2)[self.seg, self.index]  # (T, H)
        out = y.new_zeros(B * L, H).index_copy(0, self.positions, vals)
        return out.reshape(B, L, H).transpose(1, 2)


def segment_layout(segment_ids: Tensor) -> SegmentLayout:
    """The :class:`SegmentLayout` of ``segment_ids`` ``(B, L)``.

    Within a row, segments must be contiguous runs numbered ``1, 2, ...`` in order (as
    :class:`seqpad.PackingCollator` builds them); on CPU this is checked.
    """
    segment_mask(segment_ids)
    if segment_ids.device.type == "cpu" and not torch.compiler.is_compiling() \
            and segment_ids.numel():
        s = segment_ids.long()
        prev = torch.cat([s.new_zeros(s.shape[0], 1), s.cummax(dim=1).values[:, :-1]], 1)
        ok = ((s == 0) | (s == prev) | (s == prev + 1)) & ((s == 0) | (s >= prev))
        # a segment may not resume after another one or after padding
        starts = (s > 0) & (s != torch.cat([s.new_zeros(s.shape[0], 1), s[:, :-1]], 1))
        ok &= ~starts | (s == prev + 1)
        if not bool(ok.all()):
            raise ValueError("segment_ids must number the sequences of each row 1, 2, ... "
                             "as contiguous runs (0 at padding), as PackingCollator does")
    return SegmentLayout(segment_ids)


# --------------------------------------------------------------------- pooling
def _pool_inputs(x: Tensor, segment_ids: Tensor) -> tuple[Tensor, Tensor, int]:
    _check_fits(x, segment_ids)
    lay = segment_layout(segment_ids)
    B, C, L = x.shape
    vals = x.transpose(1, 2).reshape(B * L, C).index_select(0, lay.positions)
    return vals, lay.seg, lay.num_segments


def segment_sum(x: Tensor, segment_ids: Tensor) -> Tensor:
    """Sum over each segment: ``(B, C, L)`` -> ``(N, C)``, segments in row order."""
    vals, seg, n = _pool_inputs(x, segment_ids)
    return vals.new_zeros(n, x.shape[1]).index_add(0, seg, vals)


def segment_mean(x: Tensor, segment_ids: Tensor) -> Tensor:
    """Mean over each segment: ``(B, C, L)`` -> ``(N, C)``."""
    vals, seg, n = _pool_inputs(x, segment_ids)
    total = vals.new_zeros(n, x.shape[1]).index_add(0, seg, vals)
    count = torch.bincount(seg, minlength=n)[:n].clamp_min(1).to(total.dtype)
    return total / count[:, None]


def segment_max(x: Tensor, segment_ids: Tensor) -> Tensor:
    """Max over each segment: ``(B, C, L)`` -> ``(N, C)``."""
    vals, seg, n = _pool_inputs(x, segment_ids)
    idx = seg[:, None].expand_as(vals)
    return vals.new_zeros(n, x.shape[1]).scatter_reduce(0, idx, vals, "amax",
                                                        include_self=False)


# ----------------------------------------------------------------- convolution
def segment_conv1d(
    x: Tensor,
    segment_ids: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    dilation: int = 1,
    groups: int = 1,
    causal: bool = False,
) -> Tensor:
    """:func:`~seqpad.nn.functional.masked_conv1d` where each segment is a sequence.

    The packed rows are convolved as a whole (values of other segments and of padding
    included), then the few outputs whose receptive field reaches another segment or
    padding are recomputed from their own segment's values only (other segments count as
    padding), and padding outputs are zeroed. Each segment thus
    gets what it gets alone. Finding those positions costs one host synchronisation.

    Shapes: x ``(B, C_in, L)``, segment_ids ``(B, L)`` -> ``(B, C_out, L)``, zero at padding.
    """
    _check_fits(x, segment_ids)
    m = segment_mask(segment_ids)
    K = weight.shape[-1]
    if x.shape[-1] == 0:
        return masked_conv1d(x, m, weight, bias, dilation=dilation, groups=groups,
                             causal=causal)
    left, right = same_padding(K, dilation, causal)
    # The rows as they are (padding not zeroed: every output that reads padding or another
    # segment is recomputed below, and padding outputs are zeroed at the end).
    if left == right:
        out = F.conv1d(x, weight, bias, padding=left, dilation=dilation, groups=groups)
    else:
        out = F.conv1d(F.pad(x, (left, right)), weight, bias, dilation=dilation, groups=groups)
    if K == 1:
        return out.masked_fill(~m, 0)
    sid = segment_ids.long()
    L = sid.shape[1]
    sp = F.pad(sid, (left, right), value=-1)  # -1: outside the row (zero padding, fine)
    foreign = torch.zeros_like(sid, dtype=torch.bool)
    for k in range(K):
        tap = sp[:, k * dilation: k * dilation + L]
        foreign |= (tap != sid) & (tap >= 0)  # another segment, or padding
    foreign &= sid > 0
    b, t = torch.nonzero(foreign, as_tuple=True)  # host sync (size)
    if b.numel() == 0:
        return out.masked_fill(~m, 0)
    tk = t[:, None] + (torch.arange(K, device=x.device) * dilation - left)  # (n, K)
    tkc = tk.clamp(0, L - 1)
    keep = (tk == tkc) & (sid[b[:, None], tkc] == sid[b, t][:, None])  # own segment only
    vals = x.transpose(1, 2)[b[:, None], tkc]  # (n, K, C_in)
    vals = torch.where(keep[:, :, None], vals, vals.new_zeros(()))
    n, C_out = b.numel(), weight.shape[0]
    ci = weight.shape[1]
    if groups == 1:  # one (n, K * C_in) @ (K * C_in, C_out) product
        y = vals.reshape(n, K * ci) @ weight.permute(2, 1, 0).reshape(K * ci, C_out)
    else:
        w = weight.reshape(groups, C_out // groups, ci, K)
        y = torch.einsum("nkgc,gock->ngo", vals.reshape(n, K, groups, ci), w).reshape(n, C_out)
    if bias is not None:
        y = y + bias
    # In place: ``out`` is a fresh result that no autograd node saved (no extra copy).
    chans = torch.arange(C_out, device=x.device)
    out.index_put_((b[:, None], chans[None, :], t[:, None]), y.to(out.dtype))
    return out.masked_fill(~m, 0)


def segment_rnn(rnn: torch.nn.Module, x: Tensor, segment_ids: Tensor,
                return_state: bool = False) -> Tensor | tuple[Tensor, object]:
    """Run a masked RNN module on each segment as its own sequence.

    The segments are gathered into a right-padded ``(N, C, max_length)`` batch, run with
    their mask (the forward direction restarts at each segment's start, the reverse one
    at its end) and scattered back to ``(B, H, L)``. The final states are per segment:
    ``(layers * directions, N, H)``.
    """
    _check_fits(x, segment_ids)
    lay = segment_layout(segment_ids)
    padded, mask = lay.to_padded(x)
    res = rnn(padded, mask, return_state=return_state)
    if return_state:
        y, state = res
        return lay.from_padded(y), state
    return lay.from_padded(res)
