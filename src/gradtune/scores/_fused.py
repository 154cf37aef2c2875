"""Optional single-pass CPU kernels for :func:`gradtune.grad_norms` (needs ``numba``).

With the head given, the torch path reads the features twice (``W @ h.T``, then
``||h||``) and then runs about ten small tensor operations for the residual. The
head kernel reads each row of ``h`` once and, while a segment of the row sits in L1,
computes its contribution to the row's C logits and to ``||h||^2`` together; then,
still per row, the softmax residual and the norm. The logits kernel reads each row
once for ``||h||^2`` and takes the residual from the given logits. Both count labels
outside ``0..C-1`` and non-finite norms, so that :func:`gradtune.grad_norms`
validates both without another pass.

Numerics
--------
* Each row is cut into segments of ``_SEGMENT`` (512) elements. Within a segment the
  dot products and the sum of squares accumulate in the input dtype, in 16-32 SIMD
  partial sums (``fastmath={"reassoc", "contract"}``: FMA, reordered sums); the
  segment sums are added in float64. So each fp32 rounding error is relative to a
  sum of ~16 products: the logits are as accurate as an fp32 GEMM's (~1e-6 relative
  to ``sum |w_k h_k|``) whatever d, and float64 input stays float64 throughout.
  (Accumulating in float64 throughout would halve the SIMD lanes.)
* The residual ``||p - e_y||`` is computed in float64 from the float64 logits, scaled
  by its largest component ``1 - p_y`` before anything is squared (see
  :func:`_residual`), so it neither cancels when ``p_y`` is near 1 nor underflows
  before the norm does. The norm is rounded to the input dtype once, when stored.
* With the logits given (:func:`fused_logit_norms_np`), each row of ``h`` is read
  once for ``||h||^2`` and the residual comes from that row's logits.
* Only ``reassoc`` and ``contract`` are enabled: no ``nnan``/``ninf``/``afn``, so IEEE
  NaN/inf semantics hold and a non-finite feature, weight or bias gives a non-finite
  norm, which the kernel counts.

Compilation
-----------
Importing this module imports ``numba``, so ``grad_norms`` imports it only when it
is about to use it. The kernels are compiled on first use, once per input dtype, and
cached on disk (``cache=True``: in ``__pycache__`` next to this file, or numba's user
cache dir when that is read-only, or ``NUMBA_CACHE_DIR``), so later processes only
load them.

Threads: the kernel uses ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)``
threads, so ``torch.set_num_threads`` limits it too. Calls are serialized by a
lock because numba's fallback "workqueue" threading layer aborts on concurrent
parallel launches. In a process forked after the kernel ran with numba's GNU OpenMP
layer (which numba would abort), a single-threaded build of the kernel runs instead.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import torch

__all__ = ["available", "fused_logit_norms", "fused_logit_norms_np", "fused_norms", "fused_norms_np"]

_ROWS_PER_BLOCK = 64  # rows per parallel task: amortizes the O(C) scratch allocation
_SEGMENT = 512  # row elements accumulated in the input dtype before adding into float64
_lock = threading.Lock()
_SQRT2 = math.sqrt(2.0)

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
    def _row_sq(r, zero):
        """||r||^2 of one row r (d,): segment sums in the input dtype, added in float64."""
        d = r.shape[0]
        ss = 0.0
        for k0 in range(0, d, _SEGMENT):
            rs = r[k0:min(k0 + _SEGMENT, d)]
            s = zero
            for k in range(rs.shape[0]):
                s += rs[k] * rs[k]
            ss += s
        return ss

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
    def _residual(z, y, e):
        """||softmax(z) - onehot(y)||_2 for one row's float64 logits z (C,); e: (C,) scratch.

        With ``s = 1 - p_y`` (the largest component of ``p - e_y`` in magnitude) the norm
        is ``s * sqrt(1 + sum_{j != y} (p_j / s)^2)``: no component is squared before
        it is scaled by ``s``, so nothing underflows where the norm itself is a normal
        float64. ``s`` is ``E_other / E_all`` with ``E = sum exp(z_j - max z)`` over the
        other classes and over all, so it does not cancel when ``p_y`` is near 1. ``y``
        is only compared with class indices, never used as one, so an out-of-range
        label cannot touch memory outside ``e``. NaN/+inf logits give NaN.
        """
        c = z.shape[0]
        if c == 2 and (y == 0 or y == 1):
            # Two classes: ||p - e_y|| = sqrt(2) * p_other, p_other = sigmoid(z_other - z_y),
            # written so that exp never overflows and the tiny end keeps its digits.
            t = z[1 - y] - z[y]
            if not math.isfinite(z[0] + z[1]):
                return math.nan
            if t < 0.0:
                u = math.exp(t)
                return _SQRT2 * u / (1.0 + u)
            return _SQRT2 / (1.0 + math.exp(-t))
        jm = 0
        for j in range(1, c):
            if z[j] > z[jm]:
                jm = j
        m = z[jm]
        e_all = 0.0
        e_other = 0.0
        for j in range(c):
            e[j] = math.exp(z[j] - m)  # NaN for every j when the largest logit is inf
            e_all += e[j]
            if j != y:
                e_other += e[j]
        if e_other == 0.0:  # the other classes' exp underflowed: the norm is below 1e-308
            return 0.0 if e_all == e_all else math.nan
        inv = 1.0 / e_other
        q2 = 0.0
        for j in range(c):
            if j != y:
                q = e[j] * inv
                q2 += q * q
        return e_other / e_all * math.sqrt(1.0 + q2)

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _head_bad(w, bias):
        """1 if w or bias holds a NaN/inf, else 0.

        Sums ``x * 0.0``: 0 for finite x, NaN otherwise (without the nnan/ninf fastmath
        flags LLVM may not fold it away), so the loop stays vectorized.
        """
        check = 0.0
        for j in range(w.shape[0]):
            check += np.float64(bias[j]) * 0.0
            for k in range(w.shape[1]):
                check += np.float64(w[j, k]) * 0.0
        return 0 if check == 0.0 else 1

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _rows(h, w, bias, y, extra, zero, out, z, e, start, stop):
        """Rows start..stop-1: out[i] = ||p_i - e_y_i|| * sqrt(||h_i||^2 + extra); z, e: (C,) scratch.

        Returns (labels outside 0..C-1, non-finite norms) among these rows.
        (Logits relative to class 0, ``(w_j - w_0) @ h``, would save a dot product per row
        but round ``w_j - w_0`` to float32, doubling the error bound of the differences.)
        """
        c = w.shape[0]
        bad_labels = 0
        non_finite = 0
        for i in range(start, stop):
            sq = _row_logits(h[i], w, bias, z, zero)
            yi = y[i]
            if yi < 0 or yi >= c:
                bad_labels += 1
            r = _residual(z, yi, e) * math.sqrt(sq + extra)
            out[i] = r
            if not math.isfinite(out[i]):  # as stored: float32 can overflow where float64 did not
                non_finite += 1
        return bad_labels, non_finite

    @njit(parallel=True, fastmath=_FM, cache=True, nogil=True)
    def _kernel(h, w, bias, y, extra, zero, out):
        """out[i] = ||softmax(w @ h[i] + bias) - onehot(y[i])|| * sqrt(||h[i]||^2 + extra).

        h (N, d), w (C, d), bias (C,) and out (N,) share a dtype (that of the scalar
        ``zero``); y (N,) is int64. The logits, the residual and the norm are float64
        per row, rounded to the dtype once, when stored. Blocks of rows run in
        parallel. Returns (number of labels outside 0..C-1, number of non-finite
        norms, 1 if w or bias holds a NaN/inf else 0), so that the caller validates
        all three without another pass.
        """
        n = h.shape[0]
        nblocks = (n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
        bad_labels = 0
        non_finite = 0
        bad_head = _head_bad(w, bias)
        for blk in prange(nblocks):
            z = np.empty(w.shape[0], dtype=np.float64)
            e = np.empty(w.shape[0], dtype=np.float64)
            bl, nf = _rows(h, w, bias, y, extra, zero, out, z, e, blk * _ROWS_PER_BLOCK,
                           min(n, (blk + 1) * _ROWS_PER_BLOCK))
            bad_labels += bl
            non_finite += nf
        return bad_labels, non_finite, bad_head

    @njit(fastmath=_FM, cache=True, nogil=True)
    def _kernel_serial(h, w, bias, y, extra, zero, out):
        """:func:`_kernel` on one thread (for forked children; see :func:`_parallel_unsafe`)."""
        z = np.empty(w.shape[0], dtype=np.float64)
        e = np.empty(w.shape[0], dtype=np.float64)
        bad_labels, non_finite = _rows(h, w, bias, y, extra, zero, out, z, e, 0, h.shape[0])
        return bad_labels, non_finite, _head_bad(w, bias)

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _rows_logits(h, logits, y, extra, zero, out, z, e, start, stop):
        """:func:`_rows` with the logits given: out[i] = ||p_i - e_y_i|| * sqrt(||h_i||^2 + extra)."""
        c = logits.shape[1]
        bad_labels = 0
        non_finite = 0
        for i in range(start, stop):
            sq = _row_sq(h[i], zero)
            for j in range(c):
                z[j] = logits[i, j]
            yi = y[i]
            if yi < 0 or yi >= c:
                bad_labels += 1
            out[i] = _residual(z, yi, e) * math.sqrt(sq + extra)
            if not math.isfinite(out[i]):
                non_finite += 1
        return bad_labels, non_finite

    @njit(parallel=True, fastmath=_FM, cache=True, nogil=True)
    def _kernel_logits(h, logits, y, extra, zero, out):
        """out[i] = ||softmax(logits[i]) - onehot(y[i])|| * sqrt(||h[i]||^2 + extra).

        h (N, d), logits (N, C) and out (N,) share a dtype (that of ``zero``); y (N,)
        is int64. One pass over h; returns (labels outside 0..C-1, non-finite norms).
        """
        n = h.shape[0]
        nblocks = (n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
        bad_labels = 0
        non_finite = 0
        for blk in prange(nblocks):
            z = np.empty(logits.shape[1], dtype=np.float64)
            e = np.empty(logits.shape[1], dtype=np.float64)
            bl, nf = _rows_logits(h, logits, y, extra, zero, out, z, e, blk * _ROWS_PER_BLOCK,
                                  min(n, (blk + 1) * _ROWS_PER_BLOCK))
            bad_labels += bl
            non_finite += nf
        return bad_labels, non_finite

    @njit(fastmath=_FM, cache=True, nogil=True)
    def _kernel_logits_serial(h, logits, y, extra, zero, out):
        """:func:`_kernel_logits` on one thread (for forked children)."""
        z = np.empty(logits.shape[1], dtype=np.float64)
        e = np.empty(logits.shape[1], dtype=np.float64)
        return _rows_logits(h, logits, y, extra, zero, out, z, e, 0, h.shape[0])


_in_forked_child = False


def _mark_forked_child() -> None:
    global _in_forked_child
    _in_forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_child)


def _parallel_unsafe() -> bool:
    """True in a forked child whose parent already ran numba's OpenMP thread pool: numba
    aborts such a child at its next parallel launch ("fork() called from a process
    already using GNU OpenMP"), e.g. in ``multiprocessing`` fork workers. There the
    serial kernels run."""
    if not _in_forked_child:
        return False
    try:
        return numba.threading_layer() == "omp"
    except ValueError:  # no threading layer started before the fork: the child may start one
        return False


# numba.set_num_threads is per calling thread and not free, so each thread remembers its last value.
_thread_state = threading.local()
_NP_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _np(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A tensor as a C-contiguous CPU numpy array of ``dtype``, sharing memory when it can."""
    try:
        a = t.numpy()  # raises for CUDA tensors, ones requiring grad, or with a lazy negation
    except (RuntimeError, TypeError):
        a = t.detach().cpu().resolve_neg().numpy()
    return np.ascontiguousarray(a, dtype=dtype)


def fused_norms(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, include_bias: bool) -> tuple[torch.Tensor, int, int, int]:
    """Per-sample last-layer gradient norms in one pass over ``h``.

    Callers validate shapes; the kernel counts bad labels (it never indexes memory with
    one) and NaN/inf in the head and the norms, for the caller to report.

    Parameters
    ----------
    h : CPU Tensor of shape (N, d), float32 or float64 (copied if not C-contiguous)
    weight : Tensor of shape (C, d), C >= 2; converted to the dtype of ``h``
    bias : Tensor of shape (C,) or None; converted to the dtype of ``h``
    labels : integer Tensor of shape (N,)
    include_bias : bool
        Add 1 to ``||h||^2`` (the bias's share of the gradient).

    Returns
    -------
    norms : Tensor of shape (N,), dtype of ``h``
        ``||softmax(weight @ h_i + bias) - e_{y_i}|| * sqrt(||h_i||^2 + include_bias)``.
    bad_labels : int
        How many labels lie outside ``0..C-1`` (their norms are meaningless).
    non_finite : int
        How many norms are NaN or infinite.
    bad_head : int
        1 if ``weight`` or ``bias`` holds a NaN or infinity (the norms are then
        meaningless), else 0.
    """
    if numba is None:
        raise RuntimeError("the fused kernel needs numba: pip install 'gradtune[fast]'")
    if h.dtype not in _NP_DTYPES or h.device.type != "cpu":
        raise ValueError(f"fused_norms needs float32/float64 CPU features, got {h.dtype} on {h.device}")
    h_np = _np(h, _NP_DTYPES[h.dtype])
    dt = h_np.dtype
    b_np = None if bias is None else _np(bias, dt)
    out, bad_labels, non_finite, bad_head = fused_norms_np(h_np, _np(weight, dt), b_np,
                                                           _np(labels, np.dtype(np.int64)), include_bias)
    return torch.from_numpy(out), bad_labels, non_finite, bad_head


def fused_logit_norms(h: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                      include_bias: bool) -> tuple[torch.Tensor, int, int]:
    """:func:`fused_logit_norms_np` on CPU tensors (``h`` float32/float64; ``logits`` are
    converted to its dtype; each is copied only if not C-contiguous)."""
    if h.dtype not in _NP_DTYPES or h.device.type != "cpu":
        raise ValueError(f"fused_logit_norms needs float32/float64 CPU features, got {h.dtype} on {h.device}")
    h_np = _np(h, _NP_DTYPES[h.dtype])
    out, bad_labels, non_finite = fused_logit_norms_np(h_np, _np(logits, h_np.dtype),
                                                       _np(labels, np.dtype(np.int64)), include_bias)
    return torch.from_numpy(out), bad_labels, non_finite


def fused_norms_np(h: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, labels: np.ndarray,
                   include_bias: bool) -> tuple[np.ndarray, int, int, int]:
    """:func:`fused_norms` on numpy arrays already in the kernel's form: ``h`` (N, d)
    float32/float64, ``weight`` (C, d) and ``bias`` (C,) of the same dtype, ``labels``
    (N,) int64, all C-contiguous. Anything else raises ValueError (the kernel reads
    without bounds checks)."""
    if numba is None:
        raise RuntimeError("the fused kernel needs numba: pip install 'gradtune[fast]'")
    dt = h.dtype
    n = h.shape[0] if h.ndim == 2 else -1
    if bias is None:
        bias = np.zeros(weight.shape[0] if weight.ndim == 2 else 0, dtype=dt)
    if (n < 0 or dt not in _NP_DTYPES.values() or weight.dtype != dt or bias.dtype != dt
            or labels.dtype != np.int64 or weight.ndim != 2 or weight.shape[1] != h.shape[1]
            or weight.shape[0] < 2 or bias.shape != weight.shape[:1] or labels.shape != (n,)
            or not (h.flags.c_contiguous and weight.flags.c_contiguous and bias.flags.c_contiguous
                    and labels.flags.c_contiguous)):
        raise ValueError(
            "fused_norms needs C-contiguous features (N, d) float32/float64, weight (C >= 2, d) and bias (C,) of "
            f"their dtype, and int64 labels (N,); got {h.shape} {h.dtype}, {weight.shape} {weight.dtype}, "
            f"{bias.shape} {bias.dtype}, {labels.shape} {labels.dtype}"
        )
    out = np.empty(n, dtype=dt)  # n = 0 still runs the kernel, for its head check
    counts = _launch(_kernel, _kernel_serial, (h, weight, bias, labels, 1.0 if include_bias else 0.0, dt.type(0), out))
    return out, int(counts[0]), int(counts[1]), int(counts[2])


def fused_logit_norms_np(h: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                         include_bias: bool) -> tuple[np.ndarray, int, int]:
    """Per-sample gradient norms from given logits, in one pass over ``h``.

    ``h`` (N, d) float32/float64, ``logits`` (N, C >= 2) of its dtype, ``labels`` (N,)
    int64, all C-contiguous. Returns (norms (N,) in the dtype of ``h``, how many labels
    lie outside ``0..C-1``, how many norms are NaN or infinite: from NaN/inf features
    or logits).
    Anything else raises ValueError (the kernel reads without bounds checks).
    """
    if numba is None:
        raise RuntimeError("the fused kernel needs numba: pip install 'gradtune[fast]'")
    dt = h.dtype
    n = h.shape[0] if h.ndim == 2 else -1
    if (n < 0 or dt not in _NP_DTYPES.values() or logits.dtype != dt or logits.ndim != 2
            or logits.shape[0] != n or logits.shape[1] < 2 or labels.dtype != np.int64 or labels.shape != (n,)
            or not (h.flags.c_contiguous and logits.flags.c_contiguous and labels.flags.c_contiguous)):
        raise ValueError(
            "fused_logit_norms needs C-contiguous features (N, d) float32/float64, logits (N, C >= 2) of "
            f"their dtype and int64 labels (N,); got {h.shape} {h.dtype}, {logits.shape} {logits.dtype}, "
            f"{labels.shape} {labels.dtype}"
        )
    out = np.empty(n, dtype=dt)
    counts = _launch(_kernel_logits, _kernel_logits_serial,
                     (h, logits, labels, 1.0 if include_bias else 0.0, dt.type(0), out))
    return out, int(counts[0]), int(counts[1])


def _launch(parallel: object, serial: object, args: tuple) -> tuple:
    """Run a kernel under the lock, on torch's thread count (serial in an unsafe forked child)."""
    with _lock:
        if _parallel_unsafe():
            return serial(*args)  # type: ignore[operator]
        threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        if getattr(_thread_state, "threads", 0) != threads:
            numba.set_num_threads(threads)
            _thread_state.threads = threads
        return parallel(*args)  # type: ignore[operator]
