"""Fused CPU kernels for masked batch norm (the ``fused=True`` path on CPU).

Native ``nn.BatchNorm1d`` on CPU walks the input one channel at a time: a channel's
slice of a ``(B, C, L)`` tensor (``B * L`` values) stays in the core's L2 cache while
its mean and variance are taken, so the two-pass statistics cost one pass over memory;
a second pass then writes the output. The kernels here go one step further, per
channel and with the mask:

* forward: masked sum -> mean, masked sum of squared deviations -> variance (two
  passes, the second from cache), then the output written at once (zero at padding):
  **one pass over ``x`` plus the write of ``y``** (native: two passes plus the write);
* backward: ``sum(dy)`` and ``sum(dy * (x - mean))`` over real positions, then ``dx``
  written at once: one pass over ``x`` and ``dy`` plus the write of ``dx`` (as native).

Each row is only visited between its first and last real position, so the padded tail
of a sequence is never read. Sums are shifted (deviations from one real value of the
channel, then from the rounded mean, with the exact correction), taken at full vector
width in the compute type over chunks of 256 values, and the chunk totals added in
float64: statistics of data with mean 1e4 and spread 1e-2 stay within 1e-7 of float64.
Padding is excluded by selection, never by multiplication, so ``nan`` / ``inf`` in padding
cannot leak.

The C++ source is compiled once per machine with the system C++ compiler (``$CXX`` or
``g++``; the compiler ``torch.compile`` also needs on CPU) into a small shared library
without PyTorch headers (a second or two), cached per user (``~/.cache/seqpad/kernels``
or ``$SEQPAD_CACHE_DIR/kernels``), and called through :mod:`ctypes` on the tensors' data
pointers. Where no compiler works, :func:`load` warns once and returns None, and the
caller falls back to ``torch.compile``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <cmath>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kChunk = 256;  // values per compute-type partial sum

// Storage type S, elementwise compute type C.
template <typename S> struct Io;
template <> struct Io<float> {
  using C = float;
  static inline float ld(float v) { return v; }
  static inline float st(float v) { return v; }
};
template <> struct Io<double> {
  using C = double;
  static inline double ld(double v) { return v; }
  static inline double st(double v) { return v; }
};
template <> struct Io<uint16_t> {  // bfloat16
  using C = float;
  static inline float ld(uint16_t v) {
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static inline uint16_t st(float f) {  // round to nearest even, as PyTorch does
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
  }
};

struct Rows {  // first and one-past-last real position of each row, and whether every
              // position between them is real (right padding: the usual case)
  std::vector<int64_t> lo, hi;
  std::vector<bool> dense;
  int64_t count = 0;  // real positions in the whole batch
  Rows(const uint8_t* m, int64_t B, int64_t L) : lo(B), hi(B), dense(B) {
    for (int64_t b = 0; b < B; ++b) {
      const uint8_t* r = m + b * L;
      int64_t i = 0, j = L;
      while (i < L && !r[i]) ++i;
      while (j > i && !r[j - 1]) --j;
      lo[b] = i;
      hi[b] = j;
      int64_t real = 0;
      for (int64_t k = i; k < j; ++k) real += r[k] != 0;
      dense[b] = real == j - i;
      count += real;
    }
  }
};

// Dense rows skip the mask: the same loops without loading and testing it.
#define SEQPAD_REAL(expr) (Dense || mr[i] ? (expr) : Cc(0))

template <typename F>
void parallel_channels(int64_t C, int nthreads, F f) {
  if (nthreads <= 1 || C <= 1) {
    for (int64_t c = 0; c < C; ++c) f(c);
    return;
  }
  // Each thread takes a contiguous block of channels: neighbouring channels are
  // neighbouring rows in memory, so one thread streams through whole pages.
  const int nt = static_cast<int>(nthreads < C ? nthreads : C);
  auto block = [=](int t) {
    const int64_t c1 = C * (t + 1) / nt;
    for (int64_t c = C * t / nt; c < c1; ++c) f(c);
  };
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (int t = 1; t < nt; ++t) pool.emplace_back(block, t);
  block(0);
  for (auto& th : pool) th.join();
}

// One row's pieces of work, with the mask (Dense = false) or without it (every
// position in [i0, i1) real).
template <bool Dense, typename S, typename Cc>
inline Cc sum_dev(const S* xr, const uint8_t* mr, int64_t i0, int64_t i1, Cc x0) {
  Cc p = 0;
#pragma omp simd reduction(+ : p)
  for (int64_t i = i0; i < i1; ++i) p += SEQPAD_REAL(Io<S>::ld(xr[i]) - x0);
  return p;
}

template <bool Dense, typename S, typename Cc>
inline Cc sum_sq_dev(const S* xr, const uint8_t* mr, int64_t i0, int64_t i1, Cc mc) {
  Cc p = 0;
#pragma omp simd reduction(+ : p)
  for (int64_t i = i0; i < i1; ++i) {
    const Cc d = Io<S>::ld(xr[i]) - mc;
    p += SEQPAD_REAL(d * d);
  }
  return p;
}

template <bool Dense, typename S, typename Cc>
inline void normalize(const S* xr, S* yr, const uint8_t* mr, int64_t i0, int64_t i1, Cc mc,
                      Cc alpha, Cc beta) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const Cc v = (Io<S>::ld(xr[i]) - mc) * alpha + beta;
    yr[i] = Io<S>::st(SEQPAD_REAL(v));
  }
}

template <bool Dense, typename S, typename Cc>
inline void sums_dy(const S* gr, const S* xr, const uint8_t* mr, int64_t i0, int64_t i1,
                    Cc mc, Cc& a_out, Cc& d_out) {
  Cc a = 0, d = 0;
#pragma omp simd reduction(+ : a, d)
  for (int64_t i = i0; i < i1; ++i) {
    const Cc g = Io<S>::ld(gr[i]);
    const Cc t = Io<S>::ld(xr[i]) - mc;
    a += SEQPAD_REAL(g);
    d += SEQPAD_REAL(g * t);
  }
  a_out = a;
  d_out = d;
}

template <bool Dense, typename S, typename Cc>
inline void grad_input(const S* gr, const S* xr, S* dr, const uint8_t* mr, int64_t i0,
                       int64_t i1, Cc mc, Cc k1, Cc k2, Cc k3) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const Cc v = k1 * Io<S>::ld(gr[i]) + k2 * (Io<S>::ld(xr[i]) - mc) + k3;
    dr[i] = Io<S>::st(SEQPAD_REAL(v));
  }
}

template <typename S, typename P>
void forward(const S* x, const uint8_t* m, S* y, const P* w, const P* bias,
             P* mean_out, P* var_out, P* invstd_out,
             int64_t B, int64_t C, int64_t L, int64_t* count_out, double eps, int nthreads) {
  using Cc = typename Io<S>::C;
  const Rows rows(m, B, L);
  const int64_t count = rows.count;
  *count_out = count;
  const double n = count > 0 ? static_cast<double>(count) : 1.0;
  parallel_channels(C, nthreads, [&](int64_t c) {
    // Shifted sums: deviations from one real value x0 of the channel, so the partial
    // sums over chunks of at most kChunk values can use the compute type (full vector
    // width) without losing the mean of data far from zero; chunk totals in double.
    Cc x0 = 0;
    for (int64_t b = 0; b < B; ++b) {
      if (rows.lo[b] < rows.hi[b]) {
        x0 = Io<S>::ld(x[(b * C + c) * L + rows.lo[b]]);
        break;
      }
    }
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const S* xr = x + (b * C + c) * L;
      const uint8_t* mr = m + b * L;
      for (int64_t i0 = rows.lo[b]; i0 < rows.hi[b]; i0 += kChunk) {
        const int64_t i1 = i0 + kChunk < rows.hi[b] ? i0 + kChunk : rows.hi[b];
        s += static_cast<double>(rows.dense[b] ? sum_dev<true>(xr, mr, i0, i1, x0)
                                               : sum_dev<false>(xr, mr, i0, i1, x0));
      }
    }
    const double mean = count > 0 ? static_cast<double>(x0) + s / n : 0.0;
    const Cc meanc = static_cast<Cc>(mean);
    // Second pass (from cache) over deviations from the rounded mean meanc:
    // sum (x - meanc)^2 = M2 + n (mean - meanc)^2, corrected below.
    double m2 = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const S* xr = x + (b * C + c) * L;
      const uint8_t* mr = m + b * L;
      for (int64_t i0 = rows.lo[b]; i0 < rows.hi[b]; i0 += kChunk) {
        const int64_t i1 = i0 + kChunk < rows.hi[b] ? i0 + kChunk : rows.hi[b];
        m2 += static_cast<double>(rows.dense[b] ? sum_sq_dev<true>(xr, mr, i0, i1, meanc)
                                                : sum_sq_dev<false>(xr, mr, i0, i1, meanc));
      }
    }
    const double shift = mean - static_cast<double>(meanc);
    double var = count > 0 ? m2 / n - shift * shift : 0.0;
    if (var < 0) var = 0;
    const double invstd = 1.0 / std::sqrt(var + eps);
    const Cc alpha = static_cast<Cc>(invstd * (w ? static_cast<double>(w[c]) : 1.0));
    const Cc beta = bias ? static_cast<Cc>(bias[c]) : Cc(0);
    const S zero = Io<S>::st(Cc(0));
    for (int64_t b = 0; b < B; ++b) {
      const S* xr = x + (b * C + c) * L;
      S* yr = y + (b * C + c) * L;
      const uint8_t* mr = m + b * L;
      const int64_t lo = rows.lo[b], hi = rows.hi[b];
      for (int64_t i = 0; i < lo; ++i) yr[i] = zero;
      if (rows.dense[b])
        normalize<true>(xr, yr, mr, lo, hi, meanc, alpha, beta);
      else
        normalize<false>(xr, yr, mr, lo, hi, meanc, alpha, beta);
      for (int64_t i = hi; i < L; ++i) yr[i] = zero;
    }
    mean_out[c] = static_cast<P>(mean);
    var_out[c] = static_cast<P>(var);
    invstd_out[c] = static_cast<P>(invstd);
  });
}

template <typename S, typename P>
void backward(const S* dy, const S* x, const uint8_t* m, const P* w, const P* mean_in,
              const P* invstd_in, S* dx, P* grad_w, P* grad_b,
              int64_t B, int64_t C, int64_t L, int nthreads) {
  using Cc = typename Io<S>::C;
  const Rows rows(m, B, L);
  const int64_t count = rows.count;
  const double n = count > 0 ? static_cast<double>(count) : 1.0;
  parallel_channels(C, nthreads, [&](int64_t c) {
    const Cc meanc = static_cast<Cc>(mean_in[c]);
    double sdy = 0.0, sdx = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const S* xr = x + (b * C + c) * L;
      const S* gr = dy + (b * C + c) * L;
      const uint8_t* mr = m + b * L;
      for (int64_t i0 = rows.lo[b]; i0 < rows.hi[b]; i0 += kChunk) {
        const int64_t i1 = i0 + kChunk < rows.hi[b] ? i0 + kChunk : rows.hi[b];
        Cc a, d;
        if (rows.dense[b])
          sums_dy<true>(gr, xr, mr, i0, i1, meanc, a, d);
        else
          sums_dy<false>(gr, xr, mr, i0, i1, meanc, a, d);
        sdy += static_cast<double>(a);
        sdx += static_cast<double>(d);
      }
    }
    const double invstd = static_cast<double>(invstd_in[c]);
    const double k1d = invstd * (w ? static_cast<double>(w[c]) : 1.0);
    const Cc k1 = static_cast<Cc>(k1d);
    const Cc k2 = static_cast<Cc>(-k1d * invstd * invstd * sdx / n);
    const Cc k3 = static_cast<Cc>(-k1d * sdy / n);
    const S zero = Io<S>::st(Cc(0));
    for (int64_t b = 0; b < B; ++b) {
      const S* xr = x + (b * C + c) * L;
      const S* gr = dy + (b * C + c) * L;
      S* dr = dx + (b * C + c) * L;
      const uint8_t* mr = m + b * L;
      const int64_t lo = rows.lo[b], hi = rows.hi[b];
      for (int64_t i = 0; i < lo; ++i) dr[i] = zero;
      if (rows.dense[b])
        grad_input<true>(gr, xr, dr, mr, lo, hi, meanc, k1, k2, k3);
      else
        grad_input<false>(gr, xr, dr, mr, lo, hi, meanc, k1, k2, k3);
      for (int64_t i = hi; i < L; ++i) dr[i] = zero;
    }
    if (grad_w) grad_w[c] = static_cast<P>(sdx * invstd);
    if (grad_b) grad_b[c] = static_cast<P>(sdy);
  });
}

}  // namespace

#define SEQPAD_BN(NAME, S, P)                                                              \
  extern "C" void seqpad_bn_forward_##NAME(                                                \
      const void* x, const uint8_t* m, void* y, const void* w, const void* b, void* mean,  \
      void* var, void* invstd, int64_t B, int64_t C, int64_t L, int64_t* count, double eps,\
      int nthreads) {                                                                      \
    forward<S, P>(static_cast<const S*>(x), m, static_cast<S*>(y),                         \
                  static_cast<const P*>(w), static_cast<const P*>(b),                      \
                  static_cast<P*>(mean), static_cast<P*>(var), static_cast<P*>(invstd),    \
                  B, C, L, count, eps, nthreads);                                          \
  }                                                                                        \
  extern "C" void seqpad_bn_backward_##NAME(                                               \
      const void* dy, const void* x, const uint8_t* m, const void* w, const void* mean,    \
      const void* invstd, void* dx, void* gw, void* gb, int64_t B, int64_t C, int64_t L,   \
      int nthreads) {                                                                      \
    backward<S, P>(static_cast<const S*>(dy), static_cast<const S*>(x), m,                 \
                   static_cast<const P*>(w), static_cast<const P*>(mean),                  \
                   static_cast<const P*>(invstd), static_cast<S*>(dx),                     \
                   static_cast<P*>(gw), static_cast<P*>(gb), B, C, L, nthreads);           \
  }

SEQPAD_BN(float32, float, float)
SEQPAD_BN(float64, double, double)
SEQPAD_BN(bfloat16, uint16_t, float)
"""

