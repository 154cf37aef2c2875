"""How well inferred pseudo-groups match true groups: a diagnostic, never used for fitting.

The true minority. Within each class ``c``, look at the true groups its samples fall
in (the non-empty (class, group) cells) and their mean size ``n_c / m_c``, where
``m_c`` is the number of such cells. A cell smaller than that mean is a minority cell,
and its samples are the class's true minority. With two groups per class this is the
smaller group; with several (e.g. one group per identity attribute) it is every group
below the class average; a class whose groups are all the same size, or with a single
group, has no minority. Because cells are (class, group) pairs, group ids that are
shared across classes (an attribute alone) work as well as class-specific ones.

Purity = P(true minority | inferred minority), recall = P(inferred minority | true
minority); each is NaN when its condition never occurs.

Shapes: N samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtune._validation import GradTuneInputError, check_labels
from gradtune.groups.base import InferredGroups

__all__ = ["InferenceQuality", "inference_quality", "true_minority"]


def _ids(x: Any, name: str, n: int | None = None) -> np.ndarray:
    return check_labels(x, None, name, n=n).cpu().numpy()


def true_minority(labels: Any, groups: Any) -> np.ndarray:
    """Boolean (N,): the sample's (class, group) cell is smaller than its class's mean cell.

    Parameters
    ----------
    labels : array-like of shape (N,)
        Class labels (non-negative ints).
    groups : array-like of shape (N,)
        True group ids (non-negative ints).
    """
    y = _ids(labels, "labels")
    g = _ids(groups, "groups", n=y.shape[0])
    if y.size == 0:
        return np.zeros(0, dtype=bool)
    cells, cell_of = np.unique(np.stack([y, g], axis=1), axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    cell_size = np.bincount(cell_of)                              # (K,)
    cell_class = cells[:, 0]
    n_class = np.bincount(y)                                      # samples per class
    m_class = np.bincount(cell_class, minlength=n_class.size)    # cells per class
    # size < n_c / m_c, compared in integers: size * m_c < n_c.
    minority_cell = cell_size * m_class[cell_class] < n_class[cell_class]
    return minority_cell[cell_of]


@dataclass(frozen=True)
class InferenceQuality:
    """Purity and recall of an inferred minority against the true one.

    Attributes
    ----------
    purity, recall : float
        See the module docstring (NaN when undefined).
    n_inferred, n_true, n_both : int
        Inferred minority rows, true minority rows, and rows in both.
    per_class : dict
        ``{class: {"purity", "recall", "n_inferred", "n_true", "n_both"}}``.
    """

    purity: float
    recall: float
    n_inferred: int
    n_true: int
    n_both: int
    per_class: dict[int, dict[str, float]] = field(default_factory=dict)


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def inference_quality(inferred: InferredGroups | Any, labels: Any, groups: Any) -> InferenceQuality:
    """Compare an inferred minority with the true minority of the same rows.

    Parameters
    ----------
    inferred : InferredGroups or array-like of shape (N,), bool
        The inferred groups, or just their minority mask.
    labels : array-like of shape (N,)
    groups : array-like of shape (N,)
        True group ids.

    Returns
    -------
    InferenceQuality
    """
    mask = inferred.minority if isinstance(inferred, InferredGroups) else np.asarray(inferred)
    if mask.ndim != 1 or mask.dtype != np.bool_:
        raise GradTuneInputError(
            f"inferred must be InferredGroups or a bool array of shape (N,), got {mask.dtype} {mask.shape}")
    y = _ids(labels, "labels", n=mask.shape[0])
    truth = true_minority(y, _ids(groups, "groups", n=mask.shape[0]))
    both = mask & truth
    per_class: dict[int, dict[str, float]] = {}
    if y.size:
        c = int(y.max()) + 1
        ni = np.bincount(y[mask], minlength=c)
        nt = np.bincount(y[truth], minlength=c)
        nb = np.bincount(y[both], minlength=c)
        for k in np.unique(y):
            per_class[int(k)] = {"purity": _ratio(int(nb[k]), int(ni[k])),
                                 "recall": _ratio(int(nb[k]), int(nt[k])),
                                 "n_inferred": int(ni[k]), "n_true": int(nt[k]), "n_both": int(nb[k])}
    n_i, n_t, n_b = int(mask.sum()), int(truth.sum()), int(both.sum())
    return InferenceQuality(_ratio(n_b, n_i), _ratio(n_b, n_t), n_i, n_t, n_b, per_class)
