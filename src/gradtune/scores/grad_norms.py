"""Per-sample gradient norms of the cross-entropy loss w.r.t. the last linear layer.

For a last layer ``z = W h + b`` (``W`` of shape (C, d)) and softmax cross-entropy,
the gradient of one sample's loss w.r.t. ``W`` is the outer product
``(p - e_y) h^T`` and w.r.t. ``b`` it is ``p - e_y``. Its Frobenius norm is

    ||grad|| = ||p - e_y||_2 * sqrt(||h||^2 + 1)       (without bias: drop the +1)

so no per-sample gradient is ever materialized: the cost is one read of ``h``.

Numerics. ``||p - e_y||`` is computed in float64 (both backends) from
``e_j = exp(z_j - max z)``, with ``s = 1 - p_y`` (its largest component) taken as
``E_other / E_all``, the ratio of the sums of ``e_j`` over the other classes and over
all, never as ``1 - p_y`` by subtraction. The torch backend then scales before it
squares, ``s * sqrt(1 + sum_{j != y} (p_j / s)^2)``; the fused kernels use
``sqrt(E_other^2 + sum_{j != y} e_j^2) / E_all``, whose squares stay normal while
``E_other >= 1e-150``, and take the scaled form for the rare rows below that. For two
classes both use ``sqrt(2) * sigmoid(z_other - z_y)``. Nothing cancels when ``p_y`` is
near 1 and nothing underflows early, so the norm is exact (to a few float64 ulps,
before the final rounding) wherever it is a normal number of the output dtype.
The output has the dtype of the features: in float32, norms below the smallest
normal float32 (1.2e-38, logit gaps beyond ~85) are rounded to float32 subnormals,
with fewer significant digits, and those below 7e-46 (gaps beyond ~103) to 0.
Pass float64 features to keep them (exact down to 2.2e-308).

Backends. ``backend="torch"`` computes the logits relative to class 0,
``(W[j] - W[0]) @ h`` (BLAS), and ``||h||`` with torch (two passes over ``h`` with the
head given, the second from cache on the CPU, a block of rows at a time; one pass with
the logits given; any device).
``backend="fused"`` runs numba kernels (:mod:`gradtune.scores._fused`,
``pip install 'gradtune[fast]'``) that read each row once on the CPU: with the head
given they compute its logits and ``||h||^2`` together, with the logits given its
``||h||^2``; then the residual and the norm. They count bad labels and non-finite
norms on the way, so validation costs no extra pass. ``backend="auto"`` (default)
picks the fused kernels when numba is installed and the input suits them (CPU,
float32/float64, contiguous, N * d >= 2**20, and with the head given C <= 10). The
first fused call in a process pays for importing numba and loading the compiled
kernels from numba's disk cache (compiling them the first time ever); for a single
small call in a short-lived process, ``backend="torch"`` avoids that.

Shapes: N samples, d features, C classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from gradtune._validation import (
    GradTuneInputError,
    all_finite,
    check_choice,
    check_features,
    check_labels,
    check_positive_int,
)
from gradtune.scores._torch_backend import _relative_weight, _residual_t, _torch_norms

__all__ = ["grad_norms", "residual_norms"]

DEFAULT_CHUNK_ROWS = 262144
BACKENDS = ("auto", "torch", "fused")
# backend="auto" uses the head-given fused kernel only with at most this many classes (it
# sweeps each row segment once per 4 classes, and BLAS wins beyond ~10) ...
FUSED_MAX_CLASSES = 10
# ... and both fused kernels only from this many feature elements (N * d; per chunk when
# streaming): once loaded they are faster at every size, so the bound only keeps small
# calls from paying the first-call cost; it admits Waterbirds' held-out set (600 x 2048).
FUSED_MIN_ELEMENTS = 1 << 20


def residual_norms(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``||softmax(logits) - onehot(labels)||_2`` per row, exact wherever representable.

    Parameters
    ----------
    logits : Tensor of shape (N, C)
    labels : int64 Tensor of shape (N,)

    Returns
    -------
    Tensor of shape (N,), dtype of ``logits`` (computed in float64, see :func:`grad_norms`).
    """
    return _residual_t(logits.T, labels).to(logits.dtype)


def _auto_picks_fused(n_elements: int, n_classes: int) -> bool:
    """The size rule of ``backend="auto"`` (the input checks are the caller's)."""
    return n_classes <= FUSED_MAX_CLASSES and n_elements >= FUSED_MIN_ELEMENTS


