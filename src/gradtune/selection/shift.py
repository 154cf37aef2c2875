"""How unlabeled deployment rows weight the inferred groups, and what a head's accuracy
would be under that weighting.

A repair trades accuracy on the rows the ERM head gets right for accuracy on the rows it
gets wrong. Whether the trade pays depends on how often each kind of row occurs where the
model is used, which validation rows cannot say when they carry the training bias: a
no-shortcut problem whose hard rows form a coherent region looks like a shortcut's
minority to every validation statistic. Unlabeled deployment rows can say it. The share of
each pseudo-group among them is estimated under label shift, by black-box shift estimation
(BBSE, Lipton, Wang and Smola, 2018; the default) or by maximum likelihood (the EM of
Saerens, Latinne and Decaestecker, 2002), from a classifier of the pseudo-group learned on
validation rows. Only features of the deployment rows are read, never a label or a group.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from gradtune._validation import GradTuneInputError
from gradtune.selection.audit import class_folds

_CHUNK = 65536


def _group_shares(groups: np.ndarray, n_groups: int) -> np.ndarray:
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def deployment_shares(x_val: np.ndarray, groups: np.ndarray, x_dep: np.ndarray, n_groups: int, *,
                      rng: np.random.Generator, c: float = 1.0, method: str = "bbse", n_folds: int = 5,
                      n_iter: int = 500, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the pseudo-groups among validation rows and, estimated, among deployment rows.

    Parameters
    ----------
    x_val : (m, d) validation features; groups : (m,) ints in ``[0, n_groups)``
    x_dep : (n, d) unlabeled deployment features (read in chunks)
    rng : the generator that splits ``x_val`` into ``n_folds`` folds, stratified by group:
        each fold's rows are scored by a classifier fitted on the others (the confusion
        matrix), and the deployment rows by every fold's classifier, averaged
    c : inverse L2 strength of the multinomial logistic regression of the group
    n_folds : how many folds (>= 2) the validation rows are split into
    method : "bbse" (default) solves ``conf @ shares = mu`` for non-negative shares, where
        ``mu`` is the classifier's mean posterior over the deployment rows and ``conf[i, j]``
        its cross-fitted mean posterior of group i on validation rows of group j: consistent
        for an uncalibrated classifier, noisy for groups of a handful of rows. "em" finds the
        maximum-likelihood shares instead: stable, but biased when the posteriors are not
        calibrated (it under-counted small pseudo-minorities on the stress suite).
    n_iter, tol : the EM iterations' cap and the change in every share that stops them

    Returns
    -------
    (validation shares (G,), deployment shares (G,)), each summing to 1. With fewer than
    two groups the deployment shares are the validation shares.
    """
    from sklearn.linear_model import LogisticRegression

    x_val = np.asarray(x_val)
    groups = np.asarray(groups, dtype=np.int64)
    x_dep = np.asarray(x_dep)
    if x_val.ndim != 2 or x_dep.ndim != 2 or x_val.shape[1] != x_dep.shape[1]:
        raise GradTuneInputError(f"validation and deployment features must be 2-D with the same width, got "
                                 f"{x_val.shape} and {x_dep.shape}")
    if len(groups) != len(x_val) or (len(groups) and (groups.min() < 0 or groups.max() >= n_groups)):
        raise GradTuneInputError(f"groups must hold one id in [0, {n_groups}) per validation row")
    if len(x_dep) == 0:
        raise GradTuneInputError("the deployment split has no rows: pass a split with unlabeled rows")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise GradTuneInputError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if method not in ("bbse", "em"):
        raise GradTuneInputError(f"method must be 'bbse' or 'em', got {method!r}")
    val = _group_shares(groups, n_groups)
    fold = class_folds(groups, int(n_folds), rng)         # folds stratified by group
    if np.count_nonzero(val) < 2:
        return val, val.copy()
    mean, scale = x_val.mean(axis=0), x_val.std(axis=0) + 1e-8
    prob = np.zeros((len(x_dep), n_groups))                  # P(group | row) by the fold models, averaged
    prior = np.zeros(n_groups)                               # their training shares, averaged
    conf = np.zeros((n_groups, n_groups))                    # conf[i, j]: mean P(i | row) over group j's rows
    for f in range(int(n_folds)):
        fit, held = fold != f, fold == f
        clf = LogisticRegression(C=float(c), max_iter=1000).fit((x_val[fit] - mean) / scale, groups[fit])
        cols = clf.classes_.astype(np.int64)
        prior += _group_shares(groups[fit], n_groups) / n_folds
        held_prob = np.zeros((int(held.sum()), n_groups))
        held_prob[:, cols] = clf.predict_proba((x_val[held] - mean) / scale)
        np.add.at(conf.T, groups[held], held_prob)
        for start in range(0, len(x_dep), _CHUNK):
            chunk = (np.asarray(x_dep[start:start + _CHUNK], dtype=np.float64) - mean) / scale
            prob[start:start + _CHUNK, cols] += clf.predict_proba(chunk) / n_folds
    if method == "em":
        return val, _em_shares(prob, prior, n_iter=n_iter, tol=tol)
    conf /= np.maximum(conf.sum(axis=0, keepdims=True), 1e-12)
    dep, _ = nnls(conf, prob.mean(axis=0))
    return val, (dep / dep.sum() if dep.sum() > 0 else val.copy())


def _em_shares(prob: np.ndarray, prior: np.ndarray, *, n_iter: int, tol: float) -> np.ndarray:
    """Maximum-likelihood group shares of the rows whose posteriors under ``prior`` are
    ``prob`` (n, G): reweight each posterior by shares / prior, renormalize, average."""
    live = prior > 0
    shares = prior.copy()
    for _ in range(int(n_iter)):
        w = np.where(live, shares / np.where(live, prior, 1.0), 0.0)
        post = prob * w
        post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
        new = post.mean(axis=0)
        done = np.abs(new - shares).max() < tol
        shares = new
        if done:
            break
    return shares / shares.sum()


def shares_accuracy(correct: np.ndarray, groups: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Each head's accuracy with its per-group accuracies weighted by ``shares``.

    correct : (K, m) bool, which rows each head gets right; groups : (m,) ids; shares :
    (G,). Groups with no row here drop out and the remaining shares are renormalized
    (plain accuracy when none has a share). Returns (K,).
    """
    correct = np.asarray(correct, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    onehot = np.zeros((len(groups), len(shares)))
    onehot[np.arange(len(groups)), groups] = 1.0
    counts = onehot.sum(axis=0)
    present = counts > 0
    w = np.where(present, np.asarray(shares, dtype=np.float64), 0.0)
    if w.sum() <= 0:
        return correct.mean(axis=1)
    per_group = (correct @ onehot)[:, present] / counts[present]      # (K, G present)
    return per_group @ (w[present] / w.sum())


def deployment_accuracy(halves: list[tuple[np.ndarray, np.ndarray, np.ndarray]], x_dep: np.ndarray,
                        n_groups: int, *, rng: np.random.Generator
                        ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """:func:`shares_accuracy` under the deployment shares estimated on each scored half,
    averaged over the halves.

    halves : ``[(correct (K, m), groups (m,), x (m, d)), ...]``. Returns (K,) and each
    half's (validation shares, deployment shares).
    """
    shares = [deployment_shares(x, g, x_dep, n_groups, rng=rng) for _, g, x in halves]
    acc = [shares_accuracy(ok, g, dep) for (ok, g, _), (_, dep) in zip(halves, shares, strict=True)]
    return np.mean(acc, axis=0), shares
