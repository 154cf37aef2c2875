"""Gradient norms over features that do not fit in memory: :func:`grad_norms` chunk by chunk.

Shapes: N samples, d features, C classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from gradtune._validation import (
    GradTuneInputError,
    all_finite,
    as_float_tensor,
    check_choice,
    check_labels,
    check_positive_int,
)
from gradtune.scores._torch_backend import _norms_chunk, _relative_weight
from gradtune.scores.grad_norms import (
    BACKENDS,
    DEFAULT_CHUNK_ROWS,
    _check_finite_result,
    _check_head,
    _fused_module,
    _use_fused,
)

__all__ = ["grad_norms_streaming"]


def _iter_chunks(source: Any, chunk_rows: int) -> Iterator[Any]:
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source.ndim != 2:
            raise GradTuneInputError(f"features must be 2-dimensional (N, d), got shape {tuple(source.shape)}")
        for start in range(0, source.shape[0], chunk_rows):
            yield source[start:start + chunk_rows]
    else:
        yield from source


@torch.no_grad()
def grad_norms_streaming(
    chunks: Iterable[Any] | np.ndarray,
    labels: Any,
    *,
    weight: Any,
    bias: Any = None,
    include_bias: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> np.ndarray:
    """Gradient norms over features that do not fit in memory.

    Parameters
    ----------
    chunks : iterable of arrays (n_i, d), or an (N, d) array / ``np.memmap``
        Feature rows in order. A memory-mapped array is read ``chunk_rows`` rows
        at a time, so N is bounded by disk, not RAM.
    labels : array-like of shape (N,)
        Labels for all rows (small: 8 bytes per row).
    weight, bias : array-like of shapes (C, d) and (C,)
        The last layer, used to compute logits chunk by chunk.
    include_bias, chunk_rows
        As in :func:`grad_norms`.
    device : str or torch.device, default="cpu"
        Where each chunk is computed (e.g. ``"cuda"``).
    dtype : torch.dtype, default=torch.float32
        Compute dtype for each chunk.
    backend : {"auto", "torch", "fused"}, default="auto"
        As in :func:`grad_norms`, decided per chunk (``"auto"`` counts each chunk's
        N * d).

    Returns
    -------
    np.ndarray of shape (N,), float32 or float64 matching ``dtype``.
    """
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    backend = check_choice(backend, "backend", BACKENDS)
    y_all = check_labels(labels)
    n = y_all.shape[0]
    device = torch.device(device)
    w = b = wr = None
    out = np.empty(n, dtype=np.float64 if dtype == torch.float64 else np.float32)
    pos = 0
    for chunk in _iter_chunks(chunks, chunk_rows):
        if not isinstance(chunk, torch.Tensor):
            chunk = np.asarray(chunk)
            if not chunk.flags.writeable:  # read-only memmap: never written, so share it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    chunk = torch.from_numpy(chunk)
        h = as_float_tensor(chunk, "features chunk").to(device=device, dtype=dtype)
        if h.ndim != 2:
            raise GradTuneInputError(f"each features chunk must be (n_i, d), got shape {tuple(h.shape)}")
        if w is None:
            w, b = _check_head(weight, bias, h.shape[1], device, dtype)
            n_classes = w.shape[0]
            if n and int(y_all.max()) >= n_classes:
                raise GradTuneInputError(f"labels must be < {n_classes} (rows of weight), found {int(y_all.max())}")
        m = h.shape[0]
        if pos + m > n:
            raise GradTuneInputError(f"features have more rows than the {n} labels given")
        y = y_all[pos:pos + m].to(device)
        res = None
        if _use_fused(backend, h, n_classes, False):
            h = h.contiguous()
            res, _, _, bad_head = _fused_module().fused_norms(h, w, b, y, include_bias)  # labels checked above
            if bad_head:  # the head is finite (checked above), but W[j] - W[0] overflowed
                res = None
        if res is None:
            if wr is None:
                wr = _relative_weight(w)
                relative = all_finite(wr)  # else two finite rows differ by more than the dtype holds
            res = _norms_chunk(h, y, None, wr if relative else w, b, include_bias, relative)
        _check_finite_result(res, h, None, offset=pos)
        out[pos:pos + m] = res.cpu().numpy()
        pos += m
    if pos != n:
        raise GradTuneInputError(f"features had {pos} rows but {n} labels were given")
    return out
