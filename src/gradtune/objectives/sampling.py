"""Which rows a training run sees, and how often: epoch orders, balance weights, balanced subsamples.

* :func:`epoch_order` draws one epoch's sample order (a permutation, or N draws with
  replacement in proportion to weights) from a ``torch.Generator``;
* :func:`class_balance_weights` (torch, for labels) and :func:`inverse_frequency_weights`
  (numpy, for any class or group ids) give every row ``1 / count`` of its key, so that
  each class or group is equally likely per draw;
* :func:`balanced_subsample` keeps equally many rows of every class or group.

Last-layer fine-tuning, the methods and full-network training all draw through these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradtune._validation import GradTuneInputError, make_numpy_rng

__all__ = ["epoch_order", "class_balance_weights", "inverse_frequency_weights", "balanced_subsample"]


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """One epoch's sample order, shape (N,).

    'uniform' is a permutation; 'class_balanced' and 'weighted' draw N indices with
    replacement with probability proportional to ``weights`` (for class balance,
    ``1 / n_class`` of each sample's class, see :func:`class_balance_weights`).
    """
    n = labels.shape[0]
    if sampler == "uniform":
        return torch.randperm(n, generator=generator, device=generator.device)
    if weights is None:
        weights = class_balance_weights(labels)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def class_balance_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample sampling weight ``1 / count(class)``, shape (N,), float64."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].to(torch.float64)


def balanced_subsample(keys: Any, seed: int | np.random.Generator) -> np.ndarray:
    """Indices of a subsample with equally many rows of every distinct key.

    For each distinct value of ``keys`` in increasing order, ``rng.permutation`` of
    that key's row indices is drawn and its first ``m`` entries kept, where ``m`` is
    the smallest key count; the pieces are concatenated in key order. (DFR's and
    Idrissi et al.'s "subsample to the smallest group"; this exact sequence of
    generator calls is the documented protocol, so a seed reproduces a subsample.)

    Parameters
    ----------
    keys : array-like of shape (N,)
        Class or group id of each row.
    seed : int or numpy.random.Generator

    Returns
    -------
    np.ndarray of shape (m * K,), int64, K = number of distinct keys
    """
    k = np.asarray(keys)
    if k.ndim != 1 or k.size == 0:
        raise GradTuneInputError(f"keys must be a non-empty (N,) array, got shape {k.shape}")
    rng = make_numpy_rng(seed)
    values, counts = np.unique(k, return_counts=True)
    m = int(counts.min())
    pieces = [rng.permutation(np.flatnonzero(k == v))[:m] for v in values]
    return np.concatenate(pieces).astype(np.int64)


def inverse_frequency_weights(keys: Any) -> np.ndarray:
    """Per-row weight ``1 / count(key)``, shape (N,), float64 (each key sums to 1)."""
    k = np.asarray(keys)
    if k.ndim != 1 or k.size == 0:
        raise GradTuneInputError(f"keys must be a non-empty (N,) array, got shape {k.shape}")
    _, inv, counts = np.unique(k, return_inverse=True, return_counts=True)
    return 1.0 / counts[inv].astype(np.float64)
