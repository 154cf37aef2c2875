"""Optional single-pass CPU kernel for :func:`gradtune.grad_norms` (needs ``numba``).

The torch path reads the features twice (``W @ h.T``, then ``||h||``). This kernel
reads each row of ``h`` once and, while a segment of the row sits in L1, computes
its contribution to the row's C logits and to ``||h||^2`` together. It returns the
class-major logits (C, N) and the squared norms (N,) in the input dtype;
``grad_norms`` then applies the same stable residual (``_residual_t``) as the torch
path, on (C, N) numbers instead of (N, d).

Numerics
--------
* Each row is cut into segments of ``_SEGMENT`` (512) elements. Within a segment the
  dot products and the sum of squares accumulate in the input dtype, in 16-32 SIMD
  partial sums (``fastmath={"reassoc", "contract"}``: FMA, reordered sums); the
  segment sums are added in float64 and the total rounded once to the input dtype.
  So each fp32 rounding error is relative to a sum of ~16 products: the logits are as
  accurate as an fp32 GEMM's (~1e-6 relative to ``sum |w_k h_k|``) whatever d, and
  float64 input stays float64 throughout.
  Accumulating in float64 throughout was measured: it costs ~1.5-2x the SIMD
  instructions (4 lanes instead of 8, plus a conversion per element).
* Only ``reassoc`` and ``contract`` are enabled: no ``nnan``/``ninf``/``afn``, so IEEE
  NaN/inf semantics hold and a non-finite feature gives a non-finite norm
  (``grad_norms`` relies on that to report bad rows).
* The residual is not computed here: numba's scalar ``exp`` (~20-35 ns) made it a
  fifth of the kernel time, whereas torch's vectorized softmax over (C, N) is cheap.

Compilation
-----------
Importing this module imports ``numba`` (~0.5 s), so ``grad_norms`` imports it only
when it is about to use it. The kernel is compiled on first use, once per input
dtype (float32, float64; ~10 s each on 2 cores), and cached on disk (``cache=True``: in
``__pycache__`` next to this file, or numba's user cache dir when that is read-only,
or ``NUMBA_CACHE_DIR``), so later processes only load it (~0.8 s, plus ~0.45 s to
import numba).

Threads: the kernel uses ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)``
threads, so ``torch.set_num_threads`` limits it too. Calls are serialized by a
lock because numba's fallback "workqueue" threading layer aborts on concurrent
parallel launches. In a process forked after the kernel ran with numba's GNU OpenMP
layer (which numba would abort), a single-threaded build of the kernel runs instead.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch

__all__ = ["available", "fused_logits"]

_ROWS_PER_BLOCK = 64  # rows per parallel task: amortizes the O(C) scratch allocation
_SEGMENT = 512  # row elements accumulated in the input dtype before adding into float64
_lock = threading.Lock()

try:  # numba is optional: ``pip install 'gradtune[fast]'``
    import numba
    from numba import njit, prange
except Exception:  # not installed, or a broken install (e.g. a numba/numpy version mismatch)
    numba = None


def available() -> bool:
    """Whether the fused kernel can run here (``numba`` is installed and imports)."""
    return numba is not None


if numba is not None:
    # The kernel is defined at module level (not in a closure) so that numba's disk
    # cache recognizes it across processes.
    _FM = {"reassoc", "contract"}  # SIMD partial sums; no nnan/ninf/afn: IEEE semantics kept

    # Partial dot products over one segment r (m,) of a row and the same columns of up to
    # 4 weight rows a, b, ... (m,), plus sum(r * r), accumulated in the input dtype (that
    # of the scalar ``zero``). With reassoc, LLVM keeps 32 SIMD partial sums per sum
    # (8 lanes x 4), so each adds ~16 products of a 512-long segment.
    @njit(fastmath=_FM, inline="always", nogil=True)
    def _seg4(r, a, b, c, e, zero):
        s = t0 = t1 = t2 = t3 = zero
        for k in range(r.shape[0]):
            x = r[k]
            s += x * x
            t0 += a[k] * x
            t1 += b[k] * x
            t2 += c[k] * x
            t3 += e[k] * x
        return s, t0, t1, t2, t3

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _seg3(r, a, b, c, zero):
        s = t0 = t1 = t2 = zero
        for k in range(r.shape[0]):
            x = r[k]
            s += x * x
            t0 += a[k] * x
            t1 += b[k] * x
            t2 += c[k] * x
        return s, t0, t1, t2

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _seg2(r, a, b, zero):
        s = t0 = t1 = zero
        for k in range(r.shape[0]):
            x = r[k]
            s += x * x
            t0 += a[k] * x
            t1 += b[k] * x
        return s, t0, t1

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _seg1(r, a, zero):
        s = t0 = zero
        for k in range(r.shape[0]):
            x = r[k]
            s += x * x
            t0 += a[k] * x
        return s, t0

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _row_logits(r, w, bias, z, zero):
        """z (C,) = w (C, d) @ r (d,) + bias, in float64 across segments; returns ||r||^2.

        Each _SEGMENT-long piece of r is read from memory once and swept once per 4
        classes while it sits in L1. The loops index from 0 over slices: a runtime
        start offset would stop LLVM from proving unit stride (it would emit gathers).
        """
        c = w.shape[0]
        d = r.shape[0]
        for j in range(c):
            z[j] = bias[j]
        ss = 0.0
        for k0 in range(0, d, _SEGMENT):
            k1 = min(k0 + _SEGMENT, d)
            rs = r[k0:k1]
            j = 0
            while j < c:
                m = c - j
                if m >= 4:
                    s, t0, t1, t2, t3 = _seg4(rs, w[j, k0:k1], w[j + 1, k0:k1], w[j + 2, k0:k1],
                                              w[j + 3, k0:k1], zero)
                    z[j] += t0
                    z[j + 1] += t1
                    z[j + 2] += t2
                    z[j + 3] += t3
                    step = 4
                elif m == 3:
                    s, t0, t1, t2 = _seg3(rs, w[j, k0:k1], w[j + 1, k0:k1], w[j + 2, k0:k1], zero)
                    z[j] += t0
                    z[j + 1] += t1
                    z[j + 2] += t2
                    step = 3
                elif m == 2:
                    s, t0, t1 = _seg2(rs, w[j, k0:k1], w[j + 1, k0:k1], zero)
                    z[j] += t0
                    z[j + 1] += t1
                    step = 2
                else:
                    s, t0 = _seg1(rs, w[j, k0:k1], zero)
                    z[j] += t0
                    step = 1
                if j == 0:
                    ss += s
                j += step
        return ss

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _rows(h, w, bias, zero, z_t, sq, z, start, stop):
        """Rows start..stop-1: z_t[:, i] = w @ h[i] + bias, sq[i] = ||h[i]||^2; z: (C,) scratch."""
        for i in range(start, stop):
            sq[i] = _row_logits(h[i], w, bias, z, zero)
            for j in range(w.shape[0]):
                z_t[j, i] = z[j]

    @njit(parallel=True, fastmath=_FM, cache=True, nogil=True)
    def _kernel(h, w, bias, zero, z_t, sq):
        """z_t[:, i] = w @ h[i] + bias and sq[i] = ||h[i]||^2, blocks of rows in parallel.

        h (N, d), w (C, d), z_t (C, N) and sq (N,) share a dtype (that of the scalar
        ``zero``); bias (C,) is float64. Sums run in float64 across segments, rounded
        to the dtype once, when stored.
        """
        n = h.shape[0]
        nblocks = (n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
        for blk in prange(nblocks):
            z = np.empty(w.shape[0], dtype=np.float64)
            _rows(h, w, bias, zero, z_t, sq, z, blk * _ROWS_PER_BLOCK, min(n, (blk + 1) * _ROWS_PER_BLOCK))

    @njit(fastmath=_FM, cache=True, nogil=True)
    def _kernel_serial(h, w, bias, zero, z_t, sq):
        """:func:`_kernel` on one thread (for forked children; see :func:`_parallel_unsafe`)."""
        z = np.empty(w.shape[0], dtype=np.float64)
        _rows(h, w, bias, zero, z_t, sq, z, 0, h.shape[0])


_in_forked_child = False


def _mark_forked_child() -> None:
    global _in_forked_child
    _in_forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_child)


def _parallel_unsafe() -> bool:
    """True in a forked child whose parent already ran numba's OpenMP thread pool.

    numba aborts such a child at its next parallel launch ("fork() called from a
    process already using GNU OpenMP, this is unsafe"): e.g. grad_norms in a
    parent, then in ``multiprocessing`` fork workers. There the serial kernel runs.
    """
    if not _in_forked_child:
        return False
    try:
        return numba.threading_layer() == "omp"
    except ValueError:  # no threading layer started before the fork: the child may start one
        return False


def fused_logits(h: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and squared row norms of ``h`` in one pass over it.

    Callers validate shapes and values; this only checks what the kernel needs.

    Parameters
    ----------
    h : CPU Tensor of shape (N, d), float32 or float64, C-contiguous
    weight : Tensor of shape (C, d); converted to the dtype of ``h``
    bias : Tensor of shape (C,) or None

    Returns
    -------
    z_t : Tensor of shape (C, N), dtype of ``h``
        ``weight @ h.T + bias[:, None]`` (class-major, as ``_residual_t`` takes it).
    sq : Tensor of shape (N,), dtype of ``h``
        ``||h_i||^2``.
    """
    if numba is None:
        raise RuntimeError("the fused kernel needs numba: pip install 'gradtune[fast]'")
    if h.device.type != "cpu" or h.dtype not in (torch.float32, torch.float64) or not h.is_contiguous():
        raise ValueError(f"fused_logits needs a contiguous float32/float64 CPU tensor, got {h.dtype} on {h.device}")
    n = h.shape[0]
    c = weight.shape[0]
    z_t = torch.empty(c, n, dtype=h.dtype)
    sq = torch.empty(n, dtype=h.dtype)
    if n == 0:
        return z_t, sq
    h_np = h.detach().resolve_neg().numpy()
    w_np = np.ascontiguousarray(weight.detach().cpu().to(h.dtype).resolve_neg().numpy())
    b_np: Any = (np.zeros(c) if bias is None
                 else np.ascontiguousarray(bias.detach().cpu().to(torch.float64).resolve_neg().numpy()))
    with _lock:
        if _parallel_unsafe():
            _kernel_serial(h_np, w_np, b_np, h_np.dtype.type(0), z_t.numpy(), sq.numpy())
        else:
            numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
            _kernel(h_np, w_np, b_np, h_np.dtype.type(0), z_t.numpy(), sq.numpy())
    return z_t, sq
