"""Pseudo-groups of a bundle's validation halves, and DFR run on them ("dfr-xrm").

:func:`bundle_pseudo_groups` fits XRM's twins (:mod:`gradtune.groups.xrm`) on a pool of
rows (by default the ``train`` rows when the bundle has them, else the ``heldout``
rows) and gives both validation halves pseudo-groups from the fitted twins. It reads features, class labels and,
for some inferences, the ERM head or ``early_logits``; never ``groups``,
``attributes`` or ``test`` rows.

Which features the inference sees (``features=``):

* ``"auto"`` (default): the bundle's ``encoder_features`` (a general-purpose frozen
  encoder) when present, else ``features`` (the ERM head's inputs). The research
  behind this default: on the ERM model's own penultimate features the shortcut is
  entangled with the class, and XRM's twins find the minority poorly; on the frozen
  encoder's features they find it well;
* ``"encoder"``: ``encoder_features``, an error if the bundle has none;
* ``"features"``: ``features``.

Pseudo-group ids are ``2 * label + minority`` (G = 2C) for every inference here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from gradtune._params import declare
from gradtune._validation import check_choice, check_positive_int
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle, SplitView
from gradtune.groups.base import InferredGroups
from gradtune.groups.xrm import XRMConfig, XRMTwins, fit_xrm
from gradtune.methods.base import MethodResult, register_method
from gradtune.methods.dfr import DFRMethod, dfr_retrain

__all__ = ["PseudoGroups", "TwinsCache", "bundle_pseudo_groups", "inference_features", "DFRInferredMethod",
           "FEATURE_SOURCES", "merge_small_groups"]

FEATURE_SOURCES = ("auto", "encoder", "features")
POOLS = ("auto", "heldout", "train+heldout", "train")

#: The inference's features, the twins' rule and their rows: shared by every method that
#: infers XRM pseudo-groups with :func:`bundle_pseudo_groups`.
FEATURES = declare("auto", "features the group inference reads ('auto': encoder_features when present)",
                   choices=FEATURE_SOURCES)
RULE = declare("average", "which twin prediction makes a row minority", choices=("average", "either"))
POOL = declare("auto", "rows the XRM twins are fitted on ('auto': train rows when present)", choices=POOLS)


@dataclass
class PseudoGroups:
    """Pseudo-groups of the two validation halves.

    held, sel : np.ndarray (n_heldout,), (n_selection,) int64 ids ``2 * label + minority``
    held_score, sel_score : np.ndarray float64, higher = more likely minority
    n_groups : int (2C)
    info : dict, JSON-friendly (which features, counts)
    """

    held: np.ndarray
    sel: np.ndarray
    held_score: np.ndarray
    sel_score: np.ndarray
    n_groups: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TwinsCache:
    """XRM twins fitted on a bundle's ``train`` rows, kept for later pseudo-group readings of the
    same bundle with its validation rows dealt anew into halves (``gradtune-auto``'s votes).

    Twins fitted on the ``train`` rows read no validation row, so every dealing of the halves
    gets the same twins; :func:`bundle_pseudo_groups` still reads each half from them per call
    (cheap: a row's pseudo-group depends on that row and the twins only). Pools holding
    ``heldout`` rows are never cached: a dealing changes them.

    entries : {(seed, features used, XRMConfig, n_classes):
               (the bundle's feature array, train row ids (N,), train labels (N,), XRMTwins)}
        Kept to check that a later call reads the same rows: the same feature array object
        (a re-dealt bundle shares it), the same row ids and labels; else the twins are fitted anew.
    """

    entries: dict[tuple[int, str, XRMConfig, int | None],
                  tuple[np.ndarray | None, np.ndarray, np.ndarray, XRMTwins]] = field(default_factory=dict)

    def twins(self, bundle: EmbeddingBundle, train: SplitView, x_tr: np.ndarray, used: str, *, seed: int,
              config: XRMConfig | None) -> XRMTwins:
        """The twins :func:`~gradtune.groups.xrm.fit_xrm` fits on ``x_tr`` (N, d), the ``train``
        rows' ``used`` features, and their labels: from the cache when fitted on the same rows."""
        config = XRMConfig() if config is None else config
        key = (seed, used, config, bundle.n_classes)
        source = bundle.encoder_features if used == "encoder_features" else bundle.features
        hit = self.entries.get(key)
        if (hit is not None and hit[0] is source and np.array_equal(hit[1], train.index)
                and np.array_equal(hit[2], train.labels)):
            return hit[3]
        twins = fit_xrm(x_tr, train.labels, seed=seed, config=config, n_classes=bundle.n_classes)
        self.entries[key] = (source, train.index, train.labels, twins)
        return twins


def inference_features(bundle: EmbeddingBundle, view: SplitView, source: str) -> tuple[np.ndarray, str]:
    """The (n, e) features of ``view`` the inference runs on, and their name."""
    check_choice(source, "features", FEATURE_SOURCES)
    if source == "encoder" and bundle.encoder_features is None:
        raise BundleError("features='encoder' needs the bundle's 'encoder_features' array (a frozen "
                          "encoder's features of every row); store them, or use features='auto'")
    if source != "features" and view.encoder_features is not None:
        return view.encoder_features, "encoder_features"
    return view.features, "features"


def bundle_pseudo_groups(bundle: EmbeddingBundle, *, seed: int, features: str = "auto",
                         config: XRMConfig | None = None, rule: str = "average",
                         pool: str = "auto", cache: TwinsCache | None = None) -> PseudoGroups:
    """XRM pseudo-groups of the ``heldout`` (fitted) and ``selection`` (assigned) rows.

    Parameters
    ----------
    bundle : EmbeddingBundle
        With ``heldout`` and ``selection`` rows.
    seed : int
        Seeds the twins' halves, batches and flips.
    features : {"auto", "encoder", "features"}, default="auto"
        See the module docstring.
    config : XRMConfig, optional
    rule : {"average", "either"}, default="average"
        Which twin prediction defines a mistake (:mod:`gradtune.groups.xrm`); the same
        rule labels both halves.
    pool : {"auto", "train", "heldout", "train+heldout"}, default="auto"
        Rows the twins are fitted on (their features and class labels only).
        ``"train"``: the training rows, as XRM itself runs on training data; both
        validation halves are then assigned by the averaged twins. The training rows
        carry the shortcut the ERM model learned, whatever the held-out set's make-up:
        where the held-out set is group-balanced its rows alone hold no shortcut to
        discover. ``"heldout"``: the held-out rows (the selection rows are assigned).
        ``"train+heldout"``: both. ``"auto"``: ``"train"`` when the bundle has train
        rows, else ``"heldout"``.
    cache : TwinsCache, optional
        With ``pool`` resolved to ``"train"``, twins fitted by an earlier call on the same
        bundle (any dealing of its validation halves) are reused; the result is the same.

    Returns
    -------
    PseudoGroups
    """
    seed = check_positive_int(seed, "seed", allow_zero=True)
    check_choice(pool, "pool", POOLS)
    held = bundle.view("heldout")
    sel = bundle.view("selection")
    x_held, used = inference_features(bundle, held, features)
    x_sel, _ = inference_features(bundle, sel, features)
    if pool == "auto":
        pool = "train" if bundle.has_split("train") else "heldout"
    if pool == "train":
        train = bundle.view("train")
        x_tr, used_tr = inference_features(bundle, train, features)
        twins = (fit_xrm(x_tr, train.labels, seed=seed, config=config, n_classes=bundle.n_classes)
                 if cache is None else cache.twins(bundle, train, x_tr, used_tr, seed=seed, config=config))
        g_held = twins.assign(x_held, held.labels, rule=rule)
        g_sel = twins.assign(x_sel, sel.labels, rule=rule)
        return _pseudo(g_held, g_sel, twins, used, rule, pool)
    if pool == "train+heldout":
        train = bundle.view("train")
        x_tr, _ = inference_features(bundle, train, features)
        x_pool = np.concatenate([x_tr, x_held])
        y_pool = np.concatenate([train.labels, held.labels])
    else:
        x_pool, y_pool = x_held, held.labels
    twins = fit_xrm(x_pool, y_pool, seed=seed, config=config, n_classes=bundle.n_classes)
    g_pool = twins.pool_groups(x_pool, y_pool, rule=rule)
    n_held = len(held)
    g_held = _tail(g_pool, n_held)
    g_sel = twins.assign(x_sel, sel.labels, rule=rule)
    return _pseudo(g_held, g_sel, twins, used, rule, pool)


def _pseudo(g_held: InferredGroups, g_sel: InferredGroups, twins: XRMTwins, used: str, rule: str,
            pool: str) -> PseudoGroups:
    info = {
        "inference": "xrm",
        "features": used,
        "pool": pool,
        "rule": rule,
        "heldout_minority": int(g_held.minority.sum()),
        "selection_minority": int(g_sel.minority.sum()),
        "flipped": int(twins.n_flipped),
    }
    return PseudoGroups(g_held.groups, g_sel.groups, g_held.scores, g_sel.scores,
                        int(g_held.n_groups), info)


def _tail(groups: InferredGroups, n: int) -> InferredGroups:
    """The last ``n`` rows of a pool's pseudo-groups (the held-out rows)."""
    return InferredGroups(groups.groups[-n:], groups.n_groups, groups.minority[-n:],
                          groups.scores[-n:], groups.method, groups.info)


@register_method
@dataclass
class DFRInferredMethod(DFRMethod):
    """DFR on XRM-inferred pseudo-groups: no group label anywhere.

    The validation halves get pseudo-groups from :func:`bundle_pseudo_groups`; DFR's
    procedure (:func:`~gradtune.methods.dfr.dfr_retrain`: C tuned by worst pseudo-group
    accuracy on the selection half, then averaged fits on pseudo-group-balanced
    subsamples of both halves) runs on them. A class whose pseudo-minority is nearly
    empty in a half is kept as one group (:func:`merge_small_groups`).

    Parameters
    ----------
    features : {"auto", "encoder", "features"}, default="auto"
    rule : {"average", "either"}, default="average"
    pool : {"auto", "train", "heldout", "train+heldout"}, default="auto"
        See :func:`bundle_pseudo_groups`.
    c_grid, num_retrains, scaler_fit, max_iter, tol
        As in :class:`~gradtune.methods.dfr.DFRMethod`.
    """

    name = "dfr-xrm"
    description = "DFR on XRM-inferred groups (frozen-encoder features when present): no group labels"
    uses_group_labels_train: ClassVar[bool] = False
    uses_group_labels_val: ClassVar[bool] = False

    features: str = FEATURES.field()
    rule: str = RULE.field()
    pool: str = POOL.field()

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        pg = bundle_pseudo_groups(bundle, seed=seed, features=self.features, rule=self.rule,
                                  pool=self.pool)
        held, sel = bundle.view("heldout"), bundle.view("selection")
        g_held, g_sel = merge_small_groups(pg.held, held.labels, pg.sel, sel.labels, int(bundle.n_classes))
        res = dfr_retrain(self, bundle, g_held, g_sel, seed=seed)
        res.diagnostics["pseudo_groups"] = pg.info
        res.diagnostics["inferred_minority_rows"] = np.concatenate(
            [held.index[pg.held % 2 == 1], sel.index[pg.sel % 2 == 1]]).tolist()
        return res


def merge_small_groups(g_held: np.ndarray, y_held: np.ndarray, g_sel: np.ndarray, y_sel: np.ndarray,
                       n_classes: int, min_rows: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Merge a class's two pseudo-groups where either holds fewer than ``min_rows`` rows in
    either half, so that balanced subsampling and the worst-group score never rest on a
    handful of rows.

    Parameters
    ----------
    g_held, y_held : (n_heldout,) int64 pseudo-groups ``2 * y + m`` and labels
    g_sel, y_sel : (n_selection,) the same for the selection half
    n_classes : int
    min_rows : int, default 5

    Returns
    -------
    (g_held, g_sel) with ``2 * y + 1`` mapped to ``2 * y`` for the merged classes.
    """
    size = 2 * n_classes
    small = (np.minimum(np.bincount(g_held, minlength=size), np.bincount(g_sel, minlength=size))
             < min_rows).reshape(n_classes, 2).any(axis=1)          # (C,) classes to merge
    merge = np.repeat(small, 2) & (np.arange(size) % 2 == 1)        # (2C,) ids to fold
    target = np.where(merge, np.arange(size) - 1, np.arange(size))
    return target[g_held], target[g_sel]
