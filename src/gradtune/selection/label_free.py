"""Label-free model-selection criteria: score a candidate head without group labels.

Every criterion reads only a candidate's logits on the ``selection`` rows, their class
labels and, for the pseudo-group criteria, what the ERM head says about the same rows
(its logits or its per-row gradient norms). Group labels and test rows are never an
input. Larger is better for every criterion.

=========================  ==================================================================
name                       value
=========================  ==================================================================
``accuracy``               plain accuracy (a reference: blind to groups)
``worst_class``            min over classes of the class accuracy
``balanced_class``         mean over classes of the class accuracy
``pseudo_erm_worst``       min accuracy over pseudo-groups (label x ERM-correct)
``pseudo_erm_balanced``    mean accuracy over the same pseudo-groups (uLA's selection rule
                           with the ERM head as the bias model)
``pseudo_norm_worst``      min accuracy over pseudo-groups (label x ERM gradient norm above /
                           below its median on the selection rows)
``pseudo_norm_gmm_worst``  the same, split at the two-component log-norm mixture threshold
                           (:func:`gradtune.selection.auto_k.fit_log_norm_mixture`)
``neg_worst_gradnorm``     minus the largest mean residual ``||p - e_y||`` (the last-layer
                           gradient norm without its feature factor) over the median-split
                           norm pseudo-groups: a smooth version of ``pseudo_norm_worst``
=========================  ==================================================================

Pseudo-groups with fewer than ``min_group_size`` rows (default 10) are left out of a
min / mean (their accuracy is noise); if every pseudo-group is that small, all non-empty
ones count.

Use :class:`LabelFreeScorer` to score many candidates on the same rows (it builds the
pseudo-groups once), or :func:`criterion` for one value.

Shapes: N selection rows, C classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradtune._validation import GradTuneInputError, check_positive_int, check_scores

__all__ = ["CRITERIA", "list_criteria", "criterion", "LabelFreeScorer", "pseudo_groups",
           "group_accuracy_summary"]


@dataclass(frozen=True)
class _Criterion:
    needs: tuple[str, ...]  # subset of ("erm_logits", "erm_norms")
    description: str


CRITERIA: dict[str, _Criterion] = {
    "accuracy": _Criterion((), "plain accuracy (reference)"),
    "worst_class": _Criterion((), "min class accuracy"),
    "balanced_class": _Criterion((), "mean class accuracy"),
    "pseudo_erm_worst": _Criterion(("erm_logits",), "min accuracy over (label x ERM-correct)"),
    "pseudo_erm_balanced": _Criterion(("erm_logits",), "mean accuracy over (label x ERM-correct)"),
    "pseudo_norm_worst": _Criterion(("erm_norms",), "min accuracy over (label x ERM norm >= median)"),
    "pseudo_norm_gmm_worst": _Criterion(("erm_norms",), "min accuracy over (label x ERM norm >= mixture threshold)"),
    "neg_worst_gradnorm": _Criterion(("erm_norms",), "-max mean ||p - e_y|| over (label x ERM norm >= median)"),
}
"""The registered criteria: name -> what it needs besides logits and labels."""


def list_criteria() -> list[str]:
    """Names of the registered criteria, in registry order."""
    return list(CRITERIA)


def _as_logits(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise GradTuneInputError(f"{name} must have shape (N, C) with C >= 2, got {a.shape}")
    return a


def _as_labels(y: Any, n: int, c: int) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise GradTuneInputError(f"labels must have shape ({n},), got {a.shape}")
    if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= c):
        raise GradTuneInputError(f"labels must be integers in 0..{c - 1}")
    return a.astype(np.int64)


def pseudo_groups(labels: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """Pseudo-group ids ``2 * label + flag`` (N,) for a boolean (N,) ``flag``."""
    return 2 * labels + flag.astype(np.int64)


def group_accuracy_summary(correct: np.ndarray, gid: np.ndarray, n_groups: int,
                           min_group_size: int) -> np.ndarray:
    """Accuracies (G',) of the pseudo-groups that count (size >= ``min_group_size``,
    or every non-empty group if none is that large)."""
    counts = np.bincount(gid, minlength=n_groups)
    hits = np.bincount(gid, weights=correct.astype(np.float64), minlength=n_groups)
    keep = counts >= min_group_size
    if not keep.any():
        keep = counts > 0
    return hits[keep] / counts[keep]


def _group_means(values: np.ndarray, gid: np.ndarray, n_groups: int, min_group_size: int) -> np.ndarray:
    counts = np.bincount(gid, minlength=n_groups)
    sums = np.bincount(gid, weights=values, minlength=n_groups)
    keep = counts >= min_group_size
    if not keep.any():
        keep = counts > 0
    return sums[keep] / counts[keep]


def _residual_norms(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """||softmax(z) - e_y||_2 per row (N,), with 1 - p_y as the sum of the other classes."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(p.shape[0])
    other = p.copy()
    other[rows, labels] = 0.0
    one_minus = other.sum(axis=1)
    return np.sqrt((other * other).sum(axis=1) + one_minus * one_minus)


