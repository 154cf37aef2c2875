"""gradtune-auto: the recommended label-free pipeline (beyond the paper).

Where the held-out set carries the training bias (CelebA's, MultiNLI's and
CivilComments' validation sets), GradTune's top-norm set is only partly minority and
fine-tuning on it can lower worst-group accuracy. ``gradtune-auto`` infers groups without
labels, fits repairs on them, and keeps the ERM head unless a repair is better on evidence
the inference cannot rig. No step reads a group label, an attribute or a deployment row's label.

1. **Group inference** (:func:`~gradtune.methods.inferred.bundle_pseudo_groups`): XRM
   twins fitted on the ``train`` rows (the ``heldout`` rows when the bundle has no
   training rows), on the bundle's ``encoder_features`` when present; both validation
   halves get pseudo-groups class x (the twins contradict the label). ``inferences``
   may add ``"erm_error"`` (class x the ERM head is wrong on the row).
2. **Candidate heads**, fitted on one validation half: the ERM head itself;
   ``"retrain"``: DFR's procedure on the pseudo-groups, for each C of ``c_grid`` the average
   of ``num_retrains`` L1 logistic regressions on pseudo-group-balanced subsamples;
   ``"finetune"`` (not a default): GradTune's set fine-tuned from the ERM head with a
   pseudo-group-balanced sampler, one candidate per epoch count of ``epochs_grid``.
3. **Judging on audit cells** (:mod:`gradtune.selection.audit`). Scored on the
   pseudo-groups it was fitted to, any change to the ERM head looks good when those are
   only the head's mistakes. So cells are learned on the *other* half (where the ERM head errs,
   and where the twins' minority lies, per class), candidates fitted on half A are scored on half
   B's cells and (``crossfit``) the other way round; a candidate's value is its worst cell accuracy
   on the mistakes' regions (``value_cells``: or the twins', or the twins' where those keep the head).
4. **The guard.** Is there a shortcut at all? A shortcut's minority differs from the
   other rows along directions other than the head's own;
   :func:`~gradtune.selection.audit.structure_auc` projects those out and asks whether the
   mistakes (``min_structure_auc``) or the twins' minority (``min_twin_auc``) can still be
   told apart (``structure_scale``). Below both, the head is kept (a premise of isotropic Gaussian
   classes; controls with correlated noise, a ReLU layer or image features can pass); so it is
   when a class's region has fewer than ``min_group_size`` rows on a half (``audit_coverage``).
   Then a candidate must (a) beat the ERM head's value with a paired bootstrap bound above
   ``margin`` (``gain_quantile``) and on each half by ``confirm_z`` standard errors,
   (b) lose at most ``max_balanced_drop`` of class-balanced accuracy and raise the mean accuracy
   over the pseudo-groups by at least ``-max_pseudo_drop`` (3 points; weighted by their
   estimated share among unlabeled deployment rows when there are any,
   :mod:`gradtune.selection.shift`), (c) classify at least ``min_repaired_accuracy x 2 /
   C`` of every cell correctly. The best allowed value wins
   (:func:`~gradtune.selection.guard.guard_choice`; its inputs are kept in
   ``diagnostics["guard_inputs"]`` for :func:`~gradtune.selection.guard.replay_guard`). Without
   ``encoder_features`` (and ``features="auto"``) the head is kept too (the reason: WARNING log and
   ``diagnostics["guard_reason"]``). ``split_votes``: the majority of fits on several halvings decides.
5. **Refit** (``refit=True``): a chosen ``"retrain"`` candidate is refitted with its C on both halves, as DFR does.

The defaults were chosen on the development half of the stress suite (:mod:`gradtune.experiments.stress`);
docs/label-free-design.md records what was tried, docs/label-free.md reports the other half.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gradtune._seeding import SeedStreams, seed_streams
from gradtune._validation import GradTuneInputError, check_positive_int
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig
from gradtune.groups.xrm import XRM_CONFIGS, XRMConfig
from gradtune.methods.auto_candidates import (
    AutoCandidate,
    candidate_heads,
    retrain_head,
    reweight_head,
    score_correct,
)
from gradtune.methods.auto_crossfit import (
    PAD_MODES,
    class_folds,
    fold_correct,
    half_counts,
    halves_cells,
    pad_cells,
    refused,
    veto_reason,
)
from gradtune.methods.auto_deployment import DEPLOYMENT_CHOICES, UNWEIGHTED, deployment_rows
from gradtune.methods.auto_inference import auto_pseudo_groups
from gradtune.methods.auto_judge import CELL_ORDER, VALUE_CELLS, judged_record
from gradtune.methods.auto_votes import VOTES_ON, split_vote
from gradtune.methods.base import (
    LinearHead,
    Method,
    MethodResult,
    erm_head,
    finetune_block,
    override,
    param,
    register_method,
)
from gradtune.methods.dfr import DFRMethod
from gradtune.methods.inferred import FEATURES, POOL, RULE, TwinsCache, inference_features
from gradtune.selection.audit import PROJECTIONS, SCALES, structure_gate, uncovered_classes
from gradtune.selection.guard import GuardRule, replay_guards
from gradtune.selection.select import SIZE, TOP_K
from gradtune.selection.shift import deployment_accuracy

__all__ = ["GradTuneAutoMethod", "AutoCandidate", "FAMILIES", "INFERENCES", "AUTO_EPOCHS", "SEED_STREAMS"]

_log = logging.getLogger(__name__)

FAMILIES = ("retrain", "reweight", "finetune")
INFERENCES = ("xrm", "erm_error")
AUTO_EPOCHS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500)
SEED_STREAMS = ("xrm", "retrain", "solver", "finetune", "guard", "shift", "folds", "splits")  # fit's seed_streams names


def _keep_erm(head: LinearHead, reason: str, info: dict[str, Any] | None = None, **extra: Any) -> MethodResult:
    """The ERM head, unchanged, with the reason (and ``extra``) in the diagnostics (``fit`` logs it)."""
    return MethodResult(head, {"chosen_family": "erm", "chosen_setting": 0.0, "guard_kept_erm": True, "guard_reason":
                               reason, "pseudo_groups": info, "candidates": [], "selected_rows": [], **extra})


@register_method
@dataclass
class GradTuneAutoMethod(Method):
    """Label-free group inference + retraining + a guard judged on audit cells.

    Parameters
    ----------
    features : {"auto", "encoder", "features"}, default="auto"
        Features the group inference and the audit cells read (``"auto"``:
        ``encoder_features`` if the bundle has them, else the ERM head is kept).
    pool : {"auto", "train", "heldout", "train+heldout"}, default="auto"
        Rows the XRM twins are fitted on (``"auto"``: the ``train`` rows when the
        bundle has them, else ``heldout``; see
        :func:`~gradtune.methods.inferred.bundle_pseudo_groups`).
    xrm_steps : int, default=2000
        Training steps of the XRM twins.
    rule : {"average", "either"}, default="average"
        Which twin prediction makes a row minority (:mod:`gradtune.groups.xrm`).
    xrm_recipe : {"default", "authors"}, default="default"
        The twins' training: the project's (``xrm_steps`` steps) or the XRM authors'
        recipe (:data:`~gradtune.groups.xrm.XRM_AUTHORS`, its own step count).
    inferences : tuple of {"xrm", "erm_error"}, default=("xrm",)
        Pseudo-groups the candidates are fitted on, each giving its own candidates.
    families : tuple of {"retrain", "finetune"}, default=("retrain",)
        Candidate families besides the ERM head.
    c_grid : tuple of float, default=DFR's grid
        Inverse L1 strengths of the ``"retrain"`` candidates.
    num_retrains : int, default=5
        Averaged fits per ``"retrain"`` candidate (and in the refit).
    refit : bool, default=True
        Refit a chosen ``"retrain"`` candidate on both validation halves.
    crossfit : bool, default=True
        Also fit every candidate on the selection half and score it on the held-out half's
        cells (the value: the mean of the two scores; the head returned: the held-out fit).
    half_folds : int, default=1
        Folds per validation half (by class): a row is judged by candidates and audit regions
        fitted on the other half and the rest of its own
        (:mod:`~gradtune.methods.auto_crossfit`), at ``half_folds`` times the fits.
    size, top_k : int
        GradTune's set for the ``"finetune"`` candidates (the paper's M' and k, scaled).
    epochs_grid : tuple of int, default=(1, 2, 5, ..., 500)
        Snapshots of the fine-tuning run (the schedule spans ``max(epochs_grid)``).
    finetune : FinetuneConfig
        The fine-tuning loop (the paper's vision setting; ``sampler``, ``epochs``: the method's).
    value_cells : {"mistakes", "inferred", "mistakes_then_inferred"}, default="mistakes"
        Cells the value, its bound and per-half checks read: regions of the ERM head's mistakes
        (which the floor and coverage always read) or of the first inference's minority (the
        floor then reads both); or the mistakes' regions, and where they keep the ERM head, the
        twins' (:mod:`~gradtune.methods.auto_judge`; it failed two three-class image members).
    min_group_size : int, default=10
        Smallest audit cell the value counts.
    margin : float, default=0.05
        A candidate must beat ERM's value by more than this, and so must the paired
        bootstrap bound of its gain: the cells stand in for the true groups, and a gain
        smaller than that proxy's error is no evidence ...
    margin_z : float, default=0.0
        ... plus ``margin_z`` standard errors of the difference of the two accuracies
        (binomial, on the smaller of the two worst cells, both halves counted).
    gain_quantile : float or None, default=0.1
        The paired bootstrap bound: this quantile of a candidate's gain over ERM's value (rows
        drawn with Poisson(1) weights, the same for all) must exceed ``margin`` (None: off).
    n_boot : int, default=300 (bootstrap draws of that bound)
    confirm_z : float or None, default=0.0
        With ``crossfit``, a candidate must also beat ERM's value on each half on its own
        by this many standard errors of that half (0: a gain on each half; None: off).
    max_balanced_drop : float, default=0.3
        Largest allowed drop of class-balanced accuracy below ERM's (scored halves).
    max_pseudo_drop : float or None, default=-0.03
        Largest allowed drop of the mean accuracy over the first inference's pseudo-groups (negative: the
        least gain; -0.03: a repair must raise it by 3 points; None: off).
    min_repaired_accuracy : float, default=0.4
        Least accuracy a candidate must reach on every audit cell (its value) to be
        chosen, for two classes; with C classes the floor is ``min_repaired_accuracy x 2 /
        C`` (guessing gets ``1 / C`` right). Below it a "repair" is guessing on the rows
        the ERM head gets wrong.
    min_structure_auc : float, default=0.6
        The ERM head is kept unless its mistakes can be told from its correct rows by
        features off its own decision directions with at least this cross-fitted AUC
        (:func:`~gradtune.selection.audit.structure_auc`): below it the mistakes look
        like class overlap or label noise, which no repair fixes.
    structure_scale : {"standard", "rank", "both"}, default="both"
        The structure test on standardized features, on normal scores (heavy-tailed
        coordinates), or the smaller AUC of the two (elliptical tails need the first).
    structure_projection : {"directions", "regress", "both"}, default="directions"
        What the structure test removes first: the head's logit directions, the features'
        per-class regression on the logits (any covariance), or the smaller AUC of the two.
    min_twin_auc : float, default=0.7
        ... unless the XRM twins' inferred minority can be told apart the same way with at
        least this AUC (a small minority among the mistakes). ``1.0`` turns this route off.
    audit_coverage : bool, default=True
        Keep the ERM head when some class's region (of the mistakes or of the inferred
        minority) has fewer than ``min_group_size`` rows on a half: that class is one cell,
        and a repair could lose its minority unseen (a rare class).
    pad_regions : {"off", "margin", "region", "veto"}, default="off"
        Instead of that refusal, fill a class's too-small region up to ``min_group_size`` rows
        (:func:`~gradtune.methods.auto_crossfit.pad_cells`): its least-margin rows, judged
        (``"margin"``) or only refusing a candidate that loses rows there (``"veto"``), or
        the other half's region model's top rows (``"region"``). ``"off"``: the refusal stands.
    minority_veto : float or None, default=None
        Refuse a candidate that gets more than this share wrong, on either half, of the rows
        in the inferred minority's region that the ERM head gets right (``auto_crossfit.minority_loss``).
    rare_class_share : float, default=0.5
        With ``pad_regions``, a class under this share of 1 / n_classes of a half is refused.
    min_erm_minority_accuracy : float, default=0.0
        Optional pre-check: keep the ERM head when it gets fewer than this share of the first
        inference's minority right (0: off; it refused real repairs on the stress suite).
    deployment_split : str or None, default=None
        Unlabeled deployment rows, features only (:mod:`~gradtune.methods.auto_deployment`): None,
        the bundle's ``deployment_features`` if any; a split's rows (labels unread); ``"off"``.
        ``max_pseudo_drop`` then weights each pseudo-group by its estimated share there
        (:func:`~gradtune.selection.shift.deployment_shares`), not equally: with no shift (no
        shortcut) that is plain accuracy, which a trade of easy rows for hard ones lowers.
        A repair made without them says so in an INFO log.
    split_votes : int (odd), default=3
        Fits on different halvings of the validation rows (the bundle's halves, then
        class-stratified re-dealings while the outcome is open); the ERM head is replaced only
        when most of them replace it (:mod:`~gradtune.methods.auto_votes`).
    votes_on : {"always", "repairs"}, default="repairs"
        ``"repairs"``: only a repair on the bundle's halves is put to the vote (a kept head stands).
    """

    name = "gradtune-auto"
    description = ("label-free pipeline: XRM pseudo-groups (frozen-encoder features when present), "
                   "group-balanced retraining, a guard judged on cross-fitted audit cells of the ERM "
                   "head's mistakes")
    uses_group_labels_train: ClassVar[bool] = False
    uses_group_labels_val: ClassVar[bool] = False

    features: str = FEATURES.field()
    pool: str = POOL.field()
    xrm_steps: int = override(XRMConfig, "n_steps", doc="training steps of the XRM twins", fast=200)
    rule: str = RULE.field()
    xrm_recipe: str = param("default", "the twins' training recipe", choices=tuple(XRM_CONFIGS))
    inferences: tuple[str, ...] = param(("xrm",), "pseudo-groups the candidates are fitted on", choices=INFERENCES,
                                        nonempty=True)
    families: tuple[str, ...] = param(("retrain",), "candidate families besides the ERM head", choices=FAMILIES)
    c_grid: tuple[float, ...] = override(DFRMethod, "c_grid", nonempty=False, fast=(1.0,))
    num_retrains: int = param(5, "averaged fits per 'retrain' candidate", ge=1, fast=1)
    refit: bool = param(True, "refit a chosen 'retrain' candidate on both validation halves")
    crossfit: bool = param(True, "also fit on the selection half and average the two scores")
    half_folds: int = param(1, "folds per validation half: a row is judged by candidates fitted on the other half "
                               "and the rest of its own", ge=1)
    size: int = SIZE.field()
    top_k: int = TOP_K.field()
    epochs_grid: tuple[int, ...] = param(AUTO_EPOCHS, "snapshots of the fine-tuning run", ge=1, fast=(1, 3))
    finetune: FinetuneConfig = finetune_block(space=None, fast_epochs=None)
    value_cells: str = param("mistakes", "cells the value reads: regions of the ERM head's mistakes, of the "
                                         "inferred minority, or the first then (if it keeps the head) the second",
                             choices=VALUE_CELLS)
    min_group_size: int = param(10, "smallest audit cell the value counts", ge=1)
    margin: float = param(0.05, "a candidate (and its paired bound) must beat ERM's value by more than this", ge=0)
    margin_z: float = param(0.0, "... plus this many standard errors of the difference", ge=0)
    gain_quantile: float | None = param(0.1, "quantile of the paired bootstrap gain that must exceed margin "
                                             "(None: off)", kind="float", gt=0, lt=1, optional=True)
    n_boot: int = param(300, "bootstrap draws of that bound", ge=10, fast=50)
    confirm_z: float | None = param(0.0, "with crossfit, the gain on each half in its standard errors (None: off)",
                                    kind="float", ge=0, optional=True)
    max_balanced_drop: float = param(0.3, "largest allowed drop of class-balanced accuracy", ge=0)
    max_pseudo_drop: float | None = param(-0.03, "largest allowed drop of the pseudo-group mean accuracy (negative: "
                                                "the least gain; None: off)", kind="float", ge=-1, le=1, optional=True)
    min_repaired_accuracy: float = param(0.4, "least accuracy on every audit cell (two classes; x 2 / C)", ge=0,
                                         le=1)
    min_structure_auc: float = param(0.6, "least cross-fitted AUC of the head's mistakes", ge=0, le=1)
    structure_scale: str = param("both", "scale of the features in the structure test: standardized, normal "
                                         "scores, or the smaller AUC of the two", choices=SCALES)
    structure_projection: str = param("directions", "how the structure test removes what the head's logits say: "
                                                    "their directions, the features' regression on them per class, "
                                                    "or the smaller AUC of the two",
                                      choices=PROJECTIONS)
    min_twin_auc: float = param(0.7, "... or of the twins' inferred minority (1.0: this route off)", ge=0, le=1)
    audit_coverage: bool = param(True, "keep the ERM head when a class's region (mistakes or inferred minority) "
                                       "is below min_group_size")
    pad_regions: str = param("off", "fill a too-small region instead of refusing: its least-margin rows judged "
                                    "or as a veto, or the other half's region model's top rows", choices=PAD_MODES)
    minority_veto: float | None = param(None, "refuse a candidate losing over this share of the inferred minority's "
                                        "rows the ERM head gets right (None: off)", kind="float", ge=0, le=1, optional=True)
    rare_class_share: float = param(0.5, "pad_regions skips a class under this share of 1 / n_classes", ge=0, le=1)
    min_erm_minority_accuracy: float = param(0.0, "optional pre-check on the ERM head (0: off)", ge=0, le=1)
    deployment_split: str | None = param(None, "unlabeled deployment rows (None: the bundle's deployment_features if "
                                               "any; a split; 'off'): max_pseudo_drop then weights the pseudo-groups "
                                               "by their estimated share there", kind="str", choices=DEPLOYMENT_CHOICES)
    split_votes: int = param(3, "fits on different halvings of the validation rows; the majority decides (odd)", ge=1)
    votes_on: str = param("repairs", "put every decision to the vote, or only a repair", choices=VOTES_ON)

    def __post_init__(self) -> None:
        super().__post_init__()  # each value against its declaration; then the rules between them
        self._check()

    def _check(self) -> list[int]:
        epochs = sorted({int(e) for e in self.epochs_grid})
        if "finetune" in self.families and not epochs:
            raise GradTuneInputError("epochs_grid must not be empty when 'finetune' is a family")
        if int(self.split_votes) % 2 == 0:
            raise GradTuneInputError(f"split_votes must be odd (a majority of the fits decides), got {self.split_votes}")
        if "retrain" in self.families and not self.c_grid:
            raise GradTuneInputError(f"c_grid must hold positive numbers, got {self.c_grid!r}")
        return epochs

    def _side(self, inferences: dict[str, tuple[np.ndarray, np.ndarray]], x_other: np.ndarray,
              y_other: np.ndarray, x_score: np.ndarray, y_score: np.ndarray, folds: np.ndarray, cells: np.ndarray,
              epochs: list[int], head: LinearHead, n_classes: int, streams: SeedStreams,
              ) -> tuple[list[tuple[str, AutoCandidate]], np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                         np.ndarray, np.ndarray]:
        """Candidates of every inference judged on the cells (m,) of (x_score (m, d), y_score (m,)), each
        row by those fitted on (x_other (n, d), y_other (n,)) and the scored rows outside its fold (folds
        (m,), :func:`~gradtune.methods.auto_crossfit.fold_correct`); ``inferences``: name -> (other ids
        (n,), scored ids (m,)).

        Returns (inference, candidate) pairs (ERM first; fitted without fold 0), their worst-cell
        accuracy (K,), that cell's size (K,), class-balanced accuracy (K,), mean accuracy over the
        first inference's pseudo-groups of the scored rows (K,), the fine-tuning set of the first
        inference (positions in the rows fitted without fold 0; empty without ``"finetune"``), and
        which scored rows each candidate gets right (K, m) (False for non-finite logits)."""
        sets: list[np.ndarray] = []

        def fit(x: np.ndarray, y: np.ndarray, groups: dict[str, np.ndarray]) -> list[tuple[str, AutoCandidate]]:
            pairs: list[tuple[str, AutoCandidate]] = [("erm", AutoCandidate("erm", 0.0, head))]
            for name, g in groups.items():
                cands, idx = candidate_heads(x, y, g, epochs, head, n_classes, streams, families=self.families,
                                             c_grid=self.c_grid, num_retrains=int(self.num_retrains),
                                             size=self.size, top_k=self.top_k, finetune=self.finetune)
                pairs += [(name, c) for c in cands[1:]]
                sets.append(idx)
            return pairs

        pairs, correct, valid = fold_correct(fit, x_score, y_score, {k: g for k, (_, g) in inferences.items()},
                                             x_other, y_other, {k: g for k, (g, _) in inferences.items()}, folds)
        g_score = next(iter(inferences.values()))[1]
        values, sizes, balanced, pseudo = score_correct(correct, valid, y_score, cells, g_score, n_classes,
                                                        int(self.min_group_size))
        return pairs, values, sizes, balanced, pseudo, sets[0], correct

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed, twins = check_positive_int(seed, "seed", allow_zero=True), TwinsCache()   # twins of the train rows
        source, rows = deployment_rows(bundle, self.deployment_split)   # a missing split fails before any fit
        result = split_vote(lambda b: self._fit_split(b, seed, twins), bundle, self._fit_split(bundle, seed, twins),
                            int(self.split_votes), seed_streams(seed, *SEED_STREAMS).rng("splits"), str(self.votes_on))
        result.diagnostics.update(deployment_rows=source, n_deployment_rows=0 if rows is None else len(rows))
        if result.diagnostics.get("guard_kept_erm"):
            _log.warning("gradtune-auto kept the ERM head: %s", result.diagnostics.get("guard_reason"))
        elif source is None:   # the one assumption no validation statistic can check
            _log.info(UNWEIGHTED)
        return result

    def _fit_split(self, bundle: EmbeddingBundle, seed: int, twins: TwinsCache | None = None) -> MethodResult:
        """One fit on the bundle's validation halves as they are (``fit`` may vote over several; ``twins``: reused)."""
        epochs = self._check()
        head = erm_head(bundle)
        n_classes = int(bundle.n_classes)
        held, sel = bundle.view("heldout"), bundle.view("selection")
        if self.features == "auto" and bundle.encoder_features is None:
            return _keep_erm(head, "the bundle has no encoder_features: the ERM model's own features do "
                                   "not reveal the shortcut it learned, so no repair is attempted (store a "
                                   "frozen encoder's features, or pass features='features' to infer from the "
                                   "head's inputs anyway)")
        x_dep = deployment_rows(bundle, self.deployment_split)[1]
        streams = seed_streams(seed, *SEED_STREAMS)
        xrm_config = XRMConfig(n_steps=int(self.xrm_steps)) if self.xrm_recipe == "default" else XRM_CONFIGS[
            self.xrm_recipe]
        inferences, info = auto_pseudo_groups(bundle, held, sel, head, streams, n_classes, inferences=self.inferences,
                                              features=self.features, pool=self.pool, rule=self.rule,
                                              xrm_config=xrm_config, twins=twins)
        first = next(iter(inferences))
        minority = np.concatenate([inferences[first][0], inferences[first][1]]) % 2 == 1
        right = np.concatenate([head.predict(held.features) == held.labels,
                                head.predict(sel.features) == sel.labels])
        erm_minority_acc = float(right[minority].mean()) if minority.any() else None
        if float(self.min_erm_minority_accuracy) > 0 and (
                erm_minority_acc is None or erm_minority_acc < float(self.min_erm_minority_accuracy)):
            found = ("no inferred minority row" if erm_minority_acc is None else
                     f"the ERM head classifies {erm_minority_acc:.0%} of the inferred minority correctly")
            return _keep_erm(head, f"{found}: below min_erm_minority_accuracy="
                                   f"{float(self.min_erm_minority_accuracy):g}", info)
        xi_held, _ = inference_features(bundle, held, self.features)
        xi_sel, _ = inference_features(bundle, sel, self.features)
        # is there a shortcut to repair? the mistakes (or the twins' minority) must differ from
        # the other rows along directions other than the head's own
        n_held = len(held)
        flags = [(~right[:n_held], ~right[n_held:])]
        if "xrm" in inferences:
            flags.append((inferences["xrm"][0] % 2 == 1, inferences["xrm"][1] % 2 == 1))
        auc, twin_auc, closed = structure_gate(xi_held, held.labels, head.logits(held.features), xi_sel, sel.labels,
                                               flags, n_classes, scale=str(self.structure_scale),
                                               min_auc=float(self.min_structure_auc), min_twin_auc=float(self.min_twin_auc),
                                               projection=str(self.structure_projection),
                                               logits_b=head.logits(sel.features))
        if closed is not None:
            return _keep_erm(head, closed, info, structure_auc=auc, twin_structure_auc=twin_auc)
        # audit cells: where the ERM head errs, learned on the other half (and the rest of the
        # row's own half with half_folds > 1), and where the first inference's minority lies
        fold_rng = streams.rng("folds")
        folds_sel, folds_held = (class_folds(v.labels, int(self.half_folds), fold_rng) for v in (sel, held))
        (g_held, g_sel), wrong_held, wrong_sel = inferences[first], ~right[:n_held], ~right[n_held:]
        fill = (int(self.min_group_size), float(self.rare_class_share)) if self.pad_regions == "region" else ()
        audit_sel, audit_held = halves_cells(xi_sel, sel.labels, wrong_sel, xi_held, held.labels, wrong_held,
                                             folds_sel, folds_held, n_classes, *fill)
        inf_sel, inf_held = halves_cells(xi_sel, sel.labels, g_sel % 2 == 1, xi_held, held.labels, g_held % 2 == 1,
                                         folds_sel, folds_held, n_classes, *fill)
        (audit_sel, inf_sel, audit_held, inf_held), cover, veto = pad_cells(
            str(self.pad_regions), (audit_sel, inf_sel, audit_held, inf_held), (sel.labels, held.labels),
            lambda: (head.logits(sel.features), head.logits(held.features)), n_classes, int(self.min_group_size),
            float(self.rare_class_share))
        named = {"mistakes": (audit_sel, audit_held), "inferred": (inf_sel, inf_held)}   # (selection, held-out)
        order = CELL_ORDER[str(self.value_cells)]
        uncovered = uncovered_classes(cover, n_classes, int(self.min_group_size))
        if self.audit_coverage and uncovered:
            names = ", ".join(f"class {k} ({n} rows)" for k, n in uncovered)
            return _keep_erm(head, f"too few rows like the ERM head's mistakes or the inferred minority to audit "
                                   f"a repair in {names}; min_group_size={int(self.min_group_size)}: a repair "
                                   "could lose that class's minority without the validation rows showing it", info,
                             structure_auc=auc, twin_structure_auc=twin_auc)
        pairs, values, _, balanced, pseudo, idx, ok_a = self._side(
            inferences, held.features, held.labels, sel.features, sel.labels, folds_sel, named[order[0]][0], epochs,
            head, n_classes, streams)
        correct = [ok_a]
        if self.crossfit:
            swapped = {k: (g_sel, g_held) for k, (g_held, g_sel) in inferences.items()}
            _, _, _, b2, p2, _, ok_b = self._side(swapped, sel.features, sel.labels, held.features, held.labels,
                                                  folds_held, named[order[0]][1], epochs, head, n_classes, streams)
            balanced, pseudo = (balanced + b2) / 2, (pseudo + p2) / 2
            correct.append(ok_b)
        bad, lost = refused(correct, veto, [inf_sel, inf_held], self.minority_veto)
        shares: list = []      # the pseudo-group mean as the deployment rows would weight it
        if x_dep is not None:
            rows = ((g_sel, sel.features), (g_held, held.features))[:len(correct)]
            scored = [(ok, g, x) for ok, (g, x) in zip(correct, rows, strict=True)]
            pseudo, shares = deployment_accuracy(scored, x_dep, 2 * n_classes, rng=streams.rng("shift"))
        rule = GuardRule(margin=float(self.margin), margin_z=float(self.margin_z),
                         confirm_z=None if self.confirm_z is None else float(self.confirm_z),
                         max_balanced_drop=float(self.max_balanced_drop),
                         min_repaired_accuracy=float(self.min_repaired_accuracy) * 2 / n_classes,
                         max_pseudo_drop=None if self.max_pseudo_drop is None else float(self.max_pseudo_drop),
                         pseudo_weighting="equally" if x_dep is None else "as the deployment rows hold them")
        # one record per cell set judged, in order; the floor reads the mistakes' regions (and the twins' judging)
        records = [judged_record(correct, np.isfinite(values), list(named[n])[:len(correct)],
                                 [(a, c)[:1 + (n == "inferred")]
                                  for a, c in zip(named["mistakes"], named[n], strict=True)][:len(correct)],
                                 bad, balanced, pseudo, rule, n_classes, int(self.min_group_size),
                                 gain_quantile=self.gain_quantile, rng=streams.rng("guard"), n_boot=int(self.n_boot))
                   for n in order]
        used, decision = replay_guards(records)   # decided from the records themselves: a replay reproduces it
        values, needed, allowed, best = decision.values, decision.needed, decision.allowed, decision.best
        lower, floor = records[used]["lower"], records[used]["floor_values"]
        chosen_inf, chosen = pairs[best]
        model = chosen.head
        refitted = chosen.family in ("retrain", "reweight") and bool(self.refit)
        if refitted:
            x_all, y_all = np.concatenate([held.features, sel.features]), np.concatenate([held.labels, sel.labels])
            g_all = np.concatenate(inferences[chosen_inf])
            if chosen.family == "retrain":
                model = retrain_head(x_all, y_all, g_all, chosen.setting, n_classes, int(self.num_retrains),
                                     streams.rng("retrain"), streams.integer("solver"))
            else:
                model = reweight_head(x_all, y_all, g_all, chosen.setting, n_classes, streams.integer("solver"))
        bounds = [None] * len(pairs) if lower is None else [float(x) for x in lower]
        diag = {
            "pseudo_groups": info, "inferences": list(inferences),
            "pseudo_group_counts": {k: half_counts(*g, 2 * n_classes) for k, g in inferences.items()},
            "audit_counts": half_counts(audit_held, audit_sel, 2 * n_classes),
            "value_cells": self.value_cells,
            "value_cell_counts": half_counts(named[order[used]][1], named[order[used]][0], 2 * n_classes),
            "judged_on": order[used],
            "erm_minority_accuracy": erm_minority_acc,
            "deployment_shares": [{"validation": v.tolist(), "deployment": d.tolist()} for v, d in shares],
            "structure_auc": auc, "twin_structure_auc": twin_auc,
            "chosen_inference": chosen_inf,
            "chosen_family": chosen.family, "chosen_setting": chosen.setting,
            "chosen_value": float(values[best]),
            "erm_value": float(values[0]), "refitted": refitted, "guard_kept_erm": best == 0,
            "padded_veto": bad.tolist(), "minority_loss": lost.tolist(),   # refused before the guard; why
            "guard_reason": veto_reason(decision.reason, bad),
            "guard_inputs": records[0],   # selection.guard.replay_guard(s) decide again under other thresholds
            "guard_inputs_next": records[1:],   # the later cell sets' records (value_cells="mistakes_then_inferred")
            "candidates": [{"inference": k, "family": c.family, "setting": c.setting, "value": float(v),
                            "needed": float(t), "balanced_accuracy": float(b), "allowed": bool(a),
                            "gain_bound": lo, "floor_value": float(f)}
                           for (k, c), v, t, b, a, lo, f in zip(pairs, values, needed, balanced, allowed, bounds,
                                                                floor, strict=True)],
            "selected_rows": np.concatenate([held.index, sel.index[folds_sel != 0]])[idx].tolist(),
            # bundle rows the first inference calls minority (diagnostic: purity / recall in reports)
            "inferred_minority_rows": np.concatenate([held.index[inferences[first][0] % 2 == 1],
                                                      sel.index[inferences[first][1] % 2 == 1]]).tolist(),
        }
        return MethodResult(model, diag)

