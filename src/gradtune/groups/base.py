"""The result every group-inference method returns, and the input checks they share.

A group-inference method turns what is known about a pool of samples without group
labels (encoder features, class labels, an ERM head's logits) into pseudo-group ids
that a group-aware last-layer method (DFR, Group DRO, group-balanced sampling) can use
in place of true groups.

Shapes: N samples, d features, C classes, G pseudo-groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gradtune._validation import (
    GradTuneInputError,
    check_features,
    check_labels,
)

__all__ = ["InferredGroups", "class_by_flag"]


@dataclass(frozen=True)
class InferredGroups:
    """Pseudo-groups inferred without group labels.

    Attributes
    ----------
    groups : np.ndarray of shape (N,), int64
        Pseudo-group id of each sample, in ``0..n_groups-1``. Some ids may be empty.
    n_groups : int
        Number of pseudo-group ids the method can produce (G).
    minority : np.ndarray of shape (N,), bool
        Whether the sample falls in a pseudo-group the method takes for a minority.
    scores : np.ndarray of shape (N,), float64
        Per-sample score, higher meaning more likely a minority sample.
    method : str
        Name of the method that produced it (a key of ``GROUP_INFERENCE``).
    info : dict
        Method-specific details (fitted objects, chosen hyperparameters, counts).
    """

    groups: np.ndarray
    n_groups: int
    minority: np.ndarray
    scores: np.ndarray
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = np.asarray(self.groups)
        n = g.shape[0] if g.ndim == 1 else -1
        if g.ndim != 1 or g.dtype != np.int64:
            raise GradTuneInputError(f"groups must be an int64 array of shape (N,), got {g.dtype} {g.shape}")
        if isinstance(self.n_groups, bool) or not isinstance(self.n_groups, (int, np.integer)) or self.n_groups < 1:
            raise GradTuneInputError(f"n_groups must be a positive int, got {self.n_groups!r}")
        if n and (g.min() < 0 or g.max() >= self.n_groups):
            raise GradTuneInputError(
                f"groups must lie in 0..{self.n_groups - 1}, found {g.min()}..{g.max()}")
        m = np.asarray(self.minority)
        if m.shape != (n,) or m.dtype != np.bool_:
            raise GradTuneInputError(f"minority must be a bool array of shape ({n},), got {m.dtype} {m.shape}")
        s = np.asarray(self.scores)
        if s.shape != (n,) or s.dtype != np.float64:
            raise GradTuneInputError(f"scores must be a float64 array of shape ({n},), got {s.dtype} {s.shape}")

    def __len__(self) -> int:
        return int(self.groups.shape[0])

    def counts(self) -> np.ndarray:
        """Samples per pseudo-group, shape (G,), int64."""
        return np.bincount(self.groups, minlength=self.n_groups).astype(np.int64)


def class_by_flag(labels: np.ndarray, flag: np.ndarray, n_classes: int) -> tuple[np.ndarray, int]:
    """Pseudo-groups ``2 * label + flag``: each class split by a boolean flag.

    Parameters
    ----------
    labels : np.ndarray of shape (N,), int64 in ``0..C-1``
    flag : np.ndarray of shape (N,), bool
    n_classes : int

    Returns
    -------
    groups : np.ndarray of shape (N,), int64 in ``0..2C-1``
        ``2c`` is class ``c`` without the flag, ``2c + 1`` class ``c`` with it.
    n_groups : int
        ``2 * n_classes``.
    """
    return (2 * labels + flag.astype(np.int64)).astype(np.int64), 2 * int(n_classes)


def check_pool(features: Any, labels: Any, n_classes: int | None = None, *,
               min_rows: int = 1, name: str = "features") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate (N, d) finite features and (N,) labels; return them with C.

    ``n_classes`` defaults to ``labels.max() + 1``; at least two classes are required.
    """
    x = check_features(features, name)
    if x.shape[0] < min_rows:
        raise GradTuneInputError(f"{name} has {x.shape[0]} row(s); this method needs at least {min_rows}")
    if x.shape[1] < 1:
        raise GradTuneInputError(f"{name} must have at least one column, got shape {tuple(x.shape)}")
    y = check_labels(labels, n_classes, n=x.shape[0])
    c = _n_classes(y, n_classes)
    return x, y, c


def check_labels_only(labels: Any, n: int, n_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Validate (N,) labels against a row count; return them as int64 numpy with C."""
    y = check_labels(labels, n_classes, n=n)
    return y.cpu().numpy(), _n_classes(y, n_classes)


def _n_classes(y: torch.Tensor, n_classes: int | None) -> int:
    if n_classes is None:
        c = int(y.max()) + 1 if y.numel() else 0
    else:
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
            raise GradTuneInputError(f"n_classes must be an int, got {n_classes!r}")
        c = int(n_classes)
    if c < 2:
        raise GradTuneInputError(
            f"group inference needs at least 2 classes, got {c}; pass n_classes if some class is absent")
    return c


def check_fraction(value: Any, name: str) -> float:
    """A float in the open interval (0, 1)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GradTuneInputError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise GradTuneInputError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return v


def standardizer(x: torch.Tensor, standardize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean and standard deviation of ``x`` (N, d), each of shape (d,).

    Columns with zero spread get scale 1 (centred only). With ``standardize=False``
    the identity: zeros and ones.
    """
    mean = x.mean(dim=0)
    if not standardize:
        return torch.zeros_like(mean), torch.ones_like(mean)
    scale = x.std(dim=0, unbiased=False)
    return mean, torch.where(scale > 0, scale, torch.ones_like(scale))
