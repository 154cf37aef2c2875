"""Optional single-pass CPU kernels for :func:`gradtune.grad_norms` (needs ``numba``).

With the head given, the torch path reads the features twice (a BLAS product for the
logits, then ``||h||``; on the CPU the second read is from cache, a block of rows at a
time) and then runs about ten small tensor operations for the residual. The
kernels (:mod:`gradtune.scores._fused_kernels`) read each row of ``h`` once: with the
head given they compute its C logits and ``||h||^2`` together while a segment of the
row sits in L1, with the logits given only ``||h||^2``; then the softmax residual and
the norm for a block of rows at a time, on SIMD lanes. They count labels outside
``0..C-1`` and non-finite norms, so that :func:`gradtune.grad_norms` validates both
without another pass.

Numerics
--------
* Each row is cut into segments of 2048 elements (one segment for the paper's
  768- and 2048-wide features). Within a segment the dot products and the sum of
  squares accumulate in the input dtype, in 32-64 SIMD partial sums
  (``fastmath={"reassoc", "contract"}``: FMA, reordered sums), so each partial sum
  adds at most 32-64 products; the segment sums are added in float64. The logits are
  thus at least as accurate as an fp32 GEMM's, whose micro-kernels accumulate all d
  products of an output in one lane, whatever d; float64 input stays float64
  throughout. (Accumulating in float64 throughout would halve the SIMD lanes.)
  With the head given, the logits are taken relative to class 0 (softmax does not
  change): ``z_j - z_0 = (b_j - b_0) + (W_j - W_0) @ h``, with ``W_j - W_0`` rounded
  once to the input dtype, as IEEE subtraction does. That is one dot product fewer per
  row, and no cancellation between two large logits.
* The residual ``||p - e_y||`` is computed in float64 from the float64 logits, for a
  block of 64 rows at a time (see :mod:`gradtune.scores._fused_kernels`): for two
  classes ``sqrt(2) * sigmoid(z_other - z_y)``, else
  ``sqrt(E_other^2 + sum_{j != y} e_j^2) / E_all`` with ``e_j = exp(z_j - max z)``, so
  ``1 - p_y`` never cancels. ``exp`` is a polynomial evaluation accurate to ~1 ulp
  (:mod:`gradtune.scores._simd`). A block holding a row whose residual could leave
  the normal range of those squares (logit gaps beyond ~345, or a -inf logit) is
  redone with ``math.exp`` and the form scaled by ``1 - p_y`` before squaring. The
  norm is rounded to the input dtype once, when stored.
* Only ``reassoc`` and ``contract`` are enabled: no ``nnan``/``ninf``/``afn``, so IEEE
  NaN/inf semantics hold and a non-finite feature, weight or bias gives a non-finite
  norm, which the kernel counts.

Memory: rows are prefetched a few KB ahead when the features are larger than
``PREFETCH_MIN_BYTES`` (smaller ones sit in the caches already; there the extra
instructions only cost), except on AMD CPUs, where it was measured to slow the
stream down (see :mod:`gradtune.scores._simd`). There the kernels are compiled without
the prefetch: loops that held it behind a branch never taken were slower, and slower
still when numba loaded them from its disk cache (the README gives the figures).

Compilation
-----------
Importing this module imports ``numba``, so ``grad_norms`` imports it only when it
is about to use it. The kernels are compiled on first use, once per input dtype, and
cached on disk (``cache=True``: in ``__pycache__`` next to the kernels' module, or
numba's user cache dir when that is read-only, or ``NUMBA_CACHE_DIR``), so later
processes only load them.

Threads: the kernel uses ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)``
threads, so ``torch.set_num_threads`` limits it too. Calls are serialized by a
lock because numba's fallback "workqueue" threading layer aborts on concurrent
parallel launches. In a process forked after the kernel ran with numba's GNU OpenMP
layer (which numba would abort), a single-threaded build of the kernel runs instead.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

__all__ = ["available", "fused_logit_norms", "fused_logit_norms_np", "fused_norms", "fused_norms_np", "run"]

# Features larger than this are streamed with software prefetch, PREFETCH_BYTES ahead.
PREFETCH_MIN_BYTES = 16 << 20
PREFETCH_BYTES = 6144
_lock = threading.Lock()

try:  # numba is optional: ``pip install 'gradtune[fast]'``
    import numba

    from gradtune.scores import _fused_kernels as _k
    from gradtune.scores._simd import SOFTWARE_PREFETCH_PAYS
except Exception:  # not installed, or a broken install (e.g. a numba/numpy version mismatch)
    numba = None


def available() -> bool:
    """Whether the fused kernel can run here (``numba`` is installed and imports)."""
    return numba is not None


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


_NO_LOGITS = {np.dtype(np.float32): np.zeros((0, 0), np.float32), np.dtype(np.float64): np.zeros((0, 0))}
_NO_HEAD = {dt: (np.zeros((1, 1), dt), np.zeros(1, dt)) for dt in _NO_LOGITS}
_ZERO = {dt: dt.type(0) for dt in _NO_LOGITS}  # the kernels' accumulator type, as a scalar


def _checked(ok: bool, what: str, arrays: tuple) -> None:
    if not ok:
        got = ", ".join(f"{a.shape} {a.dtype}" for a in arrays)
        raise ValueError(f"{what}; got {got}")


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
    _checked(n >= 0 and dt in _NO_LOGITS and weight.dtype == dt and bias.dtype == dt and labels.dtype == np.int64
             and weight.ndim == 2 and weight.shape[1] == h.shape[1] and weight.shape[0] >= 2
             and bias.shape == weight.shape[:1] and labels.shape == (n,) and h.flags.c_contiguous
             and weight.flags.c_contiguous and bias.flags.c_contiguous and labels.flags.c_contiguous,
             "fused_norms needs C-contiguous features (N, d) float32/float64, weight (C >= 2, d) and bias (C,) "
             "of their dtype, and int64 labels (N,)", (h, weight, bias, labels))
    return run(h, weight, bias, None, labels, include_bias)


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
    _checked(n >= 0 and dt in _NO_LOGITS and logits.dtype == dt and logits.ndim == 2 and logits.shape[0] == n
             and logits.shape[1] >= 2 and labels.dtype == np.int64 and labels.shape == (n,)
             and h.flags.c_contiguous and logits.flags.c_contiguous and labels.flags.c_contiguous,
             "fused_logit_norms needs C-contiguous features (N, d) float32/float64, logits (N, C >= 2) of "
             "their dtype and int64 labels (N,)", (h, logits, labels))
    out, bad_labels, non_finite, _ = run(h, None, None, logits, labels, include_bias)
    return out, bad_labels, non_finite


def run(h: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, logits: np.ndarray | None,
        labels: np.ndarray, include_bias: bool) -> tuple[np.ndarray, int, int, int]:
    """Run the kernel on arrays already in its form (unchecked: see :func:`fused_norms_np`
    and :func:`fused_logit_norms_np` for the checks; ``w`` (and ``b``, which may then
    be None) are ignored when ``logits`` is given).

    Runs under the lock, on torch's thread count (serially in an unsafe forked child).
    Returns (norms (N,), bad labels, non-finite norms, 1 if the head holds a NaN/inf or
    two weight rows so large that their difference overflows).
    """
    dt = h.dtype
    if logits is None:  # the kernel takes the logits relative to class 0 (W[j] - W[0])
        logits = _NO_LOGITS[dt]
        if b is None:
            b = np.zeros(w.shape[0], dtype=dt)
    else:
        w, b = _NO_HEAD[dt]
    n = h.shape[0]
    row_bytes = h.shape[1] * dt.itemsize
    ahead = -(-PREFETCH_BYTES // row_bytes) if SOFTWARE_PREFETCH_PAYS and n * row_bytes > PREFETCH_MIN_BYTES else 0
    out = np.empty(n, dtype=dt)  # n = 0 still runs the kernel, for its head check
    zero = _ZERO[dt]
    with _lock:
        if _in_forked_child and _parallel_unsafe():
            counts = _k.kernel_serial(h, w, b, logits, labels, 1.0 if include_bias else 0.0, zero, out, ahead, 1)
        else:
            wanted = torch.get_num_threads()
            last = getattr(_threads_set, "last", None)
            if last is None or last[0] != wanted:
                last = (wanted, max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
                numba.set_num_threads(last[1])
                _threads_set.last = last
            counts = _k.kernel(h, w, b, logits, labels, 1.0 if include_bias else 0.0, zero, out, ahead, last[1])
    return out, counts[0], counts[1], counts[2]


# numba.set_num_threads is per calling thread and not free: per thread (a thread-local,
# so nothing outlives the thread), the torch thread count last seen and the count numba
# was given for it.
_threads_set = threading.local()
