"""A small synthetic embedding bundle with a spurious correlation, for method tests.

Features are ``h = mu + s_y * core * u + s_a * spur * v + noise`` (``s_y, s_a`` in
{-1, +1}): the attribute agrees with the label for ``align_train`` of the training
rows and for half of every other split, so an ERM head fitted on ``train`` leans on
the (stronger) spurious direction and fails on the minority groups
``(y, a) = (0, 1), (1, 0)``. Groups are ``2 * y + a``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

from gradtune.embeddings.bundle import EmbeddingBundle


def _rows(rng: np.random.Generator, n: int, align: float, d: int, core: float, spur: float,
          noise: float, u: np.ndarray, v: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, ...]:
    y = rng.integers(0, 2, n)
    agree = rng.random(n) < align
    a = np.where(agree, y, 1 - y)
    sy = 2.0 * y - 1.0
    sa = 2.0 * a - 1.0
    h = mu + sy[:, None] * core * u + sa[:, None] * spur * v + noise * rng.normal(size=(n, d))
    return h.astype(np.float32), y, a


def make_spurious_bundle(*, n_train: int = 400, n_heldout: int = 200, n_selection: int = 200,
                         n_test: int = 400, d: int = 32, seed: int = 0, align_train: float = 0.95,
                         core: float = 1.0, spur: float = 2.0, noise: float = 1.0,
                         with_early: bool = True, align_eval: float = 0.5,
                         encoder_dim: int = 0) -> EmbeddingBundle:
    """A bundle with train/heldout/selection/test rows, an ERM head fitted on ``train``
    (class-balanced logistic regression), its logits, an "early" head's logits, groups.

    ``align_eval`` is the agreement in heldout / selection (0.5: group-balanced; the
    training value: the held-out set carries the training bias); test stays at 0.5.
    ``encoder_dim > 0`` adds ``encoder_features``: the label and the attribute each on
    their own clean axis plus ``encoder_dim - 2`` noise columns (a frozen encoder that
    keeps the two apart)."""
    rng = np.random.default_rng(seed)
    u = np.zeros(d)
    u[0] = 1.0
    v = np.zeros(d)
    v[1] = 1.0
    mu = np.full(d, 0.5)
    parts, splits = [], []
    for name, n, align in (("train", n_train, align_train), ("heldout", n_heldout, align_eval),
                           ("selection", n_selection, align_eval), ("test", n_test, 0.5)):
        parts.append(_rows(rng, n, align, d, core, spur, noise, u, v, mu))
        splits.append(np.full(n, name))
    h = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    a = np.concatenate([p[2] for p in parts])
    split = np.concatenate(splits)
    tr = split == "train"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        erm = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(h[tr], y[tr])
        early = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2).fit(h[tr], y[tr])
    w = erm.coef_[0]
    weight = np.stack([-w / 2, w / 2]).astype(np.float32)
    bias = np.array([-erm.intercept_[0] / 2, erm.intercept_[0] / 2], dtype=np.float32)
    logits = h @ weight.T + bias
    early_logits = None
    if with_early:
        we = early.coef_[0]
        early_logits = (h @ np.stack([-we / 2, we / 2]).T
                        + np.array([-early.intercept_[0] / 2, early.intercept_[0] / 2])).astype(np.float32)
    enc = None
    if encoder_dim > 0:
        if encoder_dim < 2:
            raise ValueError("encoder_dim must be 0 or at least 2")
        enc = 0.3 * rng.normal(size=(y.size, encoder_dim))
        enc[:, 0] += 2.0 * y - 1.0
        enc[:, 1] += 2.0 * a - 1.0
        enc = enc.astype(np.float32)
    return EmbeddingBundle(features=h, labels=y, split=split, logits=logits.astype(np.float32),
                           early_logits=early_logits, encoder_features=enc, head_weight=weight, head_bias=bias,
                           groups=2 * y + a, attributes=a, n_classes=2)
