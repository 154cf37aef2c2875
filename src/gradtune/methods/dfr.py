"""Deep Feature Reweighting, DFR^Val (Kirichenko et al., 2023), as its authors' code runs it.

Procedure (``dfr_evaluate_spurious.py`` of the authors, DFR on validation):

1. **Tune C.** Take the group-balanced subsample of one half of the validation set
   (here the ``heldout`` rows), standardize it with a ``StandardScaler`` fitted on that
   subsample, and fit an L1 logistic regression (liblinear) for each
   ``C in {1, .7, .3, .1, .07, .03, .01}``. Score each by worst-group accuracy on the
   other half (here the ``selection`` rows), standardized by the same scaler. The
   first C with the highest score wins (the authors' ``np.argmax`` over the grid in
   this order, so ties go to the larger C).
2. **Final model.** 20 fits with the chosen C, each on a fresh group-balanced subsample
   of the whole validation set (``heldout`` + ``selection``), all standardized by one
   scaler; the head is the average of the 20 ``coef_`` and ``intercept_``. The
   authors fit that scaler on the *training* embeddings (``scaler.fit(train)``), which
   is the default here (``scaler_fit='train'``; only the features of ``train`` rows are
   read, never their labels or groups). Without ``train`` rows it falls back to the
   validation rows and says so in the diagnostics.

The result is folded back into one :class:`LinearHead` on the original features
(``z = (coef / scale) x + intercept - coef . (mean / scale)``). For two classes liblinear
gives one row ``z``; the head's logits are ``[-z/2, z/2]`` (same argmax and same
``sigmoid(z)`` probability). For more classes, scikit-learn >= 1.8 refuses liblinear; the
authors' (older) scikit-learn ran it one-vs-rest, so one binary fit per class is done here
and the rows are stacked (argmax of the OvR scores, as ``predict`` did).

Group labels: DFR builds its balanced subsets with the group labels of validation data.
The paper's Table 1 marks DFR as ✗ (train) / ✓ (val) because its retraining data is the
validation set, and this class follows that table: ``uses_group_labels_train=False``,
``uses_group_labels_val=True``, although it reads the groups of ``heldout`` rows to
build its training subsets.

Randomness protocol (so that a seed reproduces a run; the tests rely on it):
the seed is split into the streams :data:`DFR_STREAMS` (:func:`gradtune._seeding.seed_streams`);
the tuning subsample is :func:`~gradtune.objectives.sampling.balanced_subsample` with the
first stream's generator; the 20 final subsamples are successive calls with the second's;
liblinear's ``random_state`` is the third stream's integer for every fit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gradtune._seeding import seed_streams
from gradtune._validation import GradTuneInputError, check_choice, check_positive_int
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods.balancing import require_groups
from gradtune.methods.base import LinearHead, Method, MethodResult, param, register_method
from gradtune.metrics.accuracy import worst_group_accuracy
from gradtune.objectives.sampling import balanced_subsample

__all__ = ["DFRMethod", "dfr_retrain", "fit_l1_logreg", "fold_scaler", "fit_scaler_in_chunks", "DFR_C_GRID"]

DFR_C_GRID: tuple[float, ...] = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
SCALER_FITS = ("train", "validation")
#: DFR's split of the seed: the tuning subsample, the final subsample, the solver's random_state.
DFR_STREAMS = ("tune_subsample", "final_subsample", "solver")


def _l1_kwargs() -> dict[str, Any]:
    """L1 penalty spelled for the installed scikit-learn (``penalty`` is deprecated in 1.8)."""
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


def fit_l1_logreg(x: np.ndarray, y: np.ndarray, c: float, n_classes: int, *,
                  random_state: int, max_iter: int = 100, tol: float = 1e-4,
                  sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """L1 logistic regression with liblinear, one-vs-rest for more than 2 classes.

    Parameters
    ----------
    x : np.ndarray of shape (n, d)   standardized features
    y : np.ndarray of shape (n,)     labels in 0..n_classes-1, all classes present
    c : float                        inverse regularization strength
    n_classes : int
    random_state : int               liblinear's seed
    sample_weight : np.ndarray of shape (n,), optional   per-row loss weights

    Returns
    -------
    coef : np.ndarray of shape (1, d) for 2 classes, else (n_classes, d), float64
    intercept : np.ndarray of shape (1,) or (n_classes,), float64
    """
    present = np.unique(y)
    if present.size != n_classes:
        raise GradTuneInputError(
            f"the DFR training subset holds classes {present.tolist()} but the task has {n_classes}; "
            "every class needs rows in every group-balanced subset"
        )
    kwargs = dict(C=c, solver="liblinear", random_state=random_state, max_iter=max_iter, tol=tol,
                  **_l1_kwargs())
    targets = [y] if n_classes == 2 else [(y == k).astype(np.int64) for k in range(n_classes)]
    coefs, intercepts = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for t in targets:
            lr = LogisticRegression(**kwargs).fit(x, t, sample_weight=sample_weight)
            coefs.append(lr.coef_[0])
            intercepts.append(lr.intercept_[0])
    return np.asarray(coefs, dtype=np.float64), np.asarray(intercepts, dtype=np.float64)


def fit_scaler_in_chunks(x: np.ndarray, chunk_rows: int = 65_536) -> StandardScaler:
    """``StandardScaler().fit(x)`` for (n, d) ``x``; beyond ``chunk_rows`` rows it is fitted
    one block at a time (``partial_fit``), so a paper-size training split is never copied
    whole into float64."""
    scaler = StandardScaler()
    if x.shape[0] <= chunk_rows:
        return scaler.fit(x)
    for start in range(0, x.shape[0], chunk_rows):
        scaler.partial_fit(x[start:start + chunk_rows])
    return scaler


def fold_scaler(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                n_classes: int) -> LinearHead:
    """A head on raw features equal to ``coef @ ((x - mean) / scale) + intercept``.

    ``coef`` (K, d) and ``intercept`` (K,) come from :func:`fit_l1_logreg`; with K = 1
    (binary) the logits are ``[-z/2, z/2]``.
    """
    w = coef / scale[None, :]
    b = intercept - w @ mean
    if n_classes == 2:
        w = np.stack([-w[0] / 2, w[0] / 2])
        b = np.array([-b[0] / 2, b[0] / 2])
    return LinearHead(w, b)


def _scores(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = x @ coef.T + intercept
    return (z[:, 0] > 0).astype(np.int64) if coef.shape[0] == 1 else z.argmax(axis=1)


@register_method
@dataclass
class DFRMethod(Method):
    """DFR^Val: L1 logistic regression on group-balanced validation subsets (see module doc).

    Parameters
    ----------
    c_grid : tuple of float, default=(1, .7, .3, .1, .07, .03, .01)
        Inverse L1 strengths tried, in the authors' order (ties go to the earlier one).
    num_retrains : int, default=20
        Fits averaged for the final head.
    scaler_fit : {'train', 'validation'}, default='train'
        Rows whose features fit the final model's StandardScaler ('train' as the authors;
        falls back to 'validation' when the bundle has no train rows).
    max_iter, tol : liblinear's settings (scikit-learn defaults 100, 1e-4).
    """

    name = "dfr"
    description = "DFR (Kirichenko et al.): L1 logistic regression on group-balanced validation, 20 averaged fits"
    uses_group_labels_train = False
    uses_group_labels_val = True
    # no search space: C is tuned inside fit, as the authors do

    c_grid: tuple[float, ...] = param(DFR_C_GRID, "inverse L1 strengths tried, in order", gt=0, nonempty=True,
                                      fast=(1.0, 0.1))
    num_retrains: int = param(20, "fits averaged for the final head", ge=1, fast=2)
    scaler_fit: str = param("train", "rows whose features fit the final scaler", choices=SCALER_FITS)
    max_iter: int = param(100, "liblinear's iteration limit", ge=1)
    tol: float = param(1e-4, "liblinear's tolerance", gt=0)

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        held = bundle.view("heldout")
        sel = bundle.view("selection")
        g_held = require_groups(held, self.name, "heldout")
        g_sel = require_groups(sel, self.name, "selection")
        return dfr_retrain(self, bundle, g_held, g_sel, seed=seed)


def dfr_retrain(cfg: DFRMethod, bundle: EmbeddingBundle, g_held: np.ndarray, g_sel: np.ndarray,
                *, seed: int) -> MethodResult:
    """DFR's two steps (module doc) with the given group ids of the validation halves.

    Parameters
    ----------
    cfg : DFRMethod
        The hyperparameters (``c_grid``, ``num_retrains``, ``scaler_fit``, ...).
    bundle : EmbeddingBundle
        With ``heldout`` and ``selection`` rows (and ``train`` rows for the scaler).
    g_held : np.ndarray of shape (n_heldout,)
        Group id of each held-out row: true groups for DFR, inferred ones otherwise.
    g_sel : np.ndarray of shape (n_selection,)
        Group id of each selection row.
    seed : int
    """
    seed = check_positive_int(seed, "seed", allow_zero=True)
    n_retrains = check_positive_int(cfg.num_retrains, "num_retrains")
    check_choice(cfg.scaler_fit, "scaler_fit", SCALER_FITS)
    c_grid = tuple(float(c) for c in cfg.c_grid)
    if not c_grid or min(c_grid) <= 0:
        raise GradTuneInputError(f"c_grid must be a non-empty list of positive numbers, got {cfg.c_grid!r}")
    n_classes = int(bundle.n_classes)
    held = bundle.view("heldout")
    sel = bundle.view("selection")
    streams = seed_streams(seed, *DFR_STREAMS)
    rng_tune, rng_final = streams.rng("tune_subsample"), streams.rng("final_subsample")
    lib_seed = streams.integer("solver")
    fit_kw = dict(random_state=lib_seed, max_iter=cfg.max_iter, tol=cfg.tol)

    # 1. tune C: train on the balanced held-out half, score WGA on the selection half
    sub = balanced_subsample(g_held, rng_tune)
    scaler = StandardScaler().fit(held.features[sub])
    x_tr = scaler.transform(held.features[sub])
    x_ev = scaler.transform(sel.features)
    c_scores: dict[str, float] = {}
    for c in c_grid:
        coef, icpt = fit_l1_logreg(x_tr, held.labels[sub], c, n_classes, **fit_kw)
        c_scores[repr(c)] = worst_group_accuracy(_scores(coef, icpt, x_ev), sel.labels, g_sel)
    best_c = c_grid[int(np.argmax(list(c_scores.values())))]

    # 2. final: average of num_retrains fits on balanced subsamples of all validation rows
    x_val = np.concatenate([held.features, sel.features])
    y_val = np.concatenate([held.labels, sel.labels])
    g_val = np.concatenate([g_held, g_sel])
    fit_on = cfg.scaler_fit
    if fit_on == "train" and not bundle.has_split("train"):
        fit_on = "validation"
    scaler_rows = bundle.view("train").features if fit_on == "train" else x_val
    final_scaler = fit_scaler_in_chunks(scaler_rows)
    coefs, icpts = [], []
    for _ in range(n_retrains):
        sub_v = balanced_subsample(g_val, rng_final)
        coef, icpt = fit_l1_logreg(final_scaler.transform(x_val[sub_v]), y_val[sub_v], best_c,
                                   n_classes, **fit_kw)
        coefs.append(coef)
        icpts.append(icpt)
    coef = np.mean(coefs, axis=0)
    icpt = np.mean(icpts, axis=0)
    head = fold_scaler(coef, icpt, final_scaler.mean_, final_scaler.scale_, n_classes)
    diag = {
        "best_c": best_c,
        "c_scores": c_scores,
        "tune_subsample_size": int(sub.size),
        "final_subsample_size": int(sub_v.size),
        "scaler_fit_on": fit_on if fit_on == cfg.scaler_fit else "validation (the bundle has no train rows)",
        "nonzero_coefficients": int((np.abs(coef) > 0).any(axis=0).sum()),
    }
    return MethodResult(head, diag)