# Storage dtype -> (symbol suffix, statistics dtype).
SUPPORTED: dict[torch.dtype, tuple[str, torch.dtype]] = {
    torch.float32: ("float32", torch.float32),
    torch.float64: ("float64", torch.float64),
    torch.bfloat16: ("bfloat16", torch.float32),
}

_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c++17", "-pthread"]
_lib: ctypes.CDLL | None = None
_failed = False
_lock = threading.Lock()


def _cache_dir() -> Path:
    """``$SEQPAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/seqpad`` (``~/.cache/seqpad``).

    A per-user directory, never a shared temporary one: a library planted there by
    another user would be loaded into this process.
    """
    env = os.environ.get("SEQPAD_CACHE_DIR")
    if env:
        return Path(env) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seqpad" / "kernels"


def _cpu_flags() -> str:
    """The CPU's model and feature flags (first core), for the cache key."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features") and key not in found:
                    found[key] = line.strip()
    except OSError:
        pass
    return "\n".join(found.values()) or platform.processor()


def _build() -> ctypes.CDLL:
    cxx = os.environ.get("CXX", "g++")
    # -march=native: the library is specific to this CPU model (and compiler, and source).
    key_text = "\n".join([_SOURCE, cxx, *_FLAGS, sys.platform, platform.machine(), _cpu_flags()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache = _cache_dir()
    so = cache / f"masked_bn_{key}.so"
    if not so.exists():
        cache.mkdir(parents=True, exist_ok=True)
        src = cache / f"masked_bn_{key}.cpp"
        src.write_text(_SOURCE)
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([cxx, *_FLAGS, str(src), "-o", str(tmp)], check=True, capture_output=True)
        os.replace(tmp, so)  # atomic: concurrent builders never load a partial file
    lib = ctypes.CDLL(str(so))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name, _ in SUPPORTED.values():
        fwd = getattr(lib, f"seqpad_bn_forward_{name}")
        fwd.argtypes = [ptr] * 8 + [i64] * 3 + [ptr, ctypes.c_double, ctypes.c_int]
        fwd.restype = None
        bwd = getattr(lib, f"seqpad_bn_backward_{name}")
        bwd.argtypes = [ptr] * 9 + [i64] * 3 + [ctypes.c_int]
        bwd.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where no C++ compiler works."""
    global _lib, _failed
    if _lib is None and not _failed:
        with _lock:
            if _lib is None and not _failed:
                try:
                    _lib = _build()
                except (OSError, subprocess.CalledProcessError) as err:
                    _failed = True
                    detail = getattr(err, "stderr", b"") or b""
                    warnings.warn(
                        "seqpad: could not build the fused CPU batch-norm kernel "
                        f"({err}; {detail.decode(errors='replace')[-500:]}); "
                        "fused=True falls back to torch.compile",
                        RuntimeWarning,
                        stacklevel=2,
                    )
    return _lib


