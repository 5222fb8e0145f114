"""Masked-language-model batches: BERT-style corruption of real residue positions.

:func:`mask_tokens` does the math on a ``(B, L)`` id tensor; :class:`MaskedLMCollator`
is a :class:`~seqpad.collate.Collator` whose :class:`~seqpad.collate.Batch` carries the
corrupted ``tokens`` and the ``labels`` to predict.

Only residue ids are ever chosen (every id of the vocabulary that is not in
``tokenizer.special_ids``: never pad, bos, eos, unk or mask), and random replacements
are residue ids too. The work is vectorised in numpy over the real residues of the
batch (one random byte per residue, then one float per chosen position); there is no
Python loop per sequence or per residue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from seqpad.collate import Batch, Collator

if TYPE_CHECKING:
    from seqpad.collate import Item
    from seqpad.tokenizer import Tokenizer

__all__ = ["IGNORE_INDEX", "MaskedLMCollator", "mask_tokens", "residue_ids"]

#: Label of positions that are not prediction targets (``F.cross_entropy``'s default).
IGNORE_INDEX = -100


def residue_ids(tokenizer: Tokenizer) -> npt.NDArray[np.int64]:
    """Ids of ``tokenizer`` that are residue tokens (not in ``special_ids``), ascending."""
    special = {int(i) for i in tokenizer.special_ids}
    return np.array([i for i in range(int(tokenizer.vocab_size)) if i not in special],
                    dtype=np.int64)


def _check_fractions(mlm_probability: float, mask_fraction: float,
                     random_fraction: float) -> None:
    if not 0.0 < mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must lie in (0, 1], got {mlm_probability!r}")
    if not (0.0 <= mask_fraction <= 1.0 and 0.0 <= random_fraction <= 1.0
            and mask_fraction + random_fraction <= 1.0 + 1e-12):
        raise ValueError("mask_fraction and random_fraction must lie in [0, 1] and sum to "
                         f"at most 1, got {mask_fraction!r} and {random_fraction!r}")


def _is_residue(flat: npt.NDArray[np.int64], residues: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Boolean per id of ``flat``: is it one of ``residues`` (sorted, unique)?"""
    lo, hi = int(residues[0]), int(residues[-1])
    if hi - lo + 1 == residues.size:  # a contiguous block of ids: two comparisons
        return (flat >= lo) & (flat <= hi)
    top = max(hi, int(flat.max()) if flat.size else 0) + 1
    table = np.zeros(top, dtype=bool)
    table[residues] = True
    return table[np.clip(flat, 0, top - 1)]


