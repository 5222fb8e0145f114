"""Batch samplers: length-bucketed batches under a padded-token budget.

:class:`TokenBudgetBatchSampler` is a ``batch_sampler`` for
:class:`torch.utils.data.DataLoader`: it groups sequences of similar length so that
the padded batch ``len(batch) * max(lengths in batch)`` never exceeds ``max_tokens``,
reshuffles every epoch through :meth:`~TokenBudgetBatchSampler.set_epoch`, and
deals the batches to distributed ranks so that every sequence is seen exactly once per
epoch and every rank gets the same number of batches.
"""

from __future__ import annotations

import heapq
import itertools
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
    only on ``lengths``, ``max_tokens``, ``max_batch_size``, ``seed``, the epoch and
    ``num_replicas``), then takes every ``num_replicas``-th batch starting at ``rank``, so
    ranks get disjoint batches. Every rank must get the same number of batches (DDP hangs
    otherwise); when the batch count ``n`` is not a multiple of ``num_replicas``:

    * ``drop_last=False`` (default): exact coverage. The batches with the most sequences
      are split in two (each part is a subset of a batch, so within the budget) until the
      count is the next multiple ``ceil(n / num_replicas) * num_replicas``; every index
      is yielded exactly once per epoch across all ranks, nothing is repeated (unlike
      :class:`~torch.utils.data.DistributedSampler`, whose padding duplicates samples and
      skews distributed validation metrics). When the epoch's batches have too few
      sequences to split that far, the epoch is packed again as one length-sorted pool
      (the fewest batches the budget allows) and split from there. If even that cannot
      reach a multiple of ``num_replicas`` (fewer sequences than ranks, or nearly every
      sequence needing a batch of its own), construction raises :class:`ValueError`.
    * ``drop_last=True``: the last ``n % num_replicas`` batches are dropped; no index is
      repeated but those sequences are skipped this epoch (a different set every epoch
      when shuffled). Each rank gets ``n // num_replicas`` batches. Fewer batches than
      ranks raises :class:`ValueError` at construction instead of giving every rank none.

    With a single replica ``drop_last`` changes nothing (no batch is ever dropped for
    being small). An empty ``lengths`` gives no batches on any rank.

    Args:
        lengths: ``(N,)`` length of every sequence, as the collator will see it (add
            ``add_bos + add_eos``, clip to ``max_length`` when cropping); list, numpy
            array or tensor of non-negative integers, or a dataset with a ``lengths``
            attribute (a :class:`~seqpad.store.TokenizedDataset`: its stored lengths,
            bos/eos included).
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
        if not isinstance(lengths, (torch.Tensor, np.ndarray, list, tuple)) and hasattr(
                lengths, "lengths"):
            lengths = lengths.lengths  # a TokenizedDataset (or any dataset with lengths)
        if isinstance(lengths, torch.Tensor):
            lengths = lengths.detach().cpu().numpy()
        lens = np.asarray(lengths)
        if lens.dtype.kind not in "iuf" and (lens.ndim != 1 or lens.size):
            raise TypeError("lengths must be the length of every sequence (a list, array or "
                            "tensor of ints) or a dataset with a .lengths attribute such as "
                            f"TokenizedDataset, got {type(lengths).__name__}")
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

        self._check_replicas()

    def _check_replicas(self) -> None:
        """Raise :class:`ValueError` when no epoch can give every rank the same number
        of batches under the chosen ``drop_last`` (decided from the fewest batches the
        budget allows: the unshuffled packing, which is optimal)."""
        n, reps = len(self.lengths), self.num_replicas
        if reps == 1 or n == 0:
            return
        fewest = len(self._pack(np.arange(n), n)) - 1
        if self.drop_last:
            if fewest < reps:
                raise ValueError(
                    f"drop_last=True with num_replicas={reps} but the {n} sequences make "
                    f"only {fewest} batch(es) under max_tokens={self.max_tokens}: every "
                    "rank would get no batch; use drop_last=False, a smaller max_tokens "
                    "or max_batch_size, or fewer ranks")
            return
        if n < reps:
            raise ValueError(
                f"{n} sequence(s) cannot be shared by num_replicas={reps} ranks: every "
                "rank needs at least one batch and each sequence is used exactly once; "
                "use fewer ranks (or more data)")
        need = math.ceil(fewest / reps) * reps
        if need > n:
            raise ValueError(
                f"the {n} sequences cannot be dealt to num_replicas={reps} ranks with the "
                f"same number of batches each and every sequence exactly once: under "
                f"max_tokens={self.max_tokens} they need at least {fewest} batches and the "
                f"next multiple of {reps} ({need}) exceeds the number of sequences; use "
                "a larger max_tokens, a number of ranks dividing "
                f"{fewest}, or drop_last=True")

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next ``iter`` / ``len`` uses.

        Call it before each epoch (as with :class:`~torch.utils.data.DistributedSampler`);
        without it every epoch repeats epoch 0's batches.
        """
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def _pack(self, perm: npt.NDArray[np.int64], pool: int,
              order: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.int64]:
        """Cut ``perm`` into pools of ``pool`` indices, sort each pool longest first
        (stable) and cut it greedily into batches. Writes the sorted indices into
        ``order`` when given; returns the batch starts, ``n`` appended."""
        n = len(perm)
        lens, take = self.lengths, self._take
        starts: list[int] = []
        for lo in range(0, n, pool):
            chunk = perm[lo: lo + pool]
            # Longest first; stable, so ties keep the (shuffled) order.
            chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
            if order is not None:
                order[lo: lo + len(chunk)] = chunk
            sizes = take[chunk].tolist()
            i, end = 0, len(chunk)
            while i < end:
                starts.append(lo + i)
                i += sizes[i]
        return np.array([*starts, n], dtype=np.int64)

    def _plan(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """All batches of the current epoch (every rank's), before the rank split.

        Returns ``(order, starts)``: batch ``k`` is ``order[starts[k]:starts[k + 1]]``.
        With ``num_replicas > 1`` and ``drop_last=False`` the batch count is already a
        multiple of ``num_replicas`` (batches split, see the class docstring).
        """
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1], self._cache[2]
        n = len(self.lengths)
        lens = self.lengths
        reps = self.num_replicas
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
        starts_arr = self._pack(perm, pool, order)
        if reps > 1 and not self.drop_last and n:
            if math.ceil((len(starts_arr) - 1) / reps) * reps > n:
                # too few sequences to split this packing far enough: pack the epoch's
                # permutation as one pool (the fewest batches; feasible, checked at
                # construction)
                starts_arr = self._pack(perm, n, order)
            starts_arr = _split_to_multiple(starts_arr, reps)
        total = len(starts_arr) - 1
        if rng is not None and total > 1:
            # Shuffle the batch order: rebuild order/starts in the permuted batch order.
            k = rng.permutation(total)
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
        # drop_last=False: total is a multiple of reps already (batches were split)
        return np.arange(total - total % reps)[self.rank:: reps]

    def __iter__(self) -> Iterator[list[int]]:
        order, starts = self._plan()
        for k in self._rank_batches().tolist():
            yield order[starts[k]: starts[k + 1]].tolist()

    def __len__(self) -> int:
        return (len(self._plan()[1]) - 1) // self.num_replicas

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_sequences={len(self.lengths)}, "
            f"max_tokens={self.max_tokens}, shuffle={self.shuffle}, seed={self.seed}, "
            f"max_batch_size={self.max_batch_size}, drop_last={self.drop_last}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, "
            f"pool_size={self.pool_size}, epoch={self.epoch})"
        )


def _split_to_multiple(starts: npt.NDArray[np.int64], reps: int) -> npt.NDArray[np.int64]:
    """Split batches until their count is a multiple of ``reps``.

    ``starts``: batch boundaries (``n`` appended). The batch with the most sequences
    (earliest on ties) is halved, its first part taking the extra sequence, and both
    halves return to the pool of candidates; each split adds one batch. A part of a
    batch keeps within the budget: fewer sequences, no longer maximum. The caller
    guarantees ``ceil(batches / reps) * reps <= n``, so a batch of two or more is always
    left to split.
    """
    total = len(starts) - 1
    extra = -total % reps
    if not extra:
        return starts
    heap = [(-(e - b), b, e) for b, e in itertools.pairwise(starts.tolist())]
    heapq.heapify(heap)
    cuts: list[int] = []
    for _ in range(extra):
        size, b, e = heapq.heappop(heap)
        mid = b + (-size + 1) // 2
        cuts.append(mid)
        heapq.heappush(heap, (-(mid - b), b, mid))
        heapq.heappush(heap, (-(e - mid), mid, e))
    return np.sort(np.concatenate([starts, np.array(cuts, dtype=np.int64)]))