def supports(x: Tensor) -> bool:
    """Whether the kernels handle ``x``: a CPU ``(B, C, L)`` tensor of a supported dtype."""
    return x.device.type == "cpu" and x.dtype in SUPPORTED and x.dim() == 3 and load() is not None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(
    x: Tensor, mask_u8: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean, var, invstd, count)`` for contiguous ``x (B, C, L)``, ``mask_u8 (B, 1, L)``.

    ``count`` (0-d int64) is the number of real positions, counted by the kernel.
    """
    lib = load()
    assert lib is not None
    name, pd = SUPPORTED[x.dtype]
    b, c, length = x.shape
    y = torch.empty_like(x)
    stats = torch.empty(3, c, dtype=pd)
    count = torch.empty((), dtype=torch.int64)
    w = None if weight is None else weight.detach().to(pd).contiguous()
    bb = None if bias is None else bias.detach().to(pd).contiguous()
    getattr(lib, f"seqpad_bn_forward_{name}")(
        x.data_ptr(), mask_u8.data_ptr(), y.data_ptr(), _ptr(w), _ptr(bb),
        stats[0].data_ptr(), stats[1].data_ptr(), stats[2].data_ptr(),
        b, c, length, count.data_ptr(), float(eps), torch.get_num_threads(),
    )
    return y, stats[0], stats[1], stats[2], count


def backward(
    dy: Tensor, x: Tensor, mask_u8: Tensor, weight: Tensor | None, mean: Tensor,
    invstd: Tensor, need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(dx, grad_weight, grad_bias)`` in ``x``'s dtype / the statistics dtype."""
    lib = load()
    assert lib is not None
    name, pd = SUPPORTED[x.dtype]
    b, c, length = x.shape
    dy = dy.to(x.dtype).contiguous()
    dx = torch.empty_like(x)
    grads = torch.empty(2, c, dtype=pd)
    w = None if weight is None else weight.detach().to(pd).contiguous()
    getattr(lib, f"seqpad_bn_backward_{name}")(
        dy.data_ptr(), x.data_ptr(), mask_u8.data_ptr(), _ptr(w), mean.data_ptr(),
        invstd.data_ptr(), dx.data_ptr(),
        grads[0].data_ptr() if need_weight else None, grads[1].data_ptr() if need_bias else None,
        b, c, length, torch.get_num_threads(),
    )
    return dx, grads[0] if need_weight else None, grads[1] if need_bias else None
