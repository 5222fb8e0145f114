"""Triton kernels for masked batch norm in training mode (imported only when Triton is).

Plain functions here; :func:`build` wraps them with ``triton.jit`` (or, under
``TRITON_INTERPRET=1``, with Triton's interpreter, which runs them on CPU tensors). The
launch logic is in :mod:`seqpad.nn._batchnorm_triton`.

Layout: ``x`` / ``y`` / ``dy`` / ``dx`` are contiguous ``(B, C, L)``, the mask a
contiguous ``(B, 1, L)`` bool tensor. ``row_bounds`` first reduces the mask to four int32
per row, ``(lo, hi, count, dense)``: the first and one-past-last real position, the number
of real positions, and whether every position in ``[lo, hi)`` is real (right padding is
the usual case). The other kernels then read a row only inside ``[lo, hi)`` (the padded
tail of a sequence is never read) and load the mask there only for rows that are not dense:
for dense rows the mask load is predicated off, so no memory is touched. Padding is
excluded by selection, never by multiplication, so ``nan`` / ``inf`` in padding cannot leak.

All arithmetic is float32 (inputs float32 / float16 / bfloat16). The forward statistics
are merged blockwise with Chan's parallel formula (block mean and centred sum of squares,
then ``(n, mean, M2)`` merges), so data far from zero keeps its variance; the partial
results of the ``NSPLIT`` programs of a channel are merged the same way by every reader.
"""

from __future__ import annotations

from types import SimpleNamespace

import triton
import triton.language as tl


def row_bounds(mask_ptr, bounds_ptr, L, BLOCK: tl.constexpr):
    """Grid ``(B,)``: ``bounds[b] = (lo, hi, count, dense)`` of mask row ``b``."""
    b = tl.program_id(0).to(tl.int64)
    row = mask_ptr + b * L
    offs0 = tl.arange(0, BLOCK)
    lo = tl.zeros([BLOCK], tl.int32) + L
    hi = tl.zeros([BLOCK], tl.int32)
    cnt = tl.zeros([BLOCK], tl.int32)
    for start in range(0, L, BLOCK):
        offs = start + offs0
        m = tl.load(row + offs, mask=offs < L, other=0) != 0
        cnt += m.to(tl.int32)
        lo = tl.minimum(lo, tl.where(m, offs, L))
        hi = tl.maximum(hi, tl.where(m, offs + 1, 0))
    n = tl.sum(cnt, axis=0)
    h = tl.max(hi, axis=0)
    lo_row = tl.minimum(tl.min(lo, axis=0), h)
    dense = ((h - lo_row) == n).to(tl.int32)
    tl.store(bounds_ptr + b * 4, lo_row)
    tl.store(bounds_ptr + b * 4 + 1, h)
    tl.store(bounds_ptr + b * 4 + 2, n)
    tl.store(bounds_ptr + b * 4 + 3, dense)


