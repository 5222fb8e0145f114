"""Batch samplers: length-bucketed batches under a padded-token budget.

:class:`TokenBudgetBatchSampler` is a ``batch_sampler`` for
:class:`torch.utils.data.DataLoader`: it groups sequences of similar length so that
the padded batch ``len(batch) * max(lengths in batch)`` never exceeds ``max_tokens``,
reshuffles every epoch through :meth:`~TokenBudgetBatchSampler.set_epoch`, and
splits the batches evenly over distributed ranks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["TokenBudgetBatchSampler"]


def _default_replicas() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, or ``(1, 0)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class TokenBudgetBatchSampler:
    """Yield batches of dataset indices whose padded size stays within a token budget.

    A batch's padded size is ``len(batch) * max(lengths[i] for i in batch)``: the number
    of positions of the ``(B, L)`` tensor the collator builds. It never exceeds
    ``max_tokens``, except for a single sequence longer than the budget, which gets a
    batch of its own (with a warning at construction; batches are never empty).

    Algorithm, per epoch (``shuffle=True``): draw a permutation of all indices from a
    generator seeded with ``(seed, epoch)``; cut it into pools of
    ``pool_size`` batches' worth of sequences ("sortish" pools); sort each pool by length,
    longest first (ties keep their random order); cut each sorted pool greedily into
    batches (a batch starting at a sequence of length ``n`` takes
    ``min(max_tokens // n, max_batch_size)`` sequences, since the first is the longest);
    finally shuffle the order of all batches. Pools keep the length spread inside a batch
    small (padding waste about 2% on real proteomes at ``max_tokens=16384``) while the batch
    composition still changes from epoch to epoch. With ``shuffle=False`` the whole data
    set is one pool, sorted by length (longest first, ties by index), and the batches come
    in that order, the same every epoch.

    Distributed (``num_replicas > 1``): every rank builds the same batch list (it depends
    only on ``lengths``, ``seed`` and the epoch), then takes every ``num_replicas``-th
    batch starting at ``rank``, so ranks get disjoint batches. To give every rank the same
    number of batches (DDP hangs otherwise), when the batch count ``n`` is not a multiple
    of ``num_replicas``:

    * ``drop_last=False`` (default): the list is padded by repeating batches from its
      start (as :class:`~torch.utils.data.DistributedSampler` does); every index is
      covered, and a few are seen twice in that epoch. Each rank gets
      ``ceil(n / num_replicas)`` batches.
    * ``drop_last=True``: the last ``n % num_replicas`` batches are dropped; no index is
      repeated but those sequences are skipped this epoch (a different set every epoch
      when shuffled). Each rank gets ``n // num_replicas`` batches.

    With a single replica ``drop_last`` changes nothing (no batch is ever dropped for
    being small).

    Args:
        lengths: ``(N,)`` length of every sequence, as the collator will see it (add
            ``add_bos + add_eos``, clip to ``max_length`` when cropping); list, numpy
            array or tensor of non-negative integers.
        max_tokens: budget on ``len(batch) * max(lengths in batch)``.
        shuffle: reshuffle batch composition and order every epoch.
        seed: non-negative int; the permutation of epoch ``e`` depends only on
            ``(seed, e)``. Every rank must use the same seed.
        max_batch_size: optional cap on sequences per batch.
        drop_last: see above.
        num_replicas / rank: distributed split; default from :mod:`torch.distributed`
            when it is initialised, else ``1`` / ``0``.
        pool_size: sortish pool, in batches (of the mean sequence length); larger pools
            give less padding and less random batch composition.

    ``__iter__`` yields ``list[int]``; ``len(sampler)`` is the exact number of batches the
    next ``iter`` yields for this rank and epoch. No global RNG state is read or changed.

    Example:
        >>> sampler = TokenBudgetBatchSampler([5, 3, 8, 2, 7], max_tokens=16, shuffle=False)
        >>> list(sampler)
        [[2, 4], [0, 1, 3]]
    """

    def __init__(
        self,
        lengths: Sequence[int] | npt.ArrayLike | torch.Tensor,
        max_tokens: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        max_batch_size: int | None = None,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        pool_size: int = 128,
    ) -> None:
        if isinstance(lengths, torch.Tensor):
            lengths = lengths.detach().cpu().numpy()
        lens = np.asarray(lengths)
        if lens.ndim != 1:
            raise ValueError(f"lengths must be 1-D (N,), got shape {lens.shape}")
        if lens.size and not np.issubdtype(lens.dtype, np.integer) and not (
                np.issubdtype(lens.dtype, np.floating) and np.all(lens == np.floor(lens))):
            raise TypeError(f"lengths must be integers, got dtype {lens.dtype}")
        lens = lens.astype(np.int64)
        if lens.size and int(lens.min()) < 0:
            i = int(lens.argmin())
            raise ValueError(f"lengths must be non-negative; lengths[{i}] = {int(lens[i])}")
        if int(max_tokens) != max_tokens or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if max_batch_size is not None and (int(max_batch_size) != max_batch_size
                                           or max_batch_size < 1):
            raise ValueError(f"max_batch_size must be a positive int or None, "
                             f"got {max_batch_size!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if int(pool_size) != pool_size or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if num_replicas is None or rank is None:
            world, this_rank = _default_replicas()
            num_replicas = world if num_replicas is None else num_replicas
            rank = this_rank if rank is None else rank
        if int(num_replicas) != num_replicas or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive int, got {num_replicas!r}")
        if int(rank) != rank or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank!r}")

        self.lengths: npt.NDArray[np.int64] = lens
        self.max_tokens = int(max_tokens)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.max_batch_size = None if max_batch_size is None else int(max_batch_size)
        self.drop_last = bool(drop_last)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.pool_size = int(pool_size)
        self.epoch = 0
        self._cache: tuple[int, npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None

        # Sequences per batch when a batch starts at a sequence of length n (the
        # longest in its batch): the budget's floor, at least 1, at most the cap.
        cap = self.max_batch_size if self.max_batch_size is not None else max(len(lens), 1)
        with np.errstate(divide="ignore"):
            per = np.where(lens > 0, self.max_tokens // np.maximum(lens, 1), cap)
        self._take = np.clip(per, 1, cap).astype(np.int64)

        over = np.flatnonzero(lens > self.max_tokens)
        if over.size:
            shown = ", ".join(f"{int(i)} (length {int(lens[i])})" for i in over[:5])
            more = f" and {over.size - 5} more" if over.size > 5 else ""
            warnings.warn(
                f"{over.size} sequence(s) are longer than max_tokens={self.max_tokens}: "
                f"index {shown}{more}; each gets a batch of its own that exceeds the budget",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next ``iter`` / ``len`` uses.

        Call it before each epoch (as with :class:`~torch.utils.data.DistributedSampler`);
        without it every epoch repeats epoch 0's batches.
        """
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def _plan(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """All batches of the current epoch (every rank's), before the rank split.

        Returns ``(order, starts)``: batch ``k`` is ``order[starts[k]:starts[k + 1]]``.
        """
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1], self._cache[2]
        n = len(self.lengths)
        lens = self.lengths
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(n)
            # Pool: pool_size batches of the mean length.
            mean = max(float(lens.mean()) if n else 1.0, 1.0)
            per_batch = max(1, int(self.max_tokens // mean))
            if self.max_batch_size is not None:
                per_batch = min(per_batch, self.max_batch_size)
            pool = max(1, self.pool_size * per_batch)
        else:
            rng = None
            perm = np.arange(n)
            pool = max(n, 1)
        order = np.empty(n, dtype=np.int64)
        starts: list[int] = []
        take = self._take
        for lo in range(0, n, pool):
            chunk = perm[lo: lo + pool]
            # Longest first; stable, so ties keep the (shuffled) order.
            chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
            order[lo: lo + len(chunk)] = chunk
            sizes = take[chunk].tolist()
            i, end = 0, len(chunk)
            while i < end:
                starts.append(lo + i)
                i += sizes[i]
        starts_arr = np.array([*starts, n], dtype=np.int64)
        if rng is not None and len(starts) > 1:
            # Shuffle the batch order: rebuild order/starts in the permuted batch order.
            k = rng.permutation(len(starts))
            sizes_arr = np.diff(starts_arr)[k]
            new_starts = np.concatenate([[0], np.cumsum(sizes_arr)])
            # Gather each batch's indices at its new position.
            src = np.repeat(starts_arr[:-1][k] - new_starts[:-1], sizes_arr) + np.arange(n)
            order = order[src]
            starts_arr = new_starts.astype(np.int64)
        self._cache = (self.epoch, order, starts_arr)
        return order, starts_arr

    def _rank_batches(self) -> npt.NDArray[np.int64]:
        """Positions (into the epoch's batch list) of this rank's batches, in order."""
        _, starts = self._plan()
        total = len(starts) - 1
        reps = self.num_replicas
        if self.drop_last:
            ids = np.arange(total - total % reps)
        else:
            padded = math.ceil(total / reps) * reps
            ids = np.arange(padded) % max(total, 1)
            if total == 0:
                ids = ids[:0]
        return ids[self.rank:: reps]

    def __iter__(self) -> Iterator[list[int]]:
        order, starts = self._plan()
        for k in self._rank_batches().tolist():
            yield order[starts[k]: starts[k + 1]].tolist()

    def __len__(self) -> int:
        total = len(self._plan()[1]) - 1
        if self.drop_last:
            return total // self.num_replicas
        return math.ceil(total / self.num_replicas)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_sequences={len(self.lengths)}, "
            f"max_tokens={self.max_tokens}, shuffle={self.shuffle}, seed={self.seed}, "
            f"max_batch_size={self.max_batch_size}, drop_last={self.drop_last}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, "
            f"pool_size={self.pool_size}, epoch={self.epoch})"
        )
