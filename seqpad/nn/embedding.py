"""Token embedding into the block convention: ids ``(B, L)`` -> ``(B, C, L)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqpad.nn.functional import masked_embedding
from seqpad.nn.segments import segment_mask

__all__ = ["MaskedEmbedding"]


class MaskedEmbedding(nn.Embedding):
    """``nn.Embedding`` whose output is channels-first and zero at padding.

    The padding row (``padding_idx``, default 0 = ``Tokenizer.pad_id``) is initialised
    to zero and never receives a gradient, as in ``nn.Embedding``; in addition the
    output is zero wherever ``mask`` is False (by default where ``ids == padding_idx``),
    whatever that row holds. Parameters and ``state_dict`` keys are ``nn.Embedding``'s.

    Args:
        num_embeddings: vocabulary size ``V`` (``Tokenizer.vocab_size``).
        embedding_dim: ``C``.
        padding_idx: the pad id, or None for no padding row.

    Shape:
        ids: ``(B, L)`` integer token ids; mask: ``(B, 1, L)`` / ``(B, L)`` or None;
        output: ``(B, C, L)`` in the weight's dtype.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = 0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, padding_idx=padding_idx, device=device, dtype=dtype
        )

    def forward(self, ids: Tensor, mask: Tensor | None = None, *,  # type: ignore[override]
                segment_ids: Tensor | None = None) -> Tensor:
        """Embed ``ids`` ``(B, L)`` -> ``(B, C, L)``, zero where ``mask`` is False.

        ``segment_ids`` ``(B, L)`` (packed batches) gives the mask ``segment_ids > 0``.
        """
        if segment_ids is not None:
            mask = segment_mask(segment_ids)
        return masked_embedding(ids, self.weight, self.padding_idx, mask)