def fwd_stats(
    x_ptr, mask_ptr, bounds_ptr, part_ptr, B, C, L, ROWS_PER, NSPLIT,
    HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid ``(C, NSPLIT)``: ``(n, mean, M2)`` of channel c over rows of split s.

    ``part`` is ``(3, NSPLIT, C)`` float32.
    """
    c = tl.program_id(0)
    s = tl.program_id(1)
    b0 = s * ROWS_PER
    b1 = tl.minimum(b0 + ROWS_PER, B)
    offs0 = tl.arange(0, BLOCK)
    n = tl.zeros([], tl.float32)
    mean = tl.zeros([], tl.float32)
    m2 = tl.zeros([], tl.float32)
    for b in range(b0, b1):
        b64 = tl.cast(b, tl.int64)
        xrow = x_ptr + (b64 * C + c) * L
        if HAS_MASK:
            lo = tl.load(bounds_ptr + b64 * 4)
            hi = tl.load(bounds_ptr + b64 * 4 + 1)
            sparse = tl.load(bounds_ptr + b64 * 4 + 3) == 0
            mrow = mask_ptr + b64 * L
        else:
            lo = 0
            hi = L
        for start in range(lo, hi, BLOCK):
            offs = start + offs0
            valid = offs < hi
            if HAS_MASK:
                real = tl.load(mrow + offs, mask=valid & sparse, other=1) != 0
                valid = valid & real
            xv = tl.load(xrow + offs, mask=valid, other=0.0).to(tl.float32)
            nb = tl.sum(valid.to(tl.float32), axis=0)
            mb = tl.sum(xv, axis=0) / tl.maximum(nb, 1.0)
            d = tl.where(valid, xv - mb, 0.0)
            m2b = tl.sum(d * d, axis=0)
            n_new = n + nb
            delta = mb - mean
            r = nb / tl.maximum(n_new, 1.0)
            mean = mean + delta * r
            m2 = m2 + m2b + delta * delta * n * r
            n = n_new
    tl.store(part_ptr + s * C + c, n)
    tl.store(part_ptr + (NSPLIT + s) * C + c, mean)
    tl.store(part_ptr + (2 * NSPLIT + s) * C + c, m2)


def fwd_norm(
    x_ptr, mask_ptr, bounds_ptr, part_ptr, w_ptr, b_ptr, y_ptr, stats_ptr, C, L, NSPLIT, eps,
    HAS_MASK: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    NSPLIT_P2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid ``(B * C, cdiv(L, BLOCK))``: merge the partials, normalise one row block.

    Writes ``y`` (zero at padding) and, from the first block of row 0 of each channel,
    ``stats[:, c] = (mean, biased var, invstd, n)`` (``stats`` is ``(4, C)`` float32).
    """
    row = tl.program_id(0)
    blk = tl.program_id(1)
    b = row // C
    c = row % C
    k = tl.arange(0, NSPLIT_P2)
    km = k < NSPLIT
    nk = tl.load(part_ptr + k * C + c, mask=km, other=0.0)
    mk = tl.load(part_ptr + (NSPLIT + k) * C + c, mask=km, other=0.0)
    qk = tl.load(part_ptr + (2 * NSPLIT + k) * C + c, mask=km, other=0.0)
    n = tl.sum(nk, axis=0)
    n1 = tl.maximum(n, 1.0)
    mean = tl.sum(nk * mk, axis=0) / n1
    dm = mk - mean
    var = (tl.sum(qk, axis=0) + tl.sum(nk * dm * dm, axis=0)) / n1
    invstd = 1.0 / tl.sqrt_rn(var + eps)
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + c).to(tl.float32)
    shift = tl.zeros([], tl.float32)
    if HAS_B:
        shift = tl.load(b_ptr + c).to(tl.float32)
    first = (b == 0) & (blk == 0)
    tl.store(stats_ptr + c, mean, mask=first)
    tl.store(stats_ptr + C + c, var, mask=first)
    tl.store(stats_ptr + 2 * C + c, invstd, mask=first)
    tl.store(stats_ptr + 3 * C + c, n, mask=first)

    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inb = offs < L
    if HAS_MASK:
        b64 = tl.cast(b, tl.int64)
        lo = tl.load(bounds_ptr + b64 * 4)
        hi = tl.load(bounds_ptr + b64 * 4 + 1)
        sparse = tl.load(bounds_ptr + b64 * 4 + 3) == 0
        valid = (offs >= lo) & (offs < hi)
        real = tl.load(mask_ptr + b64 * L + offs, mask=valid & sparse, other=1) != 0
        valid = valid & real
    else:
        valid = inb
    base = row.to(tl.int64) * L
    xv = tl.load(x_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
    yv = tl.where(valid, (xv - mean) * scale + shift, 0.0)
    tl.store(y_ptr + base + offs, yv.to(y_ptr.dtype.element_ty), mask=inb)


def running_update(
    stats_ptr, rm_ptr, rv_ptr, nbt_ptr, C, momentum,
    CUMULATIVE: tl.constexpr, HAS_NBT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid ``(1,)``: running statistics update from ``stats`` (as ``Tensor.lerp_``).

    Skipped (``num_batches_tracked`` included) when the batch has no real position.
    """
    n = tl.load(stats_ptr + 3 * C)
    nonempty = n > 0
    if HAS_NBT:
        nbt = tl.load(nbt_ptr) + nonempty.to(tl.int64)
        tl.store(nbt_ptr, nbt)
    w = 1.0 / nbt.to(tl.float32) if CUMULATIVE else tl.zeros([], tl.float32) + momentum
    corr = n / tl.maximum(n - 1.0, 1.0)
    limit = tl.where(nonempty, C, 0)  # an empty batch updates nothing
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        ok = cs < limit
        mean = tl.load(stats_ptr + cs, mask=ok, other=0.0)
        var = tl.load(stats_ptr + C + cs, mask=ok, other=0.0) * corr
        # The targets are rounded to the buffers' dtype first, as lerp_ gets them.
        mean = mean.to(rm_ptr.dtype.element_ty).to(tl.float32)
        var = var.to(rv_ptr.dtype.element_ty).to(tl.float32)
        rm = tl.load(rm_ptr + cs, mask=ok, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + cs, mask=ok, other=0.0).to(tl.float32)
        # torch.lerp's formula: start + w * (end - start), or end - (end - start) * (1 - w).
        rm = tl.where(w < 0.5, rm + w * (mean - rm), mean - (mean - rm) * (1.0 - w))
        rv = tl.where(w < 0.5, rv + w * (var - rv), var - (var - rv) * (1.0 - w))
        tl.store(rm_ptr + cs, rm.to(rm_ptr.dtype.element_ty), mask=ok)
        tl.store(rv_ptr + cs, rv.to(rv_ptr.dtype.element_ty), mask=ok)


def bwd_reduce(
    dy_ptr, x_ptr, mask_ptr, bounds_ptr, stats_ptr, part_ptr, B, C, L, ROWS_PER, NSPLIT,
    HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid ``(C, NSPLIT)``: ``sum(dy)`` and ``sum(dy * (x - mean))`` over real positions.

    ``part`` is ``(2, NSPLIT, C)`` float32.
    """
    c = tl.program_id(0)
    s = tl.program_id(1)
    b0 = s * ROWS_PER
    b1 = tl.minimum(b0 + ROWS_PER, B)
    mean = tl.load(stats_ptr + c)
    offs0 = tl.arange(0, BLOCK)
    acc_g = tl.zeros([BLOCK], tl.float32)
    acc_gx = tl.zeros([BLOCK], tl.float32)
    for b in range(b0, b1):
        b64 = tl.cast(b, tl.int64)
        base = (b64 * C + c) * L
        if HAS_MASK:
            lo = tl.load(bounds_ptr + b64 * 4)
            hi = tl.load(bounds_ptr + b64 * 4 + 1)
            sparse = tl.load(bounds_ptr + b64 * 4 + 3) == 0
            mrow = mask_ptr + b64 * L
        else:
            lo = 0
            hi = L
        for start in range(lo, hi, BLOCK):
            offs = start + offs0
            valid = offs < hi
            if HAS_MASK:
                real = tl.load(mrow + offs, mask=valid & sparse, other=1) != 0
                valid = valid & real
            g = tl.load(dy_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
            acc_g += g
            acc_gx += tl.where(valid, g * (xv - mean), 0.0)
    tl.store(part_ptr + s * C + c, tl.sum(acc_g, axis=0))
    tl.store(part_ptr + (NSPLIT + s) * C + c, tl.sum(acc_gx, axis=0))


def bwd_dx(
    dy_ptr, x_ptr, mask_ptr, bounds_ptr, stats_ptr, w_ptr, part_ptr, dx_ptr, grads_ptr,
    C, L, NSPLIT,
    HAS_MASK: tl.constexpr, HAS_W: tl.constexpr, NSPLIT_P2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid ``(B * C, cdiv(L, BLOCK))``: input gradient of one row block (zero at padding).

    The first block of row 0 of each channel writes ``grads[:, c] = (dweight, dbias)``.
    """
    row = tl.program_id(0)
    blk = tl.program_id(1)
    b = row // C
    c = row % C
    k = tl.arange(0, NSPLIT_P2)
    km = k < NSPLIT
    sdy = tl.sum(tl.load(part_ptr + k * C + c, mask=km, other=0.0), axis=0)
    sgx = tl.sum(tl.load(part_ptr + (NSPLIT + k) * C + c, mask=km, other=0.0), axis=0)
    mean = tl.load(stats_ptr + c)
    invstd = tl.load(stats_ptr + 2 * C + c)
    n1 = tl.maximum(tl.load(stats_ptr + 3 * C + c), 1.0)
    k1 = invstd
    if HAS_W:
        k1 = k1 * tl.load(w_ptr + c).to(tl.float32)
    k2 = -k1 * invstd * invstd * sgx / n1
    k3 = -k1 * sdy / n1
    first = (b == 0) & (blk == 0)
    tl.store(grads_ptr + c, sgx * invstd, mask=first)
    tl.store(grads_ptr + C + c, sdy, mask=first)

    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inb = offs < L
    if HAS_MASK:
        b64 = tl.cast(b, tl.int64)
        lo = tl.load(bounds_ptr + b64 * 4)
        hi = tl.load(bounds_ptr + b64 * 4 + 1)
        sparse = tl.load(bounds_ptr + b64 * 4 + 3) == 0
        valid = (offs >= lo) & (offs < hi)
        real = tl.load(mask_ptr + b64 * L + offs, mask=valid & sparse, other=1) != 0
        valid = valid & real
    else:
        valid = inb
    base = row.to(tl.int64) * L
    g = tl.load(dy_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
    xv = tl.load(x_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
    dxv = tl.where(valid, k1 * g + k2 * (xv - mean) + k3, 0.0)
    tl.store(dx_ptr + base + offs, dxv.to(dx_ptr.dtype.element_ty), mask=inb)


_NAMES = ("row_bounds", "fwd_stats", "fwd_norm", "running_update", "bwd_reduce", "bwd_dx")


def build(interpret: bool) -> SimpleNamespace:
    """The kernels, compiled by ``triton.jit`` or run by Triton's interpreter (CPU)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        wrap = InterpretedFunction
    else:
        wrap = triton.jit
    return SimpleNamespace(**{name: wrap(globals()[name]) for name in _NAMES})