_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _view(x: Any) -> np.ndarray | None:
    """A plain CPU tensor's memory as numpy (no copy), or None for anything else."""
    if type(x) not in _PLAIN_TENSORS:  # subclasses may override what .numpy() sees
        return None
    try:
        return x.numpy() if not x.requires_grad else x.detach().numpy()
    except (RuntimeError, TypeError):  # CUDA/meta tensors, lazy negation/conjugation
        return None


def _fused_fast_path(features: Any, logits: Any, labels: Any, weight: Any, bias: Any, include_bias: bool,
                     backend: str) -> torch.Tensor | None:
    """A fused kernel on inputs already in its form, else None.

    For C-contiguous CPU tensors (features float32/float64; logits, or weight and bias,
    of the same dtype; int64 labels) with valid shapes, the checks run on numpy views,
    far cheaper than torch attribute reads or no-op conversions. This path is kept to
    a few attribute reads on purpose: at the paper's smallest held-out set the kernel
    itself is brief, and after it has streamed the features every Python object the
    glue touches is a cache miss. The kernels count labels out of range,
    NaN/inf in the head and non-finite norms; any such count, and any input in another
    form, returns None, and the general path then validates (and names the problem)
    from scratch.
    """
    h = _view(features)
    y = _view(labels)
    if h is None or y is None or h.ndim != 2 or y.ndim != 1 or h.dtype not in _FAST_DTYPES or y.dtype != _INT64 \
            or y.shape[0] != h.shape[0] or not (h.flags.c_contiguous and y.flags.c_contiguous):
        return None
    if logits is not None:
        z = _view(logits)
        if (z is None or z.dtype != h.dtype or z.ndim != 2 or z.shape[0] != h.shape[0] or z.shape[1] < 2
                or not z.flags.c_contiguous or (backend == "auto" and h.size < FUSED_MIN_ELEMENTS)):
            return None
        w = b = None
    else:
        z = None
        w = _view(weight)
        b = None if bias is None else _view(bias)
        if w is None or (bias is not None and b is None):
            return None
        if (w.dtype != h.dtype or w.ndim != 2 or w.shape[1] != h.shape[1] or w.shape[0] < 2
                or not w.flags.c_contiguous
                or (b is not None and (b.dtype != h.dtype or b.shape != w.shape[:1] or not b.flags.c_contiguous))
                or (backend == "auto" and not _auto_picks_fused(h.size, w.shape[0]))):
            return None
    fused = _fused_module()
    if fused is None:
        return None
    out, bad_labels, non_finite, bad_head = fused.run(h, w, b, z, y, include_bias)
    return None if bad_labels or non_finite or bad_head else torch.from_numpy(out)


def _use_fused(backend: str, h: torch.Tensor, n_classes: int, have_logits: bool) -> bool:
    """Whether to run a fused kernel on ``h`` (N, d); raises if ``backend="fused"`` can't.

    ``backend="fused"`` copies a non-contiguous CPU ``h`` (one extra pass) and refuses
    other devices and dtypes; ``"auto"`` falls back to torch in all those cases. With
    the logits given, the class count does not matter (the kernel only reads them).
    """
    if backend == "torch":
        return False
    suitable = h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)
    if backend == "auto":
        if not (suitable and h.is_contiguous()
                and _auto_picks_fused(h.numel(), 2 if have_logits else n_classes)):
            return False
        return _fused_module() is not None
    if h.device.type != "cpu":
        raise GradTuneInputError(
            f"backend='fused' runs on the CPU only, but the features are on {h.device}; "
            "use backend='auto' or 'torch' (or move the features with .cpu())"
        )
    if not suitable:
        raise GradTuneInputError(
            f"backend='fused' supports float32 and float64 features, got {h.dtype}; "
            "convert them (e.g. .float()) or use backend='auto' or 'torch'"
        )
    if _fused_module() is None:
        raise GradTuneInputError(
            "backend='fused' needs numba, which is not installed (or fails to import): "
            "pip install 'gradtune[fast]', or use backend='auto' or 'torch'"
        )
    return True


_fused_cache: list[Any] = []


def _fused_module() -> Any:
    """The fused-kernel module if numba imports, else None. Imported on first use only."""
    if not _fused_cache:
        from gradtune.scores import _fused

        _fused_cache.append(_fused)
    return _fused_cache[0] if _fused_cache[0].available() else None


