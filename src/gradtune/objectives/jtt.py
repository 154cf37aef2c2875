"""JTT's (Liu et al., 2021) error set and upsampled training list, as pure functions.

The identification model's *error set* is the training rows it misclassifies; the second
model trains on ``ConcatDataset([train] + [error_set] * (lambda - 1))``, so that each error
row appears ``lambda`` times in total. The last-layer method (:mod:`gradtune.methods.jtt`)
and full-network JTT (:mod:`gradtune.training.robust`) both use these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtune._validation import (
    GradTuneInputError,
    check_features,
    check_labels,
    check_positive_int,
)

__all__ = ["jtt_error_set", "jtt_upsampled_indices"]


def jtt_error_set(logits: Any, labels: Any) -> np.ndarray:
    """Rows whose argmax prediction differs from the label, shape (E,), int64, increasing.

    Parameters
    ----------
    logits : array-like of shape (N, C)   the identification model's outputs
    labels : array-like of shape (N,)
    """
    z = check_features(logits, "logits")
    y = check_labels(labels, z.shape[1], n=z.shape[0])
    return np.flatnonzero((z.argmax(dim=1) != y).numpy()).astype(np.int64)


def jtt_upsampled_indices(n: int, error_idx: Any, lam: int) -> np.ndarray:
    """The upsampled training list: ``range(n)`` then ``lam - 1`` more copies of the errors.

    Parameters
    ----------
    n : int                      number of training rows
    error_idx : array-like (E,)  error-set rows, in ``0..n-1``
    lam : int >= 1               total times each error row appears

    Returns
    -------
    np.ndarray of shape (n + (lam - 1) * E,), int64 (as ``ConcatDataset``'s order)
    """
    n = check_positive_int(n, "n", allow_zero=True)
    lam = check_positive_int(lam, "lam")
    e = np.asarray(error_idx, dtype=np.int64).reshape(-1)
    if e.size and (e.min() < 0 or e.max() >= n):
        raise GradTuneInputError(f"error_idx must lie in 0..{n - 1}")
    return np.concatenate([np.arange(n, dtype=np.int64), np.tile(e, lam - 1)])