def _bernoulli(rng: np.random.Generator, n: int, p: float) -> npt.NDArray[np.bool_]:
    """``n`` independent Bernoulli(``p``) draws from random bytes, exactly.

    A byte ``b`` below ``floor(256 p)`` is a success; a byte equal to it succeeds with
    the remaining probability ``256 p - floor(256 p)`` (one float draw per such byte,
    1 in 256). About 10x cheaper than one float per position.
    """
    raw = rng.bit_generator.random_raw((n + 7) // 8)
    u8 = np.asarray(raw, dtype="<u8").view(np.uint8)[:n]
    q = p * 256.0
    k = int(q)
    out = u8 < k
    if q > k:
        edge = np.flatnonzero(u8 == k)
        if edge.size:
            out[edge[rng.random(edge.size) < q - k]] = True
    return out


def mask_tokens(
    tokens: Tensor,
    residues: Sequence[int] | npt.ArrayLike,
    mask_id: int,
    *,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: np.random.Generator | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT-style corruption of ``tokens`` at residue positions.

    Each position whose id is in ``residues`` is chosen with probability
    ``mlm_probability``; a row with at least one residue but none chosen gets one
    residue position chosen uniformly. Of the chosen positions, a fraction
    ``mask_fraction`` (in expectation) become ``mask_id``, ``random_fraction`` a residue
    id drawn uniformly from ``residues`` (never a special token), and the rest keep
    their id. Positions holding any other id (pad, bos, eos, unk, mask, ...) are never
    chosen, so no mask is needed.

    Args:
        tokens: ``(B, L)`` integer ids (any device; the work is done on the CPU).
        residues: the ids that may be chosen and drawn as replacements (e.g.
            :func:`residue_ids`); non-empty.
        mask_id: the id written at masked positions.
        mlm_probability / mask_fraction / random_fraction: as above.
        generator: numpy generator to draw from (fresh OS entropy when None).
        lengths: optional ``(B,)`` real lengths of right-padded rows (``Batch.lengths``):
            positions at or past them are never chosen and draw no random numbers,
            which saves the work on padding. Without it every position is examined.

    Returns:
        ``(inputs, labels)``, both ``(B, L)`` int64 on ``tokens.device``: ``inputs`` is
        the corrupted copy (``tokens`` is not modified); ``labels`` holds the original
        id at the chosen positions and ``-100`` (:data:`IGNORE_INDEX`) elsewhere.
    """
    _check_fractions(mlm_probability, mask_fraction, random_fraction)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
    res = np.unique(np.asarray(residues, dtype=np.int64))
    if res.size == 0:
        raise ValueError("residues must hold at least one id")
    rng = generator if generator is not None else np.random.default_rng()
    arr = tokens.detach().cpu().numpy()
    n_rows, width = arr.shape
    inputs = arr.astype(np.int64, copy=True).reshape(-1)
    flat = inputs  # read-only use until the replacements below
    if lengths is None:  # every position may be real
        lens = np.full(n_rows, width, dtype=np.int64)
    else:
        lens = np.minimum(lengths.detach().cpu().numpy().astype(np.int64), width)
        if lens.shape != (n_rows,):
            raise ValueError(f"lengths must be ({n_rows},), got shape {lens.shape}")
    # Draw over the real positions only (row-major), then drop the non-residues: the
    # same as one independent draw per residue position.
    ends = np.cumsum(lens)
    hits = np.flatnonzero(_bernoulli(rng, int(ends[-1]) if n_rows else 0, mlm_probability))
    # real position k of row r (counted over the concatenated rows) -> flat r * L + col
    shift = np.repeat(np.arange(n_rows, dtype=np.int64) * width - (ends - lens), lens)
    chosen = hits + shift[hits]
    chosen = chosen[_is_residue(flat[chosen], res)]
    # Every row with a residue gets at least one target.
    hit = np.zeros(n_rows, dtype=bool)
    hit[chosen // width] = True
    need = np.flatnonzero(~hit)
    if need.size:
        sub = _is_residue(arr[need].astype(np.int64).reshape(-1), res).reshape(need.size, width)
        sub &= np.arange(width) < lens[need, None]
        keep = sub.any(axis=1)
        need, sub = need[keep], sub[keep]
    if need.size:
        pick = rng.integers(0, sub.sum(axis=1))
        cols = (np.cumsum(sub, axis=1) > pick[:, None]).argmax(axis=1)
        chosen = np.sort(np.concatenate([chosen, need * width + cols]))
    labels_t = torch.full((n_rows, width), IGNORE_INDEX, dtype=torch.long)
    labels = labels_t.numpy().reshape(-1)
    labels[chosen] = flat[chosen]
    kind = rng.random(chosen.size)
    inputs[chosen[kind < mask_fraction]] = int(mask_id)
    swap = chosen[(kind >= mask_fraction) & (kind < mask_fraction + random_fraction)]
    inputs[swap] = res[rng.integers(0, res.size, swap.size)]
    out = (torch.from_numpy(inputs.reshape(n_rows, width)), labels_t)
    if tokens.device.type != "cpu":
        return out[0].to(tokens.device), out[1].to(tokens.device)
    return out


class MaskedLMCollator(Collator):
    """A :class:`~seqpad.collate.Collator` that also corrupts the batch for masked-LM training.

    The returned :class:`~seqpad.collate.Batch` has ``tokens`` (the inputs after
    masking), ``labels`` ``(B, L)`` int64 (the original id at the chosen positions,
    ``-100`` elsewhere, ready for ``F.cross_entropy(logits, labels)``), and the usual
    ``mask`` and ``lengths`` (computed before masking: a masked position is real).

    Args:
        tokenizer: gives ``mask_id``, ``special_ids`` and ``vocab_size``; residue ids are
            all ids below ``vocab_size`` not in ``special_ids``.
        mlm_probability: chance that a residue position is chosen (default 0.15); each
            sequence with at least one residue gets at least one target.
        mask_fraction: of the chosen, the share written as ``mask_id`` (default 0.8).
        random_fraction: of the chosen, the share replaced by a uniformly drawn residue
            id, never a special token (default 0.1); the rest stay unchanged.
        seed: as for :class:`~seqpad.collate.Collator`: seeded, crops and masking are
            drawn from one stream per ``(seed, epoch, DataLoader worker id)``, so a run
            is reproducible and every epoch (:meth:`set_epoch`) and worker differs;
            unseeded, they are random.
        **collator_options: any other :class:`~seqpad.collate.Collator` option
            (``max_length``, ``crop``, ``add_bos``, ``add_eos``, ``pad_to_multiple_of``).

    Example:
        >>> from seqpad.tokenizer import Tokenizer
        >>> collate = MaskedLMCollator(Tokenizer("protein"), seed=0)
        >>> batch = collate(["MKTAYIAKQR", "MSE"])
        >>> batch.labels.shape, int((batch.labels[1] != -100).sum()) >= 1
        (torch.Size([2, 10]), True)
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        mlm_probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        seed: int | None = None,
        **collator_options: Any,
    ) -> None:
        super().__init__(tokenizer, seed=seed, **collator_options)
        _check_fractions(mlm_probability, mask_fraction, random_fraction)
        if tokenizer.mask_id is None:
            raise ValueError(f"{tokenizer!r} has no mask token")
        self.mlm_probability = float(mlm_probability)
        self.mask_fraction = float(mask_fraction)
        self.random_fraction = float(random_fraction)
        self.residue_ids = residue_ids(tokenizer)
        if self.residue_ids.size == 0:
            raise ValueError(f"{tokenizer!r} has no residue ids to mask")

    def __call__(self, items: Sequence[Item]) -> Batch:
        """Collate ``items`` (see :class:`~seqpad.collate.Collator`), then mask them."""
        batch = super().__call__(items)
        inputs, labels = mask_tokens(
            batch.tokens, self.residue_ids, int(self.tokenizer.mask_id),
            mlm_probability=self.mlm_probability, mask_fraction=self.mask_fraction,
            random_fraction=self.random_fraction, generator=self._generator(),
            lengths=batch.lengths,
        )
        return replace(batch, tokens=inputs, labels=labels)

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", mlm_probability={self.mlm_probability}, "
                f"mask_fraction={self.mask_fraction}, random_fraction={self.random_fraction})")
