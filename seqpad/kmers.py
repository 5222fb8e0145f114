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
_OTHER = 4  # nucleotide code of a symbol of the alphabet that is not A, C, G, T/U
_UNKNOWN = 5  # ... and of a byte outside the alphabet


def kmer_tokens(bases: str, k: int) -> list[str]:
    """All ``len(bases)**k`` k-mers over ``bases`` in id order (lexicographic)."""
    return ["".join(p) for p in itertools.product(bases, repeat=k)]


def nucleotide_table(bases: str, others: str, case_sensitive: bool) -> bytes:
    """The 256-byte ``bytes.translate`` table giving each byte its nucleotide code:
    ``bases[i]`` -> ``i`` (0-3), any other symbol of the alphabet (``others``) -> 4, a byte
    outside the alphabet -> 5 (codes 4 and 5 both have bit 2 set: "not a base")."""
    table = bytearray([_UNKNOWN] * 256)
    for symbols, code in ((others, _OTHER), *((b, i) for i, b in enumerate(bases))):
        for c in symbols:
            table[ord(c)] = code
            if not case_sensitive:
                table[ord(c.lower())] = code
                table[ord(c.upper())] = code
    return bytes(table)


def encode_kmers(
    codes: npt.NDArray[np.uint8],
    symbols: npt.NDArray[np.uint8],
    single_table: npt.NDArray[np.unsignedinteger],
    lengths: npt.NDArray[np.int64],
    k: int,
    stride: int,
    kmer_base: int,
    dtype: type[np.unsignedinteger],
) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.int64]]:
    """Encode several joined sequences into k-mer tokens (rule in the module docstring).

    Args:
        codes: ``(N,)`` nucleotide code of every symbol (:func:`nucleotide_table`).
        symbols: ``(N,)`` the symbols' bytes.
        single_table: 256-entry byte -> single-symbol id table (unknown bytes -> unk,
            or anything when the caller has already refused them).
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
    if n_rec == 0:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
    if n_rec == 1 and stride == k:
        fast = _one_clean_record(codes, symbols, single_table, k, kmer_base, dtype)
        if fast is not None:
            return fast
    starts = np.zeros(n_rec, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    n_win = np.where(lengths >= k, (lengths - k) // stride + 1, 0)
    total_win = int(n_win.sum())
    win_first = np.zeros(n_rec, dtype=np.int64)
    np.cumsum(n_win[:-1], out=win_first[1:])
    p: npt.NDArray[np.int64] | None = None
    tail_start = starts.copy()  # where each sequence's tail starts (becomes so below)
    if stride == k:
        # non-overlapping: drop the tails, and the windows are the rows of a (W, k) block
        tail_start += n_win * k
        tails = starts + lengths - tail_start
        block = codes
        if n_rec == 1:
            block = codes[: total_win * k]
        elif tails.any():
            keep = np.ones(n_total, dtype=bool)
            keep[_ranges(tail_start, tails)] = False
            block = codes[keep]
        block = block.reshape(total_win, k)
        value = block[:, 0].astype(np.uint32)
        flag = block[:, 0].copy()
        for j in range(1, k):
            col = block[:, j]
            value <<= 2
            value |= col & 3
            flag |= col
    else:
        p = _window_starts(starts, n_win, win_first, stride)
        if stride * 4 <= k and total_win:  # dense windows: rolling over contiguous slices
            rolled, flags = _rolling(codes, k)
            value = rolled[p]
            flag = flags[p]
        else:  # sparse windows: gather each of the k columns
            value = np.zeros(total_win, dtype=np.uint32)
            flag = np.zeros(total_win, dtype=np.uint8)
            for j in range(k):
                col = codes[p + j] if j else codes[p]
                value <<= 2
                value |= col & 3
                flag |= col
    good = (flag & 4) == 0
    all_good = bool(good.all())
    # the tail starts where the furthest token reached
    has = n_win > 0
    if total_win and p is not None:
        if all_good:  # the last window reaches furthest
            last = win_first[has] + n_win[has] - 1
            tail_start[has] = p[last] + k
        else:
            cover = np.where(good, p + k, p + stride)
            tail_start[has] = np.maximum.reduceat(cover, win_first[has])
    tail_len = starts + lengths - tail_start
    kmer_ids = value.astype(dtype, copy=False)
    kmer_ids += dtype(kmer_base)
    if all_good and not tail_len.any():
        return kmer_ids, n_win.astype(np.int64)  # every window a clean k-mer
    if all_good:  # each record: its k-mers, then its tail
        tok_lens = n_win + tail_len
        rec_out = np.zeros(n_rec, dtype=np.int64)
        np.cumsum(tok_lens[:-1], out=rec_out[1:])
        out = np.empty(int(rec_out[-1] + tok_lens[-1]), dtype=dtype)
        at = np.arange(total_win, dtype=np.int64)
        at += np.repeat(rec_out - win_first, n_win)
        out[at] = kmer_ids
        _put_singles(out, rec_out + n_win, tail_start, tail_len, symbols, single_table)
        return out, tok_lens
    # some windows hold a non-base: each such window takes ``stride`` tokens instead of 1,
    # so window w lands at w + (stride - 1) * (bad windows before it) + earlier tails
    bad = ~good
    bad_before = np.zeros(total_win + 1, dtype=np.int64)
    np.cumsum(bad, out=bad_before[1:])
    bad_in_rec = bad_before[win_first + n_win] - bad_before[win_first]
    tok_lens = n_win + (stride - 1) * bad_in_rec + tail_len
    rec_out = np.zeros(n_rec, dtype=np.int64)
    np.cumsum(tok_lens[:-1], out=rec_out[1:])
    at = bad_before[:-1] * (stride - 1)
    at += np.arange(total_win, dtype=np.int64)
    at += np.repeat(rec_out - win_first - (stride - 1) * bad_before[win_first], n_win)
    out = np.empty(int(rec_out[-1] + tok_lens[-1]), dtype=dtype)
    out[at] = kmer_ids  # bad windows' slots are overwritten by their singles just below
    bad_idx = np.flatnonzero(bad)
    if p is None:  # start of each bad window: its record's start + j * stride
        rec = np.searchsorted(win_first, bad_idx, side="right") - 1
        p_bad = starts[rec] + (bad_idx - win_first[rec]) * stride
    else:
        p_bad = p[bad_idx]
    n_bad = int(bad_idx.size)
    _put_singles(out, np.concatenate([at[bad_idx], rec_out + tok_lens - tail_len]),
                 np.concatenate([p_bad, tail_start]),
                 np.concatenate([np.full(n_bad, stride, dtype=np.int64), tail_len]),
                 symbols, single_table)
    return out, tok_lens


def _one_clean_record(codes: npt.NDArray[np.uint8], symbols: npt.NDArray[np.uint8],
                      single_table: npt.NDArray[np.unsignedinteger], k: int, kmer_base: int,
                      dtype: type[np.unsignedinteger]
                      ) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.int64]] | None:
    """Non-overlapping k-mers of one sequence whose windows are all bases (the common
    case, in a few numpy calls); None when some window holds a non-base."""
    n = int(codes.size)
    n_win = n // k
    block = codes[: n_win * k].reshape(n_win, k)
    if (block & 4).any():
        return None
    value = block[:, 0].astype(np.uint32)
    for j in range(1, k):
        value <<= 2
        value |= block[:, j]
    out = np.empty(n_win + n - n_win * k, dtype=dtype)
    np.add(value, kmer_base, out=out[:n_win], casting="unsafe")
    out[n_win:] = single_table[symbols[n_win * k:]]
    return out, np.array([out.size], dtype=np.int64)


def _rolling(codes: npt.NDArray[np.uint8], k: int
             ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """k-mer value and OR of the codes of the window starting at every position
    ``0 .. N - k``, built by doubling (1-, 2-, 4-mers, then joined): about ``log2(k)``
    passes instead of ``k``."""
    pieces = {1: ((codes & 3).astype(np.uint32), codes)}
    size = 1
    while size * 2 <= k:
        v, f = pieces[size]
        n = v.size - size
        pieces[size * 2] = ((v[:n] << np.uint32(2 * size)) | v[size:size + n],
                            f[:n] | f[size:size + n])
        size *= 2
    value, flag = pieces[size]
    have = size
    for part in sorted(pieces, reverse=True):
        if have + part <= k:
            v, f = pieces[part]
            n = codes.size - (have + part) + 1
            value = (value[:n] << np.uint32(2 * part)) | v[have:have + n]
            flag = flag[:n] | f[have:have + n]
            have += part
    return value, flag


def _put_singles(out: npt.NDArray[np.unsignedinteger], at: npt.NDArray[np.int64],
                 src: npt.NDArray[np.int64], count: npt.NDArray[np.int64],
                 symbols: npt.NDArray[np.uint8],
                 single_table: npt.NDArray[np.unsignedinteger]) -> None:
    """``out[at[i] + j] = single id of symbols[src[i] + j]`` for ``j < count[i]``."""
    if not count.any():
        return
    out[_ranges(at, count)] = single_table[symbols[_ranges(src, count)]]


def _ranges(start: npt.NDArray[np.int64], count: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``[start[0], .., start[0] + count[0] - 1, start[1], ...]``: the ranges, joined."""
    total = int(count.sum())
    first = np.zeros(count.size, dtype=np.int64)
    np.cumsum(count[:-1], out=first[1:])
    out = np.arange(total, dtype=np.int64)
    out += np.repeat(start - first, count)
    return out


def _window_starts(starts: npt.NDArray[np.int64], n_win: npt.NDArray[np.int64],
                   win_first: npt.NDArray[np.int64], stride: int) -> npt.NDArray[np.int64]:
    """``(W,)`` start of every window: record start + j * stride."""
    p = np.arange(0, int(n_win.sum()) * stride, stride, dtype=np.int64)
    p += np.repeat(starts - win_first * stride, n_win)
    return p
