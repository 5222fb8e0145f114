"""k-mer tokens for DNA / RNA: the vocabulary order and the vectorised encoder.

A k-mer tokenizer (``Tokenizer("dna", k=K, stride=S)``) has the usual vocabulary
(special tokens, then the single symbols of the alphabet) followed by all ``4**K``
k-mers over ``ACGT`` (``ACGU`` for RNA) in lexicographic order: the k-mer
``x_1 .. x_K`` has id ``kmer_base + sum(code(x_i) * 4**(K - i))`` with
``A=0, C=1, G=2, T/U=3`` (``itertools.product("ACGT", repeat=K)`` order).

Encoding one sequence of ``n`` symbols (the rule :func:`encode_kmers` implements):

* windows start at ``p = 0, S, 2S, ...`` while ``p + K <= n``;
* a window whose ``K`` symbols are all ``A C G T`` (either case) emits one k-mer token;
  any other window (it holds ``N``, an IUPAC code, a gap or an unknown symbol) emits
  the single-symbol tokens of its first ``S`` symbols, ``seq[p:p + S]``;
* after the last window, the symbols no token has reached yet (past the furthest
  ``p + K`` of a k-mer window and ``p + S`` of a single-symbol window) are emitted as
  single-symbol tokens, so a sequence shorter than ``K`` is all single symbols.

With ``S = K`` (non-overlapping, Nucleotide Transformer style) every symbol is in
exactly one token, so decoding gives the input back (uppercased). With ``S < K``
(overlapping, DNABERT style, ``S = 1``) each k-mer token covers ``K`` symbols and
consecutive tokens overlap; every symbol is still in at least one token.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_K", "encode_kmers", "kmer_tokens", "nucleotide_table"]

#: The largest supported ``k``: ``4**8 = 65536`` k-mers (ids then need ``uint32``).
MAX_K = 8
_BAD = 4  # nucleotide code of any symbol that is not A, C, G, T/U


def kmer_tokens(bases: str, k: int) -> list[str]:
    """All ``len(bases)**k`` k-mers over ``bases`` in id order (lexicographic)."""
    return ["".join(p) for p in itertools.product(bases, repeat=k)]


def nucleotide_table(bases: str, case_sensitive: bool) -> npt.NDArray[np.uint8]:
    """The 256-entry byte -> code table: ``bases[i]`` -> ``i``, anything else -> 4."""
    table = np.full(256, _BAD, dtype=np.uint8)
    for i, b in enumerate(bases):
        table[ord(b)] = i
        if not case_sensitive:
            table[ord(b.lower())] = i
    return table


def encode_kmers(
    singles: npt.NDArray[np.integer],
    codes: npt.NDArray[np.uint8],
    lengths: npt.NDArray[np.int64],
    k: int,
    stride: int,
    kmer_base: int,
    dtype: type[np.unsignedinteger],
) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.int64]]:
    """Encode several joined sequences into k-mer tokens (rule in the module docstring).

    Args:
        singles: ``(N,)`` single-symbol id of every symbol of every sequence, joined.
        codes: ``(N,)`` nucleotide code (0-3, or 4 for any other symbol) of each symbol.
        lengths: ``(R,)`` int64 symbols per sequence (sum ``N``).
        k / stride: window size and step.
        kmer_base: id of the k-mer ``A...A``.
        dtype: the unsigned integer dtype of the ids returned.

    Returns:
        ``(ids, token_lengths)``: ``(T,)`` ids of every sequence joined, and ``(R,)``
        int64 tokens per sequence.
    """
    n_total = int(codes.size)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_rec = int(lengths.size)
    starts = np.zeros(n_rec, dtype=np.int64)
    if n_rec > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    n_win = np.where(lengths >= k, (lengths - k) // stride + 1, 0)
    total_win = int(n_win.sum())
    if n_rec == 0:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
    win_first = np.zeros(n_rec, dtype=np.int64)
    np.cumsum(n_win[:-1], out=win_first[1:])
    # k-mer value at every position (rolling, over contiguous slices), then the windows
    if total_win:
        m = n_total - k + 1
        clean = np.minimum(codes, 3).astype(np.uint32)
        value = clean[:m].copy()
        for j in range(1, k):
            value <<= 2
            value |= clean[j: j + m]
        bad_before = np.zeros(n_total + 1, dtype=np.int32)
        np.cumsum(codes == _BAD, out=bad_before[1:])
        rec_of_win = np.repeat(np.arange(n_rec), n_win)
        p = starts[rec_of_win] + (np.arange(total_win) - win_first[rec_of_win]) * stride
        good = bad_before[p + k] == bad_before[p]
        kmer_ids = value[p] + kmer_base
    else:
        p = np.zeros(0, dtype=np.int64)
        good = np.zeros(0, dtype=bool)
        kmer_ids = np.zeros(0, dtype=np.uint32)
        rec_of_win = p
    # where each sequence's tail starts: the furthest point a token reached
    cover = np.where(good, p + k, p + stride) if total_win else p
    tail_start = starts.copy()
    if total_win:
        np.maximum.at(tail_start, rec_of_win, cover)
    ends = starts + lengths
    tail_len = ends - tail_start
    if total_win == int(good.sum()) and not tail_len.any():
        return kmer_ids.astype(dtype), n_win.astype(np.int64)  # every window a clean k-mer
    # general case: events = each record's windows, then its tail
    n_ev = total_win + n_rec
    ev_first = np.zeros(n_rec, dtype=np.int64)
    np.cumsum(n_win[:-1] + 1, out=ev_first[1:])
    # window w of record r goes to slot ev_first[r] + (w - win_first[r])
    win_slot = (ev_first[rec_of_win] + np.arange(total_win) - win_first[rec_of_win]
                if total_win else np.zeros(0, dtype=np.int64))
    tail_slot = ev_first + n_win
    is_kmer = np.zeros(n_ev, dtype=bool)
    src = np.zeros(n_ev, dtype=np.int64)
    count = np.zeros(n_ev, dtype=np.int64)
    kid = np.zeros(n_ev, dtype=np.int64)
    is_kmer[win_slot] = good
    src[win_slot] = p
    count[win_slot] = np.where(good, 1, stride)
    kid[win_slot] = kmer_ids
    src[tail_slot] = tail_start
    count[tail_slot] = tail_len
    out_start = np.zeros(n_ev, dtype=np.int64)
    np.cumsum(count[:-1], out=out_start[1:])
    total = int(count.sum())
    ev = np.repeat(np.arange(n_ev), count)
    within = np.arange(total, dtype=np.int64) - out_start[ev]
    single_at = np.minimum(src[ev] + within, max(n_total - 1, 0))
    out = np.where(is_kmer[ev], kid[ev], singles[single_at]).astype(dtype)
    tok_lens = np.add.reduceat(count, ev_first)
    return out, tok_lens.astype(np.int64)
