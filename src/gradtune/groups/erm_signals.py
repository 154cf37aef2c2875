"""Pseudo-groups read off an ERM model: early-stop disagreement and gradient-norm splits.

Both split each class in two by a signal the ERM model already gives, with no
training of their own:

* :func:`early_disagreement_groups` (SELF, LaBonte et al. 2023): a sample is in the
  minority when an early checkpoint of the ERM model and the final one predict
  different classes; the ranking score is SELF's ``KL(p_early || p_final)``.
* :func:`grad_norm_groups`: within each class, the samples with the largest
  gradient norm of the cross-entropy w.r.t. the ERM head (GradTune's score, see
  :func:`gradtune.scores.grad_norms`) are the minority.

Shapes: N samples, d penultimate features, C classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradtune._validation import GradTuneInputError, check_features
from gradtune.groups.base import InferredGroups, check_fraction, check_labels_only, class_by_flag
from gradtune.groups.registry import register_group_inference
from gradtune.scores import disagreement_scores, grad_norms

__all__ = ["early_disagreement_groups", "grad_norm_groups", "top_fraction_per_class"]


def _logits(x: Any, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    z = check_features(x, name)
    if z.shape[1] < 2:
        raise GradTuneInputError(f"{name} must have at least 2 columns (classes), got shape {tuple(z.shape)}")
    if shape is not None and tuple(z.shape) != shape:
        raise GradTuneInputError(
            f"{name} has shape {tuple(z.shape)} but logits have shape {shape}; "
            "both must hold the same rows and classes")
    return z


@register_group_inference("early-disagreement", ("logits", "early_logits", "labels"),
                          "SELF: early checkpoint and final model predict differently")
def early_disagreement_groups(logits: Any, early_logits: Any, labels: Any) -> InferredGroups:
    """Class x (early checkpoint's prediction != final prediction).

    Parameters
    ----------
    logits : array-like of shape (N, C)
        The final ERM model's logits on the pool.
    early_logits : array-like of shape (N, C)
        An early checkpoint's logits on the same rows (SELF's "early stop": an early
        epoch or step of the same ERM run).
    labels : array-like of shape (N,)

    Returns
    -------
    InferredGroups
        ``groups = 2 * label + disagree`` (G = 2C); ``minority`` = the argmax
        predictions differ; ``scores`` = ``KL(p_early || p_final)``;
        ``info["n_disagree"]`` the number of minority rows.
    """
    z = _logits(logits, "logits")
    ze = _logits(early_logits, "early_logits", tuple(z.shape))
    y, c = check_labels_only(labels, z.shape[0], z.shape[1])
    disagree = (z.argmax(dim=1) != ze.argmax(dim=1)).cpu().numpy()
    scores = disagreement_scores(ze, z).double().cpu().numpy()
    groups, n_groups = class_by_flag(y, disagree, c)
    return InferredGroups(groups, n_groups, disagree, scores, "early-disagreement",
                          {"n_disagree": int(disagree.sum())})


def top_fraction_per_class(scores: np.ndarray, labels: np.ndarray, fraction: float,
                           n_classes: int) -> np.ndarray:
    """Mark, within each class, the ``ceil(fraction * n_c)`` rows with the largest score.

    Ties go to the lower row index. Vectorized: one sort by (class, -score).

    Parameters
    ----------
    scores : np.ndarray of shape (N,)
    labels : np.ndarray of shape (N,), int64 in ``0..C-1``
    fraction : float in (0, 1)
    n_classes : int

    Returns
    -------
    np.ndarray of shape (N,), bool
    """
    n = labels.shape[0]
    order = np.lexsort((-scores, labels))                  # by class, then score descending
    counts = np.bincount(labels, minlength=n_classes)
    start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - start[labels[order]]
    # ceil, forgiving float noise: 0.1 * 30 is 3.0000000000000004 and must give 3.
    n_top = np.ceil(fraction * counts - 1e-9).astype(np.int64)
    return rank < n_top[labels]


@register_group_inference("grad-norm", ("head_features", "labels", ("weight", "logits")),
                          "top fraction of each class by the ERM head's gradient norm")
def grad_norm_groups(head_features: Any, labels: Any, *, weight: Any = None, bias: Any = None,
                     logits: Any = None, fraction: float = 0.1,
                     include_bias: bool = True) -> InferredGroups:
    """Class x (in the class's top ``fraction`` by last-layer gradient norm).

    Parameters
    ----------
    head_features : array-like of shape (N, d)
        Inputs of the ERM model's last linear layer on the pool.
    labels : array-like of shape (N,)
    weight : array-like of shape (C, d), optional
        The ERM head's weight; needed unless ``logits`` are given.
    bias : array-like of shape (C,), optional
    logits : array-like of shape (N, C), optional
        The head's outputs, instead of ``weight`` and ``bias``.
    fraction : float in (0, 1), default=0.1
        Share of each class taken as its minority, rounded up (``ceil(fraction * n_c)``
        rows of a class of ``n_c``).
    include_bias : bool, default=True
        Include the bias in the gradient (see :func:`gradtune.scores.grad_norms`).

    Returns
    -------
    InferredGroups
        ``groups = 2 * label + top`` (G = 2C); ``scores`` = the gradient norms;
        ``info["fraction"]``.
    """
    fraction = check_fraction(fraction, "fraction")
    if logits is None and weight is None:
        raise GradTuneInputError("grad_norm_groups needs the ERM head: pass weight (and bias) or logits")
    norms = grad_norms(head_features, logits, labels, weight=weight, bias=bias,
                       include_bias=include_bias, backend="torch")
    n = norms.shape[0]
    c = int(logits.shape[1]) if logits is not None else int(np.shape(weight)[0])
    y, c = check_labels_only(labels, n, c)
    scores = norms.double().cpu().numpy()
    top = top_fraction_per_class(scores, y, fraction, c)
    groups, n_groups = class_by_flag(y, top, c)
    return InferredGroups(groups, n_groups, top, scores, "grad-norm", {"fraction": fraction})

