"""GradTune with label-free model selection, a guard against forgetting, and automatic k.

Beyond the paper. The paper's GradTune (``"gradtune"``, the default) fixes
``M' = 500``, ``k = 400`` and 500 epochs and has no way to choose them without group
labels; where the ERM head's held-out errors are noise rather than a shortcut (Adult;
see docs/gradtune-select.md) hundreds of epochs on them invert the head. ``"gradtune-select"`` keeps the
paper's selection rule and fine-tuning loop and adds three things, none of which reads a
group label or a test row:

* **automatic k and M'** (:func:`gradtune.selection.auto_k.auto_set_size`): the high mode
  of a two-component mixture on held-out log gradient norms gives ``k``; ``M' = k / 0.8``
  (the paper's ratio), clipped to ``[100, 2000]`` (and N);
* **a forgetting guard**: an L2 pull ``l2_to_init * ||theta - theta_ERM||^2`` toward the ERM
  head during fine-tuning (AFR's regularizer), optionally plus ``replay`` x M' uniformly
  drawn held-out rows mixed into the fine-tuning set;
* **label-free epoch (and lr) selection**: one fine-tuning run per learning rate keeps the
  head after each epoch of ``epochs_grid`` (``snapshot_epochs``; epoch 0 is the ERM head
  itself, so "do not fine-tune" is a candidate); the candidate with the largest
  ``criterion`` on the ``selection`` rows wins (:mod:`gradtune.selection.label_free`;
  ties go to the earliest candidate: smaller lr first, then fewer epochs). The cosine
  schedule runs over ``max(epochs_grid)`` epochs, so an early snapshot is an early stop of
  the full run, not a shorter run.

Intermediate variants for the comparison (same code, other defaults):

* ``"gradtune-es"``: the paper's set (500 / 400) and fine-tuning, epochs chosen by the
  criterion (early stopping only);
* ``"gradtune-l2"``: the paper's set and 500 epochs with the L2 guard (guard only);
* ``"gradtune-selectk"``: automatic k / M', the paper's 500 epochs (automatic k only).

The seed is split as GradTune splits it (:data:`gradtune._seeding.GRADTUNE_STREAMS`: stream 0
draws the norm-proportional part, stream 1 drives the sampler; a third stream draws replay rows), so with
``set_size='fixed'``, ``l2_to_init=0`` and the same lr, the 500-epoch candidate is exactly
``"gradtune"``'s head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from gradtune._params import default_of
from gradtune._seeding import GRADTUNE_STREAMS, seed_streams
from gradtune._validation import (
    GradTuneInputError,
    check_positive_int,
)
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.estimator import resolve_set_size
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
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
from gradtune.methods.gradtune import GradTuneMethod
from gradtune.scores.grad_norms import grad_norms
from gradtune.selection.auto_k import K_SHARE, MAX_SIZE, MIN_SIZE, auto_set_size
from gradtune.selection.label_free import CRITERIA, LabelFreeScorer
from gradtune.selection.select import SIZE, TOP_K, select_finetune_set

__all__ = ["GradTuneSelectMethod", "GradTuneESMethod", "GradTuneL2Method", "GradTuneAutoKMethod",
           "Candidate", "EPOCH_GRID", "SET_SIZE_RULES", "DEFAULT_CRITERION", "DEFAULT_L2"]

EPOCH_GRID: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)
SET_SIZE_RULES = ("auto", "fixed")
DEFAULT_CRITERION = "worst_class"
DEFAULT_L2 = 0.1


@dataclass
class Candidate:
    """One candidate head: after ``epoch`` epochs at learning rate ``lr`` (epoch 0: ERM)."""

    epoch: int
    lr: float
    head: LinearHead


@register_method
@dataclass
class GradTuneSelectMethod(Method):
    """GradTune + automatic k/M' + L2 guard + label-free epoch/lr selection (module doc).

    Parameters
    ----------
    set_size : {'auto', 'fixed'}, default='auto'
        'auto': M' and k from the held-out norm mixture; 'fixed': ``size`` / ``top_k``
        (scaled down as GradTune does when the held-out set is smaller).
    size, top_k : int, default=500, 400
        The fixed set (paper's values).
    k_share, min_size, max_size : float, int, int, default=0.8, 100, 2000
        Automatic rule's ratio and bounds (:func:`~gradtune.selection.auto_k.auto_set_size`).
    criterion : str, default='worst_class'
        Label-free criterion on the selection rows
        (:data:`~gradtune.selection.label_free.CRITERIA`).
    epochs_grid : tuple of int, default=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500)
        Candidate epoch counts; 0 is the ERM head; the run lasts ``max(epochs_grid)``.
    lrs : tuple of float, default=(3e-3,)
        Candidate learning rates (one run each).
    l2_to_init : float, default=0.1
        Pull toward the ERM head (0 disables the guard).
    replay : float, default=0.0
        Extra uniformly drawn held-out rows, as a share of M' (0 disables).
    min_group_size : int, default=10
        Smallest pseudo-group a criterion counts.
    include_bias, score, replace
        As in ``"gradtune"``.
    finetune : FinetuneConfig
        The paper's loop; its ``epochs``, ``lr``, ``l2_to_init`` and ``snapshot_epochs``
        are set from the fields above.
    """

    name = "gradtune-select"
    description = ("GradTune + automatic k/M' (log-norm mixture) + L2 pull to the ERM head + "
                   "label-free epoch selection (worst-class accuracy on the selection rows)")
    uses_group_labels_train: ClassVar[bool] = False
    uses_group_labels_val: ClassVar[bool] = False

    set_size: str = param("auto", "'auto': M' and k from the norm mixture; 'fixed': size / top_k",
                          choices=SET_SIZE_RULES)
    size: int = SIZE.field()
    top_k: int = TOP_K.field()
    k_share: float = K_SHARE.field()
    min_size: int = MIN_SIZE.field()
    max_size: int = MAX_SIZE.field()
    criterion: str = param(DEFAULT_CRITERION, "label-free criterion on the selection rows", choices=tuple(CRITERIA))
    epochs_grid: tuple[int, ...] = param(EPOCH_GRID, "candidate epoch counts (0: the ERM head)", ge=0,
                                         nonempty=True)
    lrs: tuple[float, ...] = param((default_of(FinetuneConfig, "lr"),), "candidate learning rates", gt=0)
    l2_to_init: float = param(DEFAULT_L2, "pull toward the ERM head (0: no guard)", ge=0)
    replay: float = param(0.0, "extra uniformly drawn held-out rows, as a share of M'", ge=0)
    min_group_size: int = param(10, "smallest pseudo-group a criterion counts", ge=1)
    include_bias: bool = override(GradTuneMethod, "include_bias")
    score: str = override(GradTuneMethod, "score")
    replace: bool = override(GradTuneMethod, "replace")
    finetune: FinetuneConfig = finetune_block(space=None, fast_epochs=None)

    def _check(self) -> tuple[list[int], list[float]]:
        epochs = sorted({int(e) for e in self.epochs_grid})
        lrs = [float(lr) for lr in self.lrs]
        return epochs, lrs

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lrs and any(int(e) > 0 for e in self.epochs_grid):
            raise GradTuneInputError("lrs must not be empty when epochs_grid holds a positive epoch count")

    def _scores(self, h: torch.Tensor, y: torch.Tensor, head: LinearHead) -> np.ndarray:
        w = torch.as_tensor(head.weight)
        b = torch.as_tensor(head.bias)
        if self.score == "grad_norm":
            return grad_norms(h, labels=y, weight=w, bias=b, include_bias=self.include_bias).numpy()
        from gradtune.scores.grad_norms import residual_norms
        from gradtune.scores.output_scores import cross_entropy_scores

        z = h @ w.T + b
        return (cross_entropy_scores(z, y) if self.score == "loss" else residual_norms(z, y)).numpy()

    def candidates(self, bundle: EmbeddingBundle, *, seed: int) -> tuple[list[Candidate], dict[str, Any]]:
        """Every candidate head, from the ``heldout`` rows only (never ``selection`` or ``test``).

        Returns
        -------
        candidates : list of Candidate
            The ERM head first (if 0 is in ``epochs_grid``), then for each lr in order the
            snapshots in increasing epoch.
        info : dict
            ``size``, ``top_k``, ``auto_k`` (the mixture summary, or None),
            ``selected_rows`` (bundle rows of the fine-tuning set, top-k first), ``replay_rows``.
        """
        seed = check_positive_int(seed, "seed", allow_zero=True)
        epochs, lrs = self._check()
        head = erm_head(bundle)
        held = bundle.view("heldout")
        h = torch.as_tensor(held.features)
        y = torch.as_tensor(held.labels)
        norms = self._scores(h, y, head)
        auto_info = None
        if self.set_size == "auto":
            size, top_k, auto_info = auto_set_size(norms, seed=seed, k_share=self.k_share,
                                                   min_size=self.min_size, max_size=self.max_size)
        else:
            size, top_k = resolve_set_size(len(held), check_positive_int(self.size, "size"),
                                           check_positive_int(self.top_k, "top_k", allow_zero=True))
        streams = seed_streams(seed, *GRADTUNE_STREAMS, "replay")
        idx = select_finetune_set(norms, size, top_k, seed=streams.rng("subset"), replace=self.replace)
        ft_seed = streams.integer("finetune")
        replay_idx = np.empty(0, dtype=np.int64)
        if self.replay > 0:
            rest = np.setdiff1d(np.arange(len(held)), idx)
            m = min(rest.size, int(round(self.replay * size)))
            replay_idx = streams.rng("replay").choice(rest, size=m, replace=False).astype(np.int64)
        rows = torch.as_tensor(np.concatenate([idx, replay_idx]))
        out: list[Candidate] = []
        if epochs[0] == 0:
            out.append(Candidate(0, 0.0, head))
        positive = [e for e in epochs if e > 0]
        if positive:
            for lr in lrs:
                cfg = replace(self.finetune, epochs=max(positive), lr=lr, l2_to_init=float(self.l2_to_init),
                              snapshot_epochs=tuple(positive))
                res = finetune_linear(h[rows], y[rows], head.weight, head.bias, cfg, seed=ft_seed)
                for e in positive:
                    w, b = res.snapshots[e]
                    out.append(Candidate(e, lr, LinearHead(w, b)))
        info = {"size": int(size), "top_k": int(top_k), "auto_k": _jsonable(auto_info),
                "selected_rows": held.index[idx].tolist(), "replay_rows": held.index[replay_idx].tolist()}
        return out, info

    def scorer(self, bundle: EmbeddingBundle, *, seed: int = 0) -> tuple[LabelFreeScorer, np.ndarray]:
        """A :class:`LabelFreeScorer` on the ``selection`` rows (labels + ERM head only) and
        the selection features (n, d)."""
        head = erm_head(bundle)
        sel = bundle.view("selection")
        norms = grad_norms(sel.features, labels=sel.labels, weight=head.weight, bias=head.bias,
                           include_bias=self.include_bias).numpy()
        sc = LabelFreeScorer(sel.labels, bundle.n_classes, erm_logits=head.logits(sel.features), erm_norms=norms,
                             min_group_size=self.min_group_size, seed=seed)
        return sc, sel.features

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        cands, info = self.candidates(bundle, seed=seed)
        sc, feats = self.scorer(bundle, seed=seed)
        values = np.array([sc(self.criterion, c.head.logits(feats)) for c in cands])
        best = int(np.argmax(values))  # first maximum: ERM, then smaller lr, then fewer epochs
        chosen = cands[best]
        diag = {
            "criterion": self.criterion,
            "chosen_epoch": chosen.epoch,
            "chosen_lr": chosen.lr,
            "chosen_value": float(values[best]),
            "size": info["size"],
            "top_k": info["top_k"],
            "auto_k": info["auto_k"],
            "candidates": [{"epoch": c.epoch, "lr": c.lr, "value": float(v)} for c, v in zip(cands, values, strict=True)],
            "chosen_criteria": sc.score_all(chosen.head.logits(feats)),
            "selected_rows": info["selected_rows"],
            "replay_rows": info["replay_rows"],
        }
        return MethodResult(chosen.head, diag)


@register_method
@dataclass
class GradTuneESMethod(GradTuneSelectMethod):
    """The paper's set and loop; only the epoch count is chosen by the label-free criterion."""

    name = "gradtune-es"
    description = "GradTune (paper set, M'=500 k=400) with label-free epoch selection (no guard)"

    set_size: str = override(GradTuneSelectMethod, "set_size", "fixed")
    l2_to_init: float = override(GradTuneSelectMethod, "l2_to_init", 0.0)


@register_method
@dataclass
class GradTuneL2Method(GradTuneSelectMethod):
    """The paper's set and 500 epochs with the L2 pull toward the ERM head; no selection."""

    name = "gradtune-l2"
    description = "GradTune (paper set, 500 epochs) with an L2 pull toward the ERM head"

    set_size: str = override(GradTuneSelectMethod, "set_size", "fixed")
    epochs_grid: tuple[int, ...] = override(GradTuneSelectMethod, "epochs_grid", (default_of(FinetuneConfig, "epochs"),))


@register_method
@dataclass
class GradTuneAutoKMethod(GradTuneSelectMethod):
    """Automatic k / M' with the paper's 500 epochs; no guard, no selection."""

    name = "gradtune-selectk"
    description = "GradTune with automatic k/M' (log-norm mixture), paper's 500 epochs"

    epochs_grid: tuple[int, ...] = override(GradTuneSelectMethod, "epochs_grid", (default_of(FinetuneConfig, "epochs"),))
    l2_to_init: float = override(GradTuneSelectMethod, "l2_to_init", 0.0)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x
