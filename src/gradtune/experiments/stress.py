"""The stress suite: generated and offline shortcut problems, split once into a
development half and a report half.

Label-free repair is easy to tune to a handful of tables and hard to make transfer.
This suite is where ``gradtune-auto``'s defaults are developed (the ``"dev"`` half)
and where they are reported (the ``"report"`` half), never the other way round.

Members come in *families* (one kind of problem, e.g. "a mark tied to one class of
three", "label noise"); they, and the rule that assigns each to a half, are listed in
:mod:`gradtune.experiments.stress_members`. This module builds a member's ERM bundle.

Kinds of member:

* ``"synthetic"``: a :class:`~gradtune.data.synthetic.ShortcutSpec` (linear-Gaussian
  rows). ERM is a class-balanced logistic regression on the rows (``erm="linear"``;
  the bundle's ``features`` and ``encoder_features`` are then the rows themselves) or
  the offline benchmarks' ERM MLP (``erm="mlp"``). The seed changes the rows, the
  held-out / selection split and the ERM fit.
* ``"offline"``: an :class:`~gradtune.experiments.offline.OfflineBenchmark` (Fashion-MNIST
  with injected shortcuts, two classes or three and four with a mark tied to one class,
  Adult, reviews); the seed changes the split and the ERM MLP.

Test rows are group-balanced in every synthetic member; group labels are only read to
evaluate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from gradtune.data.synthetic import ShortcutSpec, make_shortcut_data
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.experiments.offline import build_benchmark_bundle, bundle_split
from gradtune.experiments.stress_members import ROLES, STRESS_SUITE, StressMember, suite_members
from gradtune.models.mlp import MLPConfig, train_erm_mlp

__all__ = ["StressMember", "STRESS_SUITE", "suite_members", "build_member_bundle", "ROLES"]


def _linear_erm(x: np.ndarray, y: np.ndarray, train: np.ndarray, n_classes: int, c: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced L2 logistic regression on the training rows: (C, d) weight, (C,) bias."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    clf.fit(x[train], y[train])
    w, b = clf.coef_, clf.intercept_
    if n_classes == 2:  # sklearn's binary model is one row: logits (-z/2, z/2) give the same softmax
        w = np.stack([-w[0] / 2, w[0] / 2])
        b = np.array([-b[0] / 2, b[0] / 2])
    return w.astype(np.float32), b.astype(np.float32)


def _synthetic_bundle(member: StressMember, seed: int) -> EmbeddingBundle:
    spec = replace(member.spec, build_seed=int(seed))
    data = make_shortcut_data(spec)
    x = np.asarray(data.inputs, dtype=np.float32)
    split = bundle_split(data.split, seed)
    train = np.flatnonzero(split == "train")
    c = spec.n_classes
    if member.erm == "linear":
        w, b = _linear_erm(x, data.labels, train, c, 1.0)
        w_early, b_early = _linear_erm(x, data.labels, train, c, 1e-3)  # a heavily regularized "early" model
        feats, head_w, head_b = x, w, b
        early = x @ w_early.T + b_early
    else:
        erm = train_erm_mlp(x, data.labels, train, seed=seed, n_classes=c,
                            config=MLPConfig(hidden=(64,), epochs=20), early_epoch=1)
        feats, head_w, head_b, early = erm.penultimate, erm.head_weight, erm.head_bias, erm.early_logits
    logits = feats @ head_w.T + head_b
    meta = {"dataset": member.name, "seed": int(seed), "family": "tabular", "stress_family": member.family,
            "spec": spec.to_dict(), "erm": member.erm,
            "train_group_counts": np.bincount(data.groups[train], minlength=spec.n_groups).tolist()}
    return EmbeddingBundle(
        features=feats, labels=data.labels, split=split, logits=logits, early_logits=early,
        encoder_features=x, head_weight=head_w, head_bias=head_b, groups=data.groups,
        attributes=data.attributes, n_classes=c, class_names=list(data.class_names),
        group_names=list(data.group_names), meta=meta)


def build_member_bundle(member: StressMember | str, seed: int, *, cache_dir: Any = None,
                        progress: bool = False) -> EmbeddingBundle:
    """The ERM bundle of one member for one seed (splits ``train`` / ``heldout`` /
    ``selection`` / ``test``; ``encoder_features`` always present)."""
    if isinstance(member, str):
        try:
            member = STRESS_SUITE[member]
        except KeyError:
            raise ValueError(f"unknown stress member {member!r}; choose one of {sorted(STRESS_SUITE)}") from None
    if isinstance(member.spec, ShortcutSpec):
        return _synthetic_bundle(member, seed)
    return build_benchmark_bundle(member.spec, seed, cache_dir=cache_dir, progress=progress)