def _detached(t: torch.Tensor) -> torch.Tensor:
    # Detaching (only when needed) costs less than entering torch.no_grad() on every call.
    return t.detach() if t.requires_grad else t


def _on(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``t`` detached, on ``device`` in ``dtype`` (skipping the no-op ``.to`` call)."""
    t = _detached(t)
    return t if t.dtype == dtype and t.device == device else t.to(device=device, dtype=dtype)


def _check_head(weight: Any, bias: Any, d: int, device: torch.device, dtype: torch.dtype,
                check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """weight (C, d) and bias (C,), finite, on ``device`` in ``dtype``.

    Finiteness is checked here, not from the result: an infinite bias (e.g. -inf to
    rule a class out) can leave every norm finite. ``check_finite=False`` is for the
    fused kernel, which counts NaN/inf in the head itself.
    """
    w = _on(check_features(weight, "weight", check_finite=check_finite), device, dtype)
    if w.shape[1] != d:
        raise GradTuneInputError(
            f"weight has shape {tuple(w.shape)} but features have {d} columns; "
            "weight must be (n_classes, n_features), as nn.Linear.weight"
        )
    if w.shape[0] < 2:
        raise GradTuneInputError(f"weight must have at least 2 rows (classes), got {w.shape[0]}")
    b = None
    if bias is not None:
        b = _on(check_features(bias, "bias", ndim=1, check_finite=check_finite), device, dtype)
        if b.shape[0] != w.shape[0]:
            raise GradTuneInputError(f"bias has {b.shape[0]} entries but weight has {w.shape[0]} rows")
    return w, b


def _check_head_finite(w: torch.Tensor, b: torch.Tensor | None) -> None:
    check_features(w, "weight")
    if b is not None:
        check_features(b, "bias", ndim=1)


def grad_norms(
    features: Any,
    logits: Any = None,
    labels: Any = None,
    *,
    weight: Any = None,
    bias: Any = None,
    include_bias: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    backend: str = "auto",
) -> torch.Tensor:
    """Exact per-sample L2 norm of the last-layer gradient of the cross-entropy loss.

    Parameters
    ----------
    features : array-like of shape (N, d)
        Inputs of the last linear layer (penultimate features). Kept on its device.
    logits : array-like of shape (N, C), optional
        The layer's outputs (converted to the dtype of ``features``). If omitted,
        ``weight`` (and ``bias``) compute them in the same pass over ``features``.
    labels : array-like of shape (N,)
        Integer class labels in ``0..C-1``.
    weight : array-like of shape (C, d), optional
        ``nn.Linear.weight`` of the last layer; required when ``logits`` is None.
    bias : array-like of shape (C,), optional
        ``nn.Linear.bias``; only used to compute logits.
    include_bias : bool, default=True
        Include the bias parameters in the gradient (the paper's ``theta_fc`` is the
        whole layer). With False, the norm is w.r.t. the weight only.
    chunk_rows : int, default=262144
        Rows per chunk; bounds temporary memory to O(chunk_rows * C).
    backend : {"auto", "torch", "fused"}, default="auto"
        ``"torch"``: row norms, after BLAS logits when the head is given (two passes
        over ``features``; any device). ``"fused"``: one pass over ``features`` on
        the CPU, for either entry point; needs ``numba`` (``pip install
        'gradtune[fast]'``); copies non-contiguous features first; raises
        :class:`GradTuneInputError` for non-CPU features or dtypes other than
        float32/float64. ``"auto"``: ``"fused"`` when numba is installed and the
        features are a contiguous float32/float64 CPU tensor with N * d >= 2**20
        (and C <= 10 with the head given), else ``"torch"``. With the head given in
        float32 the two agree to ~1e-5 relative (both round the logits at fp32 GEMM
        accuracy, in a different order); with the logits given, to float32 rounding.

    Returns
    -------
    Tensor of shape (N,)
        Norms, in the floating dtype of ``features``, on its device: exact wherever
        representable; in float32, norms below 1.2e-38 become subnormals or 0 (see
        the module notes; float64 features keep them).

    Examples
    --------
    >>> import torch
    >>> h = torch.tensor([[3.0, 4.0]]); z = torch.tensor([[0.0, 0.0]])
    >>> float(grad_norms(h, z, torch.tensor([0]), include_bias=False))  # sqrt(.5) * 5
    3.5355...
    """
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    if backend == "auto" or backend == "fused":
        out = _fused_fast_path(features, logits, labels, weight, bias, include_bias, backend)
        if out is not None:
            return out
    # Finiteness is checked on the (N,) result instead of the (N, d) input: a NaN/inf
    # anywhere in a row makes that row's norm non-finite, and this saves a full pass.
    h = _detached(check_features(features, "features", check_finite=False))
    n, d = h.shape
    if labels is None:
        raise GradTuneInputError("labels are required: pass the (N,) integer class labels")
    backend = check_choice(backend, "backend", BACKENDS)
    if logits is not None:
        z = _detached(check_features(logits, "logits", check_finite=False))
        if z.device != h.device:
            z = z.to(h.device)
        if z.shape[0] != n:
            raise GradTuneInputError(f"logits have {z.shape[0]} rows but features have {n}")
        if z.shape[1] < 2:
            raise GradTuneInputError(f"logits must have at least 2 columns (classes), got {z.shape[1]}")
        n_classes = z.shape[1]
        w = b = None
        if z.dtype != h.dtype:
            z = z.to(h.dtype)
    else:
        if weight is None:
            raise GradTuneInputError("pass either logits (N, C) or the last layer's weight (C, d)")
        w, b = _check_head(weight, bias, d, h.device, h.dtype, check_finite=False)
        n_classes = w.shape[0]
        z = None
    if _use_fused(backend, h, n_classes, z is not None):
        # The kernel counts NaN/inf in the head, labels out of range and non-finite norms
        # as it goes (it never indexes with a label): the checks cost nothing unless they fail.
        y = check_labels(labels, n=n, check_range=False)
        if z is not None:
            out, bad_labels, non_finite = _fused_module().fused_logit_norms(h.contiguous(), z, y, include_bias)
            bad_head = 0
        else:
            out, bad_labels, non_finite, bad_head = _fused_module().fused_norms(h.contiguous(), w, b, y,
                                                                                include_bias)
        if bad_head:
            _check_head_finite(w, b)  # raises, naming weight or bias
            # A finite head whose rows differ by more than the dtype holds (the kernel
            # works with W[j] - W[0]): the torch path below takes the logits as they are.
        else:
            if bad_labels:
                check_labels(y, n_classes)  # raises, naming the offending value
            if non_finite:
                _check_finite_result(out, h, z)
            return out
    y = check_labels(labels, n_classes, n=n)
    if y.device != h.device:
        y = y.to(h.device)
    wr = None if w is None else _relative_weight(w)
    out = _torch_norms(h, y, z, wr, b, include_bias, chunk_rows)
    # One synchronizing check for the head and the norms: a NaN/inf in weight or bias (an
    # infinite bias can leave every norm finite), in W[j] - W[0] (a NaN/inf in W shows
    # there) or in a norm makes this sum non-finite; so can a finite sum that overflows,
    # and only then are they checked apart.
    total = float(out.sum())  # each float() is one small reduction, fewer calls than a sum of sums
    if w is not None:
        total += float(wr.sum()) * 0.0 + (0.0 if b is None else float(b.sum()) * 0.0)
    if not math.isfinite(total):
        if w is not None:
            _check_head_finite(w, b)  # raises, naming weight or bias
            if not all_finite(wr):  # two finite rows differ by more than the dtype holds
                out = _torch_norms(h, y, z, w, b, include_bias, chunk_rows, relative=False)
        _check_finite_result(out, h, z)
    return out


def _check_finite_result(out: torch.Tensor, h: torch.Tensor, z: torch.Tensor | None, offset: int = 0) -> None:
    """Raise naming the rows whose norm is NaN/inf (from NaN/inf features or logits, or overflow)."""
    # One reduction instead of isfinite + all (a third of the call at N = 600): norms are
    # >= 0, so the sum is finite unless some norm is not, or the sum itself overflows.
    if all_finite(out):
        return
    bad = torch.nonzero(~torch.isfinite(out)).flatten()
    rows = bad[:5].tolist()
    what = "features" if not bool(torch.isfinite(h[bad]).all()) else (
        "logits" if z is not None and not bool(torch.isfinite(z[bad]).all()) else "features (too large: overflow)")
    raise GradTuneInputError(
        f"{what} contain NaN or infinite values in {bad.numel()} row(s), e.g. rows "
        f"{[r + offset for r in rows]}; clean or drop those rows first"
    )
