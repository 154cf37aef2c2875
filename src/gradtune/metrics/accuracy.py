"""Accuracy metrics for group robustness, each labelled by its convention.

* ``accuracy``: plain test accuracy.
* ``weighted_accuracy``: per-group accuracies averaged with the TRAIN group
  proportions (the DFR / JTT / Group DRO "average accuracy" on Waterbirds).
* ``mean_group_accuracy``: unweighted mean of the group accuracies.
* ``worst_group_accuracy``: minimum over groups present (WGA).
* ``worst_class_accuracy``: minimum over classes (needs no group labels).

Groups are integer ids, or built from (label, attribute) pairs with
:func:`groups_from_attributes` (``group = label * n_attributes + attribute``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gradtune._validation import GradTuneInputError, check_id_bounds

__all__ = [
    "GroupReport",
    "evaluate",
    "group_accuracies",
    "groups_from_attributes",
    "worst_group_accuracy",
    "worst_class_accuracy",
    "weighted_accuracy",
    "predictions",
]


def _int1d(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise GradTuneInputError(f"{name} must be 1-dimensional (N,), got shape {a.shape}")
    if a.size and a.dtype.kind not in "biu":
        if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
            return a.astype(np.int64)
        raise GradTuneInputError(f"{name} must hold integer ids, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise GradTuneInputError(f"{name} must be >= 0, found {a.min()}")
    a = a.astype(np.int64)
    check_id_bounds(a, name)
    return a


def predictions(logits_or_preds: Any) -> np.ndarray:
    """Argmax of (N, C) logits, or (N,) predictions passed through."""
    if hasattr(logits_or_preds, "detach"):
        logits_or_preds = logits_or_preds.detach().cpu().numpy()
    a = np.asarray(logits_or_preds)
    if a.ndim == 2:
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            rows = int((~np.isfinite(a)).any(axis=1).sum())
            raise GradTuneInputError(f"logits contain NaN or infinite values in {rows} row(s); the model that "
                                     "produced them diverged or is broken")
        return a.argmax(axis=1).astype(np.int64)
    return _int1d(a, "predictions")


def groups_from_attributes(labels: Any, attributes: Any, n_attributes: int | None = None) -> np.ndarray:
    """Group ids ``label * n_attributes + attribute``, shape (N,)."""
    y = _int1d(labels, "labels")
    a = _int1d(attributes, "attributes")
    if y.shape != a.shape:
        raise GradTuneInputError(f"labels {y.shape} and attributes {a.shape} must have the same length")
    n_attr = int(a.max()) + 1 if n_attributes is None else int(n_attributes)
    if a.size and a.max() >= n_attr:
        raise GradTuneInputError(f"attributes go up to {a.max()} but n_attributes={n_attr}")
    return y * n_attr + a


def group_accuracies(preds: Any, labels: Any, groups: Any, n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-group accuracy and count.

    Returns
    -------
    acc : np.ndarray of shape (G,), NaN for groups with no samples
    counts : np.ndarray of shape (G,), int64
    """
    p = predictions(preds)
    y = _int1d(labels, "labels")
    g = _int1d(groups, "groups")
    if not (p.shape == y.shape == g.shape):
        raise GradTuneInputError(f"predictions {p.shape}, labels {y.shape} and groups {g.shape} must have the same length")
    n_g = (int(g.max()) + 1 if g.size else 0) if n_groups is None else int(n_groups)
    if g.size and g.max() >= n_g:
        raise GradTuneInputError(f"groups go up to {g.max()} but n_groups={n_g}")
    counts = np.bincount(g, minlength=n_g)
    correct = np.bincount(g, weights=(p == y).astype(np.float64), minlength=n_g)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
    return acc, counts


def worst_group_accuracy(preds: Any, labels: Any, groups: Any) -> float:
    """Minimum accuracy over the groups that have samples."""
    acc, counts = group_accuracies(preds, labels, groups)
    if not (counts > 0).any():
        raise GradTuneInputError("no samples to evaluate")
    return float(np.nanmin(acc))


def worst_class_accuracy(preds: Any, labels: Any) -> float:
    """Minimum per-class accuracy (recall) over classes present. Needs no group labels."""
    y = _int1d(labels, "labels")
    acc, counts = group_accuracies(preds, y, y)
    return float(np.nanmin(acc))


def weighted_accuracy(group_acc: np.ndarray, weights: Any) -> float:
    """Group accuracies averaged with ``weights`` (e.g. train group counts), ignoring empty groups."""
    w = np.asarray(weights, dtype=np.float64)
    acc = np.asarray(group_acc, dtype=np.float64)
    if w.shape != acc.shape:
        raise GradTuneInputError(f"weights {w.shape} must have one entry per group {acc.shape}")
    mask = ~np.isnan(acc) & (w > 0)
    if not mask.any():
        raise GradTuneInputError("no group has both samples and positive weight")
    return float((acc[mask] * w[mask]).sum() / w[mask].sum())


@dataclass
class GroupReport:
    """All accuracy metrics of one evaluation (fractions in [0, 1]).

    group_accuracy / group_count are lists of length G (None where a group is empty).
    ``weighted_accuracy`` is None unless train group counts were given.
    """

    accuracy: float
    worst_group_accuracy: float | None
    mean_group_accuracy: float | None
    weighted_accuracy: float | None
    worst_class_accuracy: float
    class_accuracy: list[float | None]
    group_accuracy: list[float | None]
    group_count: list[int]
    worst_group: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nan_to_none(a: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in a]


def evaluate(logits_or_preds: Any, labels: Any, groups: Any = None, *, n_groups: int | None = None,
             train_group_counts: Any = None, n_classes: int | None = None) -> GroupReport:
    """Every metric at once.

    Parameters
    ----------
    logits_or_preds : (N, C) logits or (N,) predicted labels
    labels : (N,) true labels
    groups : (N,) group ids, optional (without them only label-free metrics are filled)
    n_groups : int, optional; number of groups (default: max id + 1)
    train_group_counts : (G,) array, optional; weights for ``weighted_accuracy``
    n_classes : int, optional
    """
    p = predictions(logits_or_preds)
    y = _int1d(labels, "labels")
    if p.shape != y.shape:
        raise GradTuneInputError(f"predictions {p.shape} and labels {y.shape} must have the same length")
    if y.size == 0:
        raise GradTuneInputError("no samples to evaluate")
    n_c = n_classes if n_classes is not None else int(max(y.max(), p.max())) + 1
    class_acc, _ = group_accuracies(p, y, y, n_c)
    acc = float((p == y).mean())
    wga = mga = wacc = worst = None
    gacc: list[float | None] = []
    gcount: list[int] = []
    if groups is not None:
        ga, gc = group_accuracies(p, y, groups, n_groups)
        wga = float(np.nanmin(ga))
        mga = float(np.nanmean(ga))
        worst = int(np.nanargmin(ga))
        gacc, gcount = _nan_to_none(ga), [int(c) for c in gc]
        if train_group_counts is not None:
            wacc = weighted_accuracy(ga, train_group_counts)
    return GroupReport(acc, wga, mga, wacc, float(np.nanmin(class_acc)), _nan_to_none(class_acc),
                       gacc, gcount, worst)
