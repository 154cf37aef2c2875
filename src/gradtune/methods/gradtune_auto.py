"""gradtune-auto: the recommended label-free pipeline (beyond the paper).

GradTune's selection assumes the held-out set's high-gradient-norm rows are the
minority. Where the held-out set is group-balanced this holds; where it carries the
training bias (a few percent minority, as CelebA's, MultiNLI's and CivilComments'
validation sets do), the top-k set is only partly minority and fine-tuning on it can
lower worst-group accuracy. ``gradtune-auto`` therefore adds a label-free group
inference and lets a label-free criterion choose among repairs, with a guard that
keeps the ERM head when no repair is better. No step reads a group label, an
attribute or a test row.

1. **Group inference** (:func:`~gradtune.methods.inferred.bundle_pseudo_groups`): XRM
   twins fitted on the ``train`` rows (the ``heldout`` rows when the bundle has no
   training rows), on the bundle's ``encoder_features`` when present (else
   ``features``); both validation halves get pseudo-groups from the fitted twins.
   Pseudo-group = class x (the twins contradict the label). Only features and class
   labels of training rows are read.
2. **Candidate heads**, all trained on ``heldout`` rows only:

   * the ERM head itself;
   * ``"retrain"``: DFR's procedure on the pseudo-groups: for each C of ``c_grid``,
     the average of ``num_retrains`` L1 logistic regressions on pseudo-group-balanced
     subsamples (:func:`~gradtune.methods.dfr.fit_l1_logreg`);
   * ``"finetune"``: GradTune's set (top-k + norm-proportional draw, the paper's
     M' = 500, k = 400) fine-tuned from the ERM head with a pseudo-group-balanced
     sampler, one candidate per epoch count of ``epochs_grid`` (snapshots of one run).

3. **Label-free selection**: each candidate's worst pseudo-group accuracy on the
   ``selection`` rows (pseudo-groups with at least ``min_group_size`` rows count). With
   ``crossfit`` (default) every candidate setting is also fitted on the selection half
   and scored on the held-out half, and the two scores are averaged, which halves the
   noise of one small split. The **guard**: the ERM head is kept unless a candidate
   beats its value by more than ``margin`` plus ``margin_z`` binomial standard errors,
   and a candidate whose class-balanced accuracy falls more than ``max_balanced_drop``
   below ERM's is never chosen.
   Two checks come first. Without ``encoder_features`` (and ``features="auto"``) the
   ERM head is kept: the head's own features cannot reveal the shortcut it learned.
   If the ERM head gets fewer than ``min_erm_minority_accuracy`` of the inferred
   minority right, the inference has only repeated the head's mistakes, and the
   head is kept too. The reason is in ``diagnostics["guard_reason"]``.
4. **Refit** (``refit=True``): a chosen ``"retrain"`` candidate is refitted with its C
   on both validation halves, as DFR does. A chosen fine-tune is kept as is.

The paper's ``"gradtune"`` is unchanged and stays the paper's method.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler

from gradtune._seeding import SeedStreams, seed_streams
from gradtune._validation import (
    GradTuneInputError,
    check_choice,
    check_nonneg_float,
    check_positive_int,
)
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.estimator import resolve_set_size
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.groups.xrm import XRMConfig
from gradtune.methods.base import LinearHead, Method, MethodResult, erm_head, register_method
from gradtune.methods.dfr import DFR_C_GRID, fit_l1_logreg, fold_scaler
from gradtune.methods.inferred import FEATURE_SOURCES, bundle_pseudo_groups, merge_small_groups
from gradtune.objectives.sampling import balanced_subsample
from gradtune.scores.grad_norms import grad_norms
from gradtune.selection.label_free import group_accuracy_summary
from gradtune.selection.select import select_finetune_set

__all__ = ["GradTuneAutoMethod", "AutoCandidate", "FAMILIES", "AUTO_EPOCHS"]

FAMILIES = ("retrain", "finetune")
AUTO_EPOCHS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500)


@dataclass
class AutoCandidate:
    """One candidate head: ``family`` ("erm", "retrain", "finetune") and its setting."""

    family: str
    setting: float
    head: LinearHead


def worst_group_value(head: LinearHead, features: np.ndarray, labels: np.ndarray,
                      groups: np.ndarray, n_groups: int, min_group_size: int) -> float:
    """Min accuracy over the pseudo-groups that count (see label_free)."""
    logits = head.logits(features)
    if not np.isfinite(logits).all():
        return float("-inf")
    ok = logits.argmax(axis=1) == labels
    return float(group_accuracy_summary(ok, groups, n_groups, min_group_size).min())


def balanced_accuracy(head: LinearHead, features: np.ndarray, labels: np.ndarray,
                      n_classes: int) -> float:
    """Mean class accuracy of ``head`` on (features (n, d), labels (n,))."""
    logits = head.logits(features)
    if not np.isfinite(logits).all():
        return float("-inf")
    ok = (logits.argmax(axis=1) == labels).astype(np.float64)
    counts = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels, weights=ok, minlength=n_classes)
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


def _keep_erm(head: LinearHead, reason: str, info: dict[str, Any] | None = None) -> MethodResult:
    """The ERM head, unchanged, with the reason in the diagnostics."""
    return MethodResult(head, {"chosen_family": "erm", "chosen_setting": 0.0, "guard_kept_erm": True,
                               "guard_reason": reason, "pseudo_groups": info, "candidates": [],
                               "selected_rows": []})


def _smallest_counted(groups: np.ndarray, n_groups: int, min_group_size: int) -> int:
    """Rows of the smallest pseudo-group the criterion counts."""
    counts = np.bincount(groups, minlength=n_groups)
    keep = counts >= min_group_size
    return int(counts[keep].min() if keep.any() else counts[counts > 0].min())


@register_method
@dataclass
class GradTuneAutoMethod(Method):
    """Label-free group inference + retraining / fine-tuning + label-free selection + guard.

    Parameters
    ----------
    features : {"auto", "encoder", "features"}, default="auto"
        Features the group inference runs on (``"auto"``: ``encoder_features`` if the
        bundle has them).
    pool : {"auto", "train", "heldout", "train+heldout"}, default="auto"
        Rows the XRM twins are fitted on (``"auto"``: the ``train`` rows when the
        bundle has them, else ``heldout``; see
        :func:`~gradtune.methods.inferred.bundle_pseudo_groups`).
    xrm_steps : int, default=2000
        Training steps of the XRM twins.
    families : tuple of {"retrain", "finetune"}, default=both
        Candidate families besides the ERM head.
    c_grid : tuple of float, default=DFR's grid
        Inverse L1 strengths of the ``"retrain"`` candidates.
    num_retrains : int, default=5
        Averaged fits per ``"retrain"`` candidate (and in the refit).
    refit : bool, default=True
        Refit a chosen ``"retrain"`` candidate on both validation halves.
    crossfit : bool, default=True
        Also fit every candidate setting on the selection half and score it on the
        held-out half; the criterion is the mean of the two scores (half the noise of
        one split). The returned head is always the one fitted on the held-out half
        (or the refit).
    size, top_k : int, default=500, 400
        GradTune's set for the ``"finetune"`` candidates (scaled as GradTune does when
        the held-out set is smaller).
    epochs_grid : tuple of int, default=(1, 2, 5, ..., 500)
        Snapshots of the fine-tuning run (the schedule spans ``max(epochs_grid)``).
    finetune : FinetuneConfig
        The fine-tuning loop (the paper's vision setting); ``sampler`` and ``epochs``
        are set by the method.
    min_group_size : int, default=10
        Smallest pseudo-group the criterion counts.
    margin : float, default=0.0
        A candidate must beat ERM's criterion value by more than this ...
    margin_z : float, default=1.0
        ... plus ``margin_z`` standard errors of the difference of the two accuracies
        (binomial, on the smallest pseudo-group counted): a repair must win by more
        than the selection half's noise.
    min_erm_minority_accuracy : float, default=0.2
        If the ERM head classifies fewer than this share of the inferred minority rows
        correctly, the inferred minority is taken for the ERM head's own mistakes (the
        inference saw the same information as the head) and the ERM head is kept: a
        criterion built on those pseudo-groups would reward any change to the head.
    max_balanced_drop : float, default=0.2
        Largest allowed drop of class-balanced selection accuracy below ERM's.
    """

    name = "gradtune-auto"
    description = ("label-free pipeline: XRM pseudo-groups (frozen-encoder features when present), "
                   "group-balanced retraining / GradTune fine-tuning, chosen by worst pseudo-group "
                   "accuracy on the selection half, guarded by the ERM head")
    uses_group_labels_train: ClassVar[bool] = False
    uses_group_labels_val: ClassVar[bool] = False

    features: str = "auto"
    pool: str = "auto"
    xrm_steps: int = 2000
    families: tuple[str, ...] = FAMILIES
    c_grid: tuple[float, ...] = DFR_C_GRID
    num_retrains: int = 5
    refit: bool = True
    crossfit: bool = True
    size: int = 500
    top_k: int = 400
    epochs_grid: tuple[int, ...] = AUTO_EPOCHS
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    min_group_size: int = 10
    margin: float = 0.0
    margin_z: float = 1.0
    max_balanced_drop: float = 0.2
    min_erm_minority_accuracy: float = 0.2

    def _check(self) -> list[int]:
        check_choice(self.features, "features", FEATURE_SOURCES)
        fams = tuple(self.families)
        for f in fams:
            check_choice(f, "families entry", FAMILIES)
        check_positive_int(self.xrm_steps, "xrm_steps")
        check_positive_int(self.num_retrains, "num_retrains")
        check_positive_int(self.min_group_size, "min_group_size")
        check_nonneg_float(self.margin, "margin")
        check_nonneg_float(self.max_balanced_drop, "max_balanced_drop")
        if "retrain" in fams and (not self.c_grid or min(float(c) for c in self.c_grid) <= 0):
            raise GradTuneInputError(f"c_grid must hold positive numbers, got {self.c_grid!r}")
        epochs = sorted({check_positive_int(e, "epochs_grid entry") for e in self.epochs_grid})
        if "finetune" in fams and not epochs:
            raise GradTuneInputError("epochs_grid must not be empty when 'finetune' is a family")
        return epochs

    # ------------------------------------------------------------ candidates
    def _retrain(self, x: np.ndarray, y: np.ndarray, g: np.ndarray, c: float, n_classes: int,
                 rng: np.random.Generator, lib_seed: int) -> LinearHead:
        """Average of ``num_retrains`` L1 fits on pseudo-group-balanced subsamples of (x, y)."""
        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
        coefs, icpts = [], []
        for _ in range(int(self.num_retrains)):
            sub = balanced_subsample(g, rng)
            coef, icpt = fit_l1_logreg(xs[sub], y[sub], float(c), n_classes, random_state=lib_seed)
            coefs.append(coef)
            icpts.append(icpt)
        return fold_scaler(np.mean(coefs, axis=0), np.mean(icpts, axis=0), scaler.mean_,
                           scaler.scale_, n_classes)

    def _finetune(self, x: np.ndarray, y_np: np.ndarray, g: np.ndarray, epochs: list[int],
                  head: LinearHead, rng: np.random.Generator, ft_seed: int) -> tuple[list[AutoCandidate], np.ndarray]:
        """Snapshots of GradTune's set of (x (n, d), y (n,)) fine-tuned with a
        pseudo-group-balanced sampler; and the set's rows (positions in x)."""
        h = torch.as_tensor(x)
        y = torch.as_tensor(y_np)
        norms = grad_norms(h, labels=y, weight=torch.as_tensor(head.weight),
                           bias=torch.as_tensor(head.bias)).numpy()
        size, top_k = resolve_set_size(len(y_np), check_positive_int(self.size, "size"),
                                       check_positive_int(self.top_k, "top_k", allow_zero=True))
        idx = select_finetune_set(norms, size, top_k, seed=rng)
        g_set = g[idx]
        weights = 1.0 / np.bincount(g_set)[g_set]           # pseudo-group-balanced sampling
        cfg = replace(self.finetune, epochs=max(epochs), sampler="weighted",
                      snapshot_epochs=tuple(epochs))
        rows = torch.as_tensor(idx)
        res = finetune_linear(h[rows], y[rows], head.weight, head.bias, cfg, seed=ft_seed,
                              sample_weight=torch.as_tensor(weights))
        return [AutoCandidate("finetune", float(e), LinearHead(*res.snapshots[e])) for e in epochs], idx

    def _candidates(self, x: np.ndarray, y: np.ndarray, g: np.ndarray, epochs: list[int],
                    head: LinearHead, n_classes: int, streams: SeedStreams,
                    ) -> tuple[list[AutoCandidate], np.ndarray]:
        """ERM, then the ``"retrain"`` heads (c_grid order), then the fine-tune snapshots,
        all fitted on (x (n, d), y (n,), pseudo-groups g (n,)); and the fine-tuning set."""
        cands = [AutoCandidate("erm", 0.0, head)]
        rng_retrain = streams.rng("retrain")
        lib_seed = streams.integer("solver")
        if "retrain" in self.families:
            for c in self.c_grid:
                cands.append(AutoCandidate("retrain", float(c), self._retrain(
                    x, y, g, c, n_classes, rng_retrain, lib_seed)))
        idx = np.empty(0, dtype=np.int64)
        if "finetune" in self.families:
            ft, idx = self._finetune(x, y, g, epochs, head, streams.rng("finetune"),
                                     streams.integer("finetune", index=1))
            cands += ft
        return cands, idx

    def _scores(self, cands: list[AutoCandidate], x: np.ndarray, y: np.ndarray, g: np.ndarray,
                n_groups: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        values = np.array([worst_group_value(c.head, x, y, g, n_groups, int(self.min_group_size))
                           for c in cands])
        balanced = np.array([balanced_accuracy(c.head, x, y, n_classes) for c in cands])
        return values, balanced

    # ------------------------------------------------------------------- fit
    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed = check_positive_int(seed, "seed", allow_zero=True)
        epochs = self._check()
        check_nonneg_float(self.min_erm_minority_accuracy, "min_erm_minority_accuracy")
        head = erm_head(bundle)
        n_classes = int(bundle.n_classes)
        held, sel = bundle.view("heldout"), bundle.view("selection")
        if self.features == "auto" and bundle.encoder_features is None:
            return _keep_erm(head, "the bundle has no encoder_features: the ERM model's own features do "
                                   "not reveal the shortcut it learned, so no repair is attempted (store a "
                                   "frozen encoder's features, or pass features='features' to infer from the "
                                   "head's inputs anyway)")
        streams = seed_streams(seed, "xrm", "retrain", "solver", "finetune")
        xrm_seed = streams.integer("xrm", modulo=2**31)
        pg = bundle_pseudo_groups(bundle, seed=xrm_seed, features=self.features, pool=self.pool,
                                  config=XRMConfig(n_steps=int(self.xrm_steps)))
        minority_ok = np.concatenate([head.predict(held.features) == held.labels,
                                      head.predict(sel.features) == sel.labels])[
            np.concatenate([pg.held, pg.sel]) % 2 == 1]
        erm_minority_acc = float(minority_ok.mean()) if minority_ok.size else float("nan")
        if not erm_minority_acc >= float(self.min_erm_minority_accuracy):
            return _keep_erm(head, f"the ERM head classifies {erm_minority_acc:.0%} of the inferred minority "
                                   "correctly: the inference repeats the head's own mistakes, so its "
                                   "pseudo-groups cannot judge a repair", pg.info)
        g_held, g_sel = merge_small_groups(pg.held, held.labels, pg.sel, sel.labels, n_classes)
        n_groups = pg.n_groups
        cands, idx = self._candidates(held.features, held.labels, g_held, epochs, head, n_classes, streams)
        values, balanced = self._scores(cands, sel.features, sel.labels, g_sel, n_groups, n_classes)
        n_small = _smallest_counted(g_sel, n_groups, int(self.min_group_size))
        if self.crossfit:
            # the same candidates fitted on the selection half, scored on the held-out half
            swapped, _ = self._candidates(sel.features, sel.labels, g_sel, epochs, head, n_classes, streams)
            v2, b2 = self._scores(swapped, held.features, held.labels, g_held, n_groups, n_classes)
            values, balanced = (values + v2) / 2, (balanced + b2) / 2
            n_small += _smallest_counted(g_held, n_groups, int(self.min_group_size))
        selected_rows = held.index[idx].tolist()
        se = np.sqrt((values * (1 - values) + values[0] * (1 - values[0])).clip(0) / n_small)
        allowed = balanced >= balanced[0] - float(self.max_balanced_drop)
        allowed &= values > values[0] + float(self.margin) + float(self.margin_z) * se
        allowed[0] = True
        best = int(np.argmax(np.where(allowed, values, -np.inf)))
        if not allowed[1:].any():
            best = 0
        chosen = cands[best]
        model = chosen.head
        refitted = False
        if chosen.family == "retrain" and self.refit:
            x_all = np.concatenate([held.features, sel.features])
            y_all = np.concatenate([held.labels, sel.labels])
            g_all = np.concatenate([g_held, g_sel])
            model = self._retrain(x_all, y_all, g_all, chosen.setting, n_classes,
                                  streams.rng("retrain"), streams.integer("solver"))
            refitted = True
        diag = {
            "pseudo_groups": pg.info,
            "pseudo_group_counts": {"heldout": np.bincount(g_held, minlength=n_groups).tolist(),
                                    "selection": np.bincount(g_sel, minlength=n_groups).tolist()},
            "chosen_family": chosen.family,
            "chosen_setting": chosen.setting,
            "chosen_value": float(values[best]),
            "erm_value": float(values[0]),
            "refitted": refitted,
            "guard_kept_erm": best == 0,
            "guard_reason": "no candidate beat the ERM head by more than the noise" if best == 0 else None,
            "erm_minority_accuracy": erm_minority_acc,
            "candidates": [{"family": c.family, "setting": c.setting, "value": float(v),
                            "balanced_accuracy": float(b), "allowed": bool(a)}
                           for c, v, b, a in zip(cands, values, balanced, allowed, strict=True)],
            "selected_rows": selected_rows,
            # bundle rows the inference calls minority (diagnostic: purity / recall in reports)
            "inferred_minority_rows": np.concatenate([held.index[pg.held % 2 == 1],
                                                      sel.index[pg.sel % 2 == 1]]).tolist(),
        }
        return MethodResult(model, diag)
