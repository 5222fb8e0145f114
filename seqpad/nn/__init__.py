"""Masked layers: each takes ``x`` as ``(B, C, L)`` and ``mask`` as ``(B, 1, L)``.

With no padding (or ``mask=None``) every layer equals its native PyTorch counterpart.
Packed batches: every layer also takes ``segment_ids=`` (see :mod:`seqpad.nn.segments`).
"""

from seqpad.nn import functional, segments
from seqpad.nn.batchnorm import (
    MaskedBatchNorm1d,
    MaskedSyncBatchNorm1d,
    convert_masked_batchnorm,
    convert_sync_batchnorm,
)
from seqpad.nn.conv import MaskedConv1d
from seqpad.nn.embedding import MaskedEmbedding
from seqpad.nn.norm import MaskedGroupNorm, MaskedInstanceNorm1d, MaskedLayerNorm1d
from seqpad.nn.pooling import MaskedMaxPool, MaskedMeanPool, MaskedSumPool
from seqpad.nn.rnn import MaskedGRU, MaskedLSTM

__all__ = [
    "MaskedBatchNorm1d",
    "MaskedConv1d",
    "MaskedEmbedding",
    "MaskedGRU",
    "MaskedGroupNorm",
    "MaskedInstanceNorm1d",
    "MaskedLSTM",
    "MaskedLayerNorm1d",
    "MaskedMaxPool",
    "MaskedMeanPool",
    "MaskedSumPool",
    "MaskedSyncBatchNorm1d",
    "convert_masked_batchnorm",
    "convert_sync_batchnorm",
    "functional",
    "segments",
]
