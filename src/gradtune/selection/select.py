"""Turn per-sample scores into the indices of a fine-tuning set.

GradTune's set (paper, Sec. 4.1) is the ``top_k`` highest scores plus
``size - top_k`` more drawn from the remaining samples with probability
proportional to their score. The paper does not say whether that draw is with
or without replacement; the natural reading for a *set* is without, which is
the default here (``replace=True`` is available).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtune._params import declare
from gradtune._validation import (
    GradTuneInputError,
    check_positive_int,
    check_scores,
    make_numpy_rng,
)

__all__ = ["select_finetune_set", "top_k_indices", "random_subset", "proportional_draw", "SIZE", "TOP_K"]

#: M', the size of GradTune's fine-tuning set (the paper's default); every method and
#: entry point with a ``size`` of this meaning declares it from here.
SIZE = declare(500, "M', the size of the fine-tuning set (scaled down on smaller held-out sets)", ge=1)
#: k, how many of the highest scores enter the set deterministically (the paper's default).
TOP_K = declare(400, "k, the highest scores taken into the set", ge=0, at_most="size")


def top_k_indices(scores: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, highest first; ties broken by lower index.

    Parameters
    ----------
    scores : array-like of shape (N,)
    k : int, 0 <= k <= N

    Returns
    -------
    np.ndarray of shape (k,), int64
    """
    s = check_scores(scores)
    k = check_positive_int(k, "k", allow_zero=True)
    if k > s.size:
        raise GradTuneInputError(f"k={k} exceeds the number of samples N={s.size}")
    return _top_k(s, k)


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < s.size:
        # argpartition is O(N); only the selected k are then sorted.
        part = np.argpartition(-s, k - 1)[:k]
        # Ties at the boundary: argpartition picks arbitrarily; make it lowest-index-first.
        kth = s[part].min()
        above = np.flatnonzero(s > kth)
        at = np.flatnonzero(s == kth)[: k - above.size]
        part = np.concatenate([above, at])
    else:
        part = np.arange(s.size)
    order = np.lexsort((part, -s[part]))
    return part[order].astype(np.int64)


def proportional_draw(weights: np.ndarray, m: int, rng: np.random.Generator,
                      replace: bool = False) -> np.ndarray:
    """Draw ``m`` positions with probability proportional to ``weights`` (>= 0).

    Without replacement this is successive sampling (each draw proportional to the
    weights of the items not yet drawn), done in one vectorized pass with the
    exponential-race trick: item i gets key E_i / w_i with E_i ~ Exp(1) and the m
    smallest keys win. If fewer than ``m`` weights are positive, all positive
    items are taken and the rest are drawn uniformly from the zero-weight items.
    """
    n = weights.size
    if m == 0:
        return np.empty(0, dtype=np.int64)
    total = weights.sum()
    if replace:
        p = weights / total if total > 0 else np.full(n, 1.0 / n)
        return rng.choice(n, size=m, replace=True, p=p).astype(np.int64)
    e = rng.exponential(size=n)
    with np.errstate(divide="ignore"):
        keys = np.where(weights > 0, e / np.where(weights > 0, weights, 1.0), np.inf)
    positive = int((weights > 0).sum())
    if positive >= m:
        return np.argpartition(keys, m - 1)[:m].astype(np.int64) if m < n else np.arange(n)
    pos_idx = np.flatnonzero(weights > 0)
    zero_idx = np.flatnonzero(weights <= 0)
    extra = rng.choice(zero_idx, size=m - positive, replace=False)
    return np.concatenate([pos_idx, extra]).astype(np.int64)


def select_finetune_set(
    scores: Any,
    size: int = SIZE.default,
    top_k: int = TOP_K.default,
    *,
    seed: int | np.random.Generator,
    replace: bool = False,
) -> np.ndarray:
    """GradTune's fine-tuning set: top-k scores plus a score-proportional draw.

    Parameters
    ----------
    scores : array-like of shape (N,)
        Non-negative per-sample scores (gradient norms), no NaN.
    size : int, default=500
        M', the size of the fine-tuning set (paper: 500). ``size == N`` returns all.
    top_k : int, default=400
        k, how many of the highest scores enter deterministically (paper: 400).
    seed : int or numpy.random.Generator
        Randomness of the proportional draw. Required (keyword-only).
    replace : bool, default=False
        Draw the ``size - top_k`` extra samples with replacement (then the result
        may repeat indices). The paper's set is read as without replacement.

    Returns
    -------
    np.ndarray of shape (size,), int64
        Top-k indices first (highest score first), then the drawn ones.

    Raises
    ------
    GradTuneInputError
        If ``top_k > size``, ``size > N``, or scores are negative / NaN / inf.
    """
    s = check_scores(scores)
    size = check_positive_int(size, "size")
    top_k = check_positive_int(top_k, "top_k", allow_zero=True)
    if top_k > size:
        raise GradTuneInputError(f"top_k={top_k} must not exceed size={size} (k <= M')")
    if size > s.size:
        raise GradTuneInputError(
            f"size={size} exceeds the number of held-out samples N={s.size}; "
            f"use size <= {s.size} (e.g. size={s.size}, top_k={min(top_k, s.size)})"
        )
    rng = make_numpy_rng(seed)
    top = _top_k(s, top_k)
    if size == s.size and not replace:
        rest = np.setdiff1d(np.arange(s.size), top, assume_unique=True)
        return np.concatenate([top, rest]).astype(np.int64)
    mask = np.ones(s.size, dtype=bool)
    mask[top] = False
    rest = np.flatnonzero(mask)
    drawn = rest[proportional_draw(s[rest], size - top_k, rng, replace=replace)]
    return np.concatenate([top, drawn]).astype(np.int64)


def random_subset(n: int, size: int, *, seed: int | np.random.Generator) -> np.ndarray:
    """``size`` distinct indices drawn uniformly from ``range(n)`` (random fine-tuning)."""
    n = check_positive_int(n, "n")
    size = check_positive_int(size, "size")
    if size > n:
        raise GradTuneInputError(f"size={size} exceeds the number of samples N={n}")
    return make_numpy_rng(seed).choice(n, size=size, replace=False).astype(np.int64)