class LabelFreeScorer:
    """Score candidate heads on fixed selection rows with any registered criterion.

    Parameters
    ----------
    labels : array-like (N,)
        Class labels of the selection rows.
    n_classes : int
        C.
    erm_logits : array-like (N, C), optional
        The ERM head's logits on the same rows (for ``pseudo_erm_*``).
    erm_norms : array-like (N,), optional
        The ERM head's per-row last-layer gradient norms (for the norm criteria).
    norm_threshold : float, optional
        Split of ``pseudo_norm_gmm_worst``; default: fitted on ``erm_norms``
        (two-component log-norm mixture, ``seed``), the median if the fit fails.
    min_group_size : int, default=10
    seed : int, default=0
        Seeds the mixture fit (only used when ``norm_threshold`` is None).
    """

    def __init__(self, labels: Any, n_classes: int, *, erm_logits: Any = None, erm_norms: Any = None,
                 norm_threshold: float | None = None, min_group_size: int = 10, seed: int = 0) -> None:
        self.n_classes = check_positive_int(n_classes, "n_classes")
        if self.n_classes < 2:
            raise GradTuneInputError("n_classes must be >= 2")
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        lab = np.asarray(labels)
        if lab.ndim != 1:
            raise GradTuneInputError(f"labels must be 1-dimensional (N,), got shape {lab.shape}")
        self.labels = _as_labels(lab, lab.shape[0], self.n_classes)
        n = self.labels.shape[0]
        if n == 0:
            raise GradTuneInputError("the selection rows are empty")
        self.min_group_size = check_positive_int(min_group_size, "min_group_size")
        self._groups: dict[str, np.ndarray] = {}
        self.info: dict[str, Any] = {}
        if erm_logits is not None:
            el = _as_logits(erm_logits, "erm_logits")
            if el.shape != (n, self.n_classes):
                raise GradTuneInputError(f"erm_logits must have shape ({n}, {self.n_classes}), got {el.shape}")
            self._groups["erm"] = pseudo_groups(self.labels, el.argmax(axis=1) == self.labels)
        if erm_norms is not None:
            en = check_scores(erm_norms, "erm_norms")
            if en.shape != (n,):
                raise GradTuneInputError(f"erm_norms must have shape ({n},), got {en.shape}")
            med = float(np.median(en))
            self._groups["norm"] = pseudo_groups(self.labels, en >= med)
            self._erm_norms = en
            self._norm_threshold = norm_threshold
            self._seed = seed
            self.info = {"norm_median": med, "high_share_median": float((en >= med).mean())}
        self._fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
            "accuracy": lambda z, ok: float(ok.mean()),
            "worst_class": lambda z, ok: float(self._accs(ok, self.labels, self.n_classes).min()),
            "balanced_class": lambda z, ok: float(self._accs(ok, self.labels, self.n_classes).mean()),
            "pseudo_erm_worst": lambda z, ok: float(self._accs(ok, self._need("erm"), 2 * self.n_classes).min()),
            "pseudo_erm_balanced": lambda z, ok: float(self._accs(ok, self._need("erm"), 2 * self.n_classes).mean()),
            "pseudo_norm_worst": lambda z, ok: float(self._accs(ok, self._need("norm"), 2 * self.n_classes).min()),
            "pseudo_norm_gmm_worst": lambda z, ok: float(
                self._accs(ok, self._need("norm_gmm"), 2 * self.n_classes).min()),
            "neg_worst_gradnorm": lambda z, ok: -float(_group_means(
                _residual_norms(z, self.labels), self._need("norm"), 2 * self.n_classes,
                self.min_group_size).max()),
        }

    def _need(self, kind: str) -> np.ndarray:
        if kind == "norm_gmm" and kind not in self._groups and "norm" in self._groups:
            self._groups[kind] = self._gmm_groups()
        if kind not in self._groups:
            what = "erm_logits" if kind == "erm" else "erm_norms"
            raise GradTuneInputError(f"this criterion needs {what}; pass it to the scorer")
        return self._groups[kind]

    def _gmm_groups(self) -> np.ndarray:
        """Pseudo-groups split at the mixture threshold (fitted once, on first use)."""
        en = self._erm_norms
        thr = self._norm_threshold
        if thr is None:
            from gradtune.selection.auto_k import fit_log_norm_mixture

            try:
                thr = fit_log_norm_mixture(en, seed=self._seed)["threshold"]
            except GradTuneInputError:
                thr = float("nan")
            if not np.isfinite(thr):
                thr = self.info["norm_median"]
        self.info.update(norm_threshold=float(thr), high_share_threshold=float((en >= float(thr)).mean()))
        return pseudo_groups(self.labels, en >= float(thr))

    def _accs(self, ok: np.ndarray, gid: np.ndarray, n_groups: int) -> np.ndarray:
        return group_accuracy_summary(ok, gid, n_groups, self.min_group_size)

    def available(self) -> list[str]:
        """Criteria whose inputs this scorer has."""
        have = {"erm_logits": "erm" in self._groups, "erm_norms": "norm" in self._groups}
        return [k for k, v in CRITERIA.items() if all(have[n] for n in v.needs)]

    def __call__(self, name: str, logits: Any) -> float:
        """The criterion ``name`` of a candidate's logits (N, C); larger is better."""
        if name not in CRITERIA:
            raise GradTuneInputError(f"unknown criterion {name!r}; available: {list(CRITERIA)}")
        z = _as_logits(logits, "logits")
        if z.shape != (self.labels.shape[0], self.n_classes):
            raise GradTuneInputError(f"logits must have shape ({self.labels.shape[0]}, {self.n_classes}), got {z.shape}")
        if not np.isfinite(z).all():
            return float("-inf")  # a diverged candidate is never chosen
        ok = z.argmax(axis=1) == self.labels
        return self._fns[name](z, ok)

    def score_all(self, logits: Any, names: list[str] | None = None) -> dict[str, float]:
        """Every available (or every named) criterion of one candidate."""
        return {n: self(n, logits) for n in (names or self.available())}


def criterion(name: str, logits: Any, labels: Any, *, erm_logits: Any = None, erm_norms: Any = None,
              norm_threshold: float | None = None, min_group_size: int = 10, seed: int = 0) -> float:
    """One label-free criterion of a candidate (larger is better).

    Parameters
    ----------
    name : str
        A key of :data:`CRITERIA`.
    logits : array-like (N, C)
        The candidate's logits on the selection rows.
    labels : array-like (N,)
        Their class labels.
    erm_logits : array-like (N, C), optional
        The ERM head's logits on the same rows (``pseudo_erm_*``).
    erm_norms : array-like (N,), optional
        The ERM head's gradient norms on the same rows (norm criteria).
    norm_threshold, min_group_size, seed
        See :class:`LabelFreeScorer`.

    Returns
    -------
    float
    """
    if name not in CRITERIA:
        raise GradTuneInputError(f"unknown criterion {name!r}; available: {list(CRITERIA)}")
    z = _as_logits(logits, "logits")
    scorer = LabelFreeScorer(labels, z.shape[1], erm_logits=erm_logits, erm_norms=erm_norms,
                             norm_threshold=norm_threshold, min_group_size=min_group_size, seed=seed)
    return scorer(name, z)
