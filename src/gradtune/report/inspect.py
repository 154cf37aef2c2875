"""What the model learned: the label-free groups of a bundle's validation rows, and their rows.

:func:`inspect_groups` runs the label-free group inference the methods use (XRM twins,
:func:`gradtune.methods.inferred.bundle_pseudo_groups`) on a bundle and returns, per
inferred group (class x majority/minority), its size, the ERM head's accuracy on it
and, for each inferred minority, its most *typical* rows (closest to the group's mean
in the features the inference saw) and its most *confident* rows (highest minority
score). Looking at those rows is how a practitioner names the shortcut ("all blue
backgrounds", "all reviews with 'not'").

Nothing here reads ``groups`` or ``attributes`` to choose rows. When the bundle has
``groups``, the share of the shown rows that lie in a true minority group is reported
next to them as a diagnostic (``purity``), computed after the rows are chosen.

:mod:`gradtune.report.gallery` renders the result as an HTML gallery and Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtune._validation import check_positive_int
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle

__all__ = ["InspectedGroup", "GroupInspection", "inspect_groups", "true_minority_groups", "head_predictions"]

SPLITS = ("heldout", "selection")
"""The rows inspected: both validation halves (never the test rows)."""


@dataclass
class InspectedGroup:
    """One inferred group of the validation rows.

    group : int, the pseudo-group id ``2 * label + minority``
    label : int, its class; minority : bool
    size : int, rows in the group; erm_accuracy : float or None, the ERM head's accuracy on them
    typical, confident : np.ndarray of bundle row indices (empty for a majority group),
        the rows closest to the group's mean / with the highest minority score, best first
    scores : dict row -> minority score of the shown rows
    purity : float or None, diagnostic: share of the shown rows in a true minority group
    true_groups : dict true-group name -> rows of this inferred group in it (diagnostic)
    """

    group: int
    label: int
    minority: bool
    name: str
    size: int
    erm_accuracy: float | None
    typical: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    confident: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: dict[int, float] = field(default_factory=dict)
    purity: float | None = None
    true_groups: dict[str, int] = field(default_factory=dict)

    @property
    def shown(self) -> np.ndarray:
        """The rows shown for this group (typical first, then confident), without repeats."""
        return np.asarray(list(dict.fromkeys([*self.typical.tolist(), *self.confident.tolist()])), dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "label": self.label, "minority": self.minority, "name": self.name,
                "size": self.size, "erm_accuracy": self.erm_accuracy, "typical": self.typical.tolist(),
                "confident": self.confident.tolist(), "purity": self.purity, "true_groups": self.true_groups}


@dataclass
class GroupInspection:
    """The result of :func:`inspect_groups`.

    groups : one :class:`InspectedGroup` per inferred group (2C of them)
    rows : (n,) bundle row indices of the inspected (validation) rows
    pseudo : (n,) their pseudo-group ids; scores : (n,) their minority scores
    erm_accuracy : float, the ERM head's accuracy on all inspected rows
    info : how the groups were inferred (features, pool, seed, counts)
    bundle : the bundle inspected (built from the model and loaders when those were given)
    images : (N, H, W[, 3]) uint8 images of the bundle's rows kept from the loader's batches, or None
    """

    groups: list[InspectedGroup]
    rows: np.ndarray
    pseudo: np.ndarray
    scores: np.ndarray
    erm_accuracy: float | None
    class_names: list[str]
    info: dict[str, Any]
    bundle: EmbeddingBundle | None = None
    images: np.ndarray | None = None

    @property
    def minorities(self) -> list[InspectedGroup]:
        return [g for g in self.groups if g.minority]

    def to_dict(self) -> dict[str, Any]:
        return {"erm_accuracy": self.erm_accuracy, "n_rows": int(self.rows.size), "info": self.info,
                "groups": [g.to_dict() for g in self.groups]}


def head_predictions(bundle: EmbeddingBundle, rows: np.ndarray) -> np.ndarray | None:
    """The ERM head's predicted classes of ``rows`` (n,): from ``logits``, else from the
    stored head applied to ``features``; None when the bundle has neither."""
    if bundle.logits is not None:
        return np.argmax(bundle.logits[rows], axis=1)
    if bundle.head_weight is not None:
        bias = 0.0 if bundle.head_bias is None else bundle.head_bias
        return np.argmax(bundle.features[rows] @ bundle.head_weight.T + bias, axis=1)
    return None


def true_minority_groups(bundle: EmbeddingBundle) -> np.ndarray | None:
    """Ids of the true groups smaller than their class's average group in the training rows
    (the training rows of each class, else all rows); None without ``groups``.

    A class's groups are the group ids its rows take; the rule is the one the demo's
    inference-quality diagnostic uses.
    """
    if bundle.groups is None:
        return None
    rows = bundle.split == "train" if bundle.has_split("train") else np.ones(len(bundle.labels), bool)
    n_groups = int(bundle.groups.max()) + 1
    out = []
    for c in np.unique(bundle.labels[rows]):
        counts = np.bincount(bundle.groups[rows & (bundle.labels == c)], minlength=n_groups)
        present = np.flatnonzero(counts)
        out += [int(g) for g in present if counts[g] < counts[present].mean()]
    return np.asarray(sorted(out), dtype=np.int64)


def inspect_groups(bundle: Any, heldout_loader: Any = None, *, seed: int = 0, n_rows: int = 8,
                   features: str = "auto", encoder: Any = None, train_loader: Any = None, layer: Any = None,
                   device: Any = None, split_seed: int = 0) -> GroupInspection:
    """Infer groups without labels and pick the rows that show what each minority is.

    Parameters
    ----------
    bundle : EmbeddingBundle, or a PyTorch model with ``heldout_loader``
        A bundle with validation rows (``heldout``/``selection``, or ``val``, halved by
        ``seed``) and, for the pool the twins are fitted on, ``train`` rows when it has
        them. A model (a classifier whose logits come from an ``nn.Linear``) is read as
        :func:`gradtune.repair` reads it: ``heldout_loader``, ``encoder``,
        ``train_loader``, ``layer``, ``device`` and ``split_seed`` mean the same there
        (see :func:`gradtune.report.model_rows.model_bundle`); image batches are kept
        for the gallery's thumbnails.
    seed : int, default=0
        Seeds the inference (and the halving of ``val`` rows when needed).
    n_rows : int, default=8
        Typical rows and confident rows shown per inferred minority (each).
    features : {"auto", "encoder", "features"}, default="auto"
        The features the inference reads (see :mod:`gradtune.methods.inferred`); the
        typical rows are measured in the same features.

    Returns
    -------
    GroupInspection
    """
    from gradtune.methods.inferred import bundle_pseudo_groups, inference_features

    seed = check_positive_int(seed, "seed", allow_zero=True)
    n_rows = check_positive_int(n_rows, "n_rows")
    images = None
    if heldout_loader is not None:
        from gradtune.report.model_rows import model_bundle

        bundle, images = model_bundle(bundle, heldout_loader, encoder=encoder, train_loader=train_loader,
                                      layer=layer, device=device, split_seed=check_positive_int(
                                          split_seed, "split_seed", allow_zero=True))
    elif not isinstance(bundle, EmbeddingBundle):
        raise BundleError(f"inspect_groups needs an EmbeddingBundle, or a model with a heldout_loader; got "
                          f"{type(bundle).__name__} without a loader")
    bundle = bundle.resolve_heldout(seed)
    for s in SPLITS:
        if not bundle.has_split(s):
            raise BundleError(f"inspecting groups needs the bundle's {s!r} rows; the bundle has none")
    pg = bundle_pseudo_groups(bundle, seed=seed, features=features)
    views = [bundle.view(s) for s in SPLITS]
    rows = np.concatenate([v.index for v in views])
    pseudo = np.concatenate([pg.held, pg.sel]).astype(np.int64)
    scores = np.concatenate([pg.held_score, pg.sel_score]).astype(np.float64)
    x = np.concatenate([inference_features(bundle, v, features)[0] for v in views]).astype(np.float64)
    labels = bundle.labels[rows]
    pred = head_predictions(bundle, rows)
    correct = None if pred is None else pred == labels
    minority_ids = true_minority_groups(bundle)
    names = bundle.class_names or [f"class {c}" for c in range(int(bundle.n_classes or labels.max() + 1))]
    true_names = bundle.group_names or ([] if bundle.groups is None
                                        else [f"group {g}" for g in range(int(bundle.groups.max()) + 1)])
    groups = []
    for g in range(pg.n_groups):
        members = np.flatnonzero(pseudo == g)
        label, minority = g // 2, bool(g % 2)
        name = f"{names[label] if label < len(names) else label}, inferred {'minority' if minority else 'majority'}"
        acc = None if correct is None or members.size == 0 else float(correct[members].mean())
        ig = InspectedGroup(g, label, minority, name, int(members.size), acc)
        if bundle.groups is not None and members.size:
            counts = np.bincount(bundle.groups[rows[members]], minlength=len(true_names))
            ig.true_groups = {true_names[t]: int(counts[t]) for t in np.flatnonzero(counts)}
        if minority and members.size:
            # typical: nearest to the group's mean, in standardized inference features
            z = x[members]
            scale = x[labels == label].std(0) + 1e-12
            dist = np.linalg.norm((z - z.mean(0)) / scale, axis=1)
            typical = members[np.argsort(dist, kind="stable")[:n_rows]]
            confident = members[np.argsort(-scores[members], kind="stable")[:n_rows]]
            ig.typical, ig.confident = rows[typical], rows[confident]
            ig.scores = {int(rows[i]): float(scores[i]) for i in np.concatenate([typical, confident])}
            if minority_ids is not None:
                ig.purity = float(np.isin(bundle.groups[ig.shown], minority_ids).mean())
        groups.append(ig)
    info = {**pg.info, "seed": seed, "splits": list(SPLITS), "n_rows_per_list": n_rows,
            "true_minority_groups": None if minority_ids is None else [true_names[g] for g in minority_ids]}
    return GroupInspection(groups, rows, pseudo, scores, None if correct is None else float(correct.mean()),
                           list(names), info, bundle, images)
