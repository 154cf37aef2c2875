"""Automatic k and M' from the distribution of held-out gradient norms.

The paper fixes ``M' = 500`` and ``k = 400`` whatever the held-out set (600 to 41k
rows). Here both follow from the norms themselves:

1. ``x = log(norm)`` (zero norms are floored at half the smallest positive norm);
   last-layer gradient norms of a trained model span orders of magnitude, and on a
   log scale the rows the ERM head fits (tiny norms, wide spread) and the rows it
   gets wrong or is unsure of (norms near ``sqrt(2) * ||[h, 1]||``, narrow spread)
   form two modes.
2. A two-component Gaussian mixture on ``x`` (scikit-learn, seeded, several inits);
   the *high* component is the one with the larger mean.
3. ``k_raw`` = the number of rows whose posterior of the high component exceeds 0.5;
   ``M'_raw = ceil(k_raw / k_share)``: the paper's ratio (``k / M' = 0.8``) keeps a
   quarter of ``k`` as extra rows drawn in proportion to their norm, outside the mode.
4. Clip ``M'`` to ``[min(N, min_size), min(N, max_size)]`` (default 100 and 2,000:
   a 300-row held-out set gets at least 100 rows, a 41k one at most 2,000, four times
   the paper's 500), and ``k = min(k_raw, round(k_share * M'))``. When ``M'`` is raised
   to ``min_size`` the extra rows are norm-proportional draws; when it is lowered to
   ``max_size`` the top ``k_share`` of it are the highest norms.
5. Fallbacks (``info['rule']``): ``'paper'`` (``M' = min(N, 500)``, ``k = 0.8 M'``)
   when there are fewer than ``min_rows`` rows, fewer than 3 distinct values, or the
   mixture is degenerate: the high component holds more than ``max_high_share`` of the
   rows (no minority mode) or no row at all.

The threshold between the modes (the log-norm where the two posteriors are equal,
returned in ``info['threshold']`` as a norm) also splits rows into high/low-norm
pseudo-groups for :mod:`gradtune.selection.label_free`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from gradtune._params import declare
from gradtune._validation import (
    GradTuneInputError,
    check_nonneg_float,
    check_positive_int,
    check_scores,
)
from gradtune.selection.select import SIZE, TOP_K

__all__ = ["auto_set_size", "fit_log_norm_mixture", "PAPER_SIZE", "PAPER_K_SHARE", "K_SHARE", "MIN_SIZE", "MAX_SIZE"]

PAPER_SIZE: int = SIZE.default
PAPER_K_SHARE: float = TOP_K.default / SIZE.default
#: The automatic rule's parameters (shared by every method that uses it).
K_SHARE = declare(PAPER_K_SHARE, "the automatic rule's k / M'", gt=0, le=1)
MIN_SIZE = declare(100, "the automatic rule's smallest M'", ge=1, at_most="max_size")
MAX_SIZE = declare(2000, "the automatic rule's largest M'", ge=1)


def _log_norms(norms: np.ndarray) -> np.ndarray:
    pos = norms[norms > 0]
    floor = 0.5 * pos.min() if pos.size else 1e-12
    return np.log(np.maximum(norms, floor))


def fit_log_norm_mixture(norms: Any, *, seed: int, n_init: int = 3) -> dict[str, Any]:
    """Fit a two-component Gaussian mixture to ``log(norms)``.

    Parameters
    ----------
    norms : array-like of shape (N,)
        Non-negative gradient norms (at least 3 distinct values).
    seed : int
        ``random_state`` of the mixture's k-means initialisation.
    n_init : int, default=3
        Initialisations; the best likelihood wins.

    Returns
    -------
    dict with
        ``posterior_high`` : np.ndarray (N,) posterior of the high-mean component;
        ``means`` : [low, high] means of log-norm; ``stds`` : [low, high];
        ``weights`` : [low, high] mixing weights;
        ``threshold`` : float, the norm at which both posteriors are 0.5 (between the
        means; NaN if the posteriors never cross there);
        ``separation`` : Ashman's D = |mu_h - mu_l| / sqrt((s_h^2 + s_l^2) / 2)
        (> 2 means two clearly separated modes).
    """
    from sklearn.mixture import GaussianMixture

    s = check_scores(norms, "norms")
    seed = check_positive_int(seed, "seed", allow_zero=True)
    x = _log_norms(s)
    if np.unique(x).size < 3:
        raise GradTuneInputError("a two-component mixture needs at least 3 distinct norms")
    gm = GaussianMixture(2, covariance_type="full", n_init=n_init, random_state=seed, reg_covar=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-degenerate data
        gm.fit(x[:, None])
    means = gm.means_[:, 0]
    stds = np.sqrt(gm.covariances_[:, 0, 0])
    hi, lo = int(np.argmax(means)), int(np.argmin(means))
    if hi == lo:  # identical means: call component 1 high
        hi, lo = 1, 0
    post = gm.predict_proba(x[:, None])[:, hi]
    # Threshold: the posterior crossing on a fine grid between the two means.
    grid = np.linspace(means[lo], means[hi], 513)
    pg = gm.predict_proba(grid[:, None])[:, hi]
    cross = np.flatnonzero(pg >= 0.5)
    threshold = float(np.exp(grid[cross[0]])) if cross.size else float("nan")
    sep = abs(means[hi] - means[lo]) / math.sqrt(max((stds[hi] ** 2 + stds[lo] ** 2) / 2, 1e-24))
    return {"posterior_high": post, "means": [float(means[lo]), float(means[hi])],
            "stds": [float(stds[lo]), float(stds[hi])],
            "weights": [float(gm.weights_[lo]), float(gm.weights_[hi])],
            "threshold": threshold, "separation": float(sep)}


def auto_set_size(norms: Any, *, seed: int, k_share: float = K_SHARE.default, min_size: int = MIN_SIZE.default,
                  max_size: int = MAX_SIZE.default, max_high_share: float = 0.5, min_rows: int = 20,
                  ) -> tuple[int, int, dict[str, Any]]:
    """GradTune's ``(M', k)`` from the held-out gradient norms (rule in the module docstring).

    Parameters
    ----------
    norms : array-like of shape (N,)
        Held-out gradient norms under the ERM head (non-negative, finite).
    seed : int
        Seeds the mixture fit.
    k_share : float in (0, 1], default=0.8
        ``k / M'`` (the paper's 400 / 500).
    min_size, max_size : int, default=100, 2000
        Bounds on ``M'`` (each also capped by N).
    max_high_share : float in (0, 1], default=0.5
        A high component holding more rows than this share is not a minority mode:
        fall back to the paper's sizes.
    min_rows : int, default=20
        Fewer held-out rows than this: fall back to the paper's sizes.

    Returns
    -------
    size : int
        M', ``1 <= size <= N``.
    top_k : int
        k, ``0 <= top_k <= size``.
    info : dict
        ``rule`` ('mixture' or 'paper'), ``reason`` (for a fallback), ``n_high``
        (rows in the high mode), ``threshold`` (a norm), ``means`` / ``stds`` /
        ``weights`` (log-norm mixture, [low, high]), ``separation``, ``n``.
    """
    s = check_scores(norms, "norms")
    n = s.size
    if n == 0:
        raise GradTuneInputError("norms is empty: the held-out set has no rows")
    k_share = check_nonneg_float(k_share, "k_share", positive=True)
    if k_share > 1:
        raise GradTuneInputError(f"k_share must lie in (0, 1], got {k_share}")
    min_size = check_positive_int(min_size, "min_size")
    max_size = check_positive_int(max_size, "max_size")
    if min_size > max_size:
        raise GradTuneInputError(f"min_size={min_size} exceeds max_size={max_size}")
    seed = check_positive_int(seed, "seed", allow_zero=True)

    def paper(reason: str, extra: dict[str, Any] | None = None) -> tuple[int, int, dict[str, Any]]:
        size = min(n, PAPER_SIZE)
        info = {"rule": "paper", "reason": reason, "n": n, "n_high": None, "threshold": float("nan")}
        info.update(extra or {})
        return size, int(round(k_share * size)), info

    if n < min_rows:
        return paper(f"only {n} rows (< min_rows={min_rows})")
    if np.unique(s).size < 3:
        return paper("fewer than 3 distinct norms")
    fit = fit_log_norm_mixture(s, seed=seed)
    n_high = int((fit["posterior_high"] > 0.5).sum())
    summary = {k: fit[k] for k in ("means", "stds", "weights", "threshold", "separation")}
    if n_high == 0 or n_high > max_high_share * n:
        return paper(f"degenerate mixture: {n_high} of {n} rows in the high mode", {"n_high": n_high, **summary})
    lo, hi = min(n, min_size), min(n, max_size)
    size = int(np.clip(math.ceil(n_high / k_share), lo, hi))
    top_k = min(n_high, int(round(k_share * size)))
    info = {"rule": "mixture", "reason": "", "n": n, "n_high": n_high, **summary}
    return size, top_k, info
