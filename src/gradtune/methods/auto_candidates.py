"""The candidate heads of ``gradtune-auto``, each fitted on rows with pseudo-group ids.

* :func:`retrain_head`: DFR's procedure on pseudo-groups (L1 logistic regressions on
  pseudo-group-balanced subsamples, averaged);
* :func:`reweight_head`: one L1 fit on every row, each pseudo-group weighted to the same
  total;
* :func:`finetune_snapshots`: GradTune's set (top-k + norm-proportional draw) fine-tuned
  from the ERM head with a pseudo-group-balanced sampler, one head per epoch count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler

from gradtune._seeding import SeedStreams
from gradtune._validation import check_positive_int
from gradtune.estimator import resolve_set_size
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.methods.auto_judge import cell_values
from gradtune.methods.base import LinearHead
from gradtune.methods.dfr import fit_l1_logreg, fold_scaler
from gradtune.objectives.sampling import balanced_subsample
from gradtune.scores.grad_norms import grad_norms
from gradtune.selection.audit import cell_accuracies
from gradtune.selection.guard import class_balanced_accuracy
from gradtune.selection.select import select_finetune_set

__all__ = ["AutoCandidate", "candidate_heads", "standardize", "retrain_head", "reweight_head", "finetune_snapshots",
           "score_correct"]


@dataclass
class AutoCandidate:
    """One candidate head: ``family`` ("erm", "retrain", "reweight", "finetune") and its setting."""

    family: str
    setting: float
    head: LinearHead


def standardize(x: np.ndarray) -> tuple[StandardScaler, np.ndarray]:
    """A scaler fitted on (n, d) x, and x standardized by it."""
    scaler = StandardScaler().fit(x)
    return scaler, scaler.transform(x)


def retrain_head(x: np.ndarray, y: np.ndarray, g: np.ndarray, c: float, n_classes: int, num_retrains: int,
                 rng: np.random.Generator, lib_seed: int,
                 scaled: tuple[StandardScaler, np.ndarray] | None = None) -> LinearHead:
    """Average of ``num_retrains`` L1 fits (inverse strength ``c``) on pseudo-group-balanced
    subsamples of (x (n, d), y (n,)) with pseudo-group ids g (n,); ``scaled``: the scaler
    fitted on x and x transformed, when the caller has them."""
    scaler, xs = scaled if scaled is not None else standardize(x)
    coefs, icpts = [], []
    for _ in range(int(num_retrains)):
        sub = balanced_subsample(g, rng)
        coef, icpt = fit_l1_logreg(xs[sub], y[sub], float(c), n_classes, random_state=lib_seed)
        coefs.append(coef)
        icpts.append(icpt)
    return fold_scaler(np.mean(coefs, axis=0), np.mean(icpts, axis=0), scaler.mean_, scaler.scale_, n_classes)


def reweight_head(x: np.ndarray, y: np.ndarray, g: np.ndarray, c: float, n_classes: int,
                  lib_seed: int) -> LinearHead:
    """One L1 fit on every row of (x (n, d), y (n,)), each pseudo-group of g (n,) weighted to
    the same total."""
    scaler = StandardScaler().fit(x)
    counts = np.bincount(g)
    w = (len(g) / (np.count_nonzero(counts) * counts[g])).astype(np.float64)
    coef, icpt = fit_l1_logreg(scaler.transform(x), y, float(c), n_classes, random_state=lib_seed,
                               sample_weight=w)
    return fold_scaler(coef, icpt, scaler.mean_, scaler.scale_, n_classes)


def candidate_heads(x: np.ndarray, y: np.ndarray, g: np.ndarray, epochs: list[int], head: LinearHead,
                    n_classes: int, streams: SeedStreams, *, families: tuple[str, ...], c_grid: tuple[float, ...],
                    num_retrains: int, size: int, top_k: int, finetune: FinetuneConfig,
                    ) -> tuple[list[AutoCandidate], np.ndarray]:
    """ERM, then the ``"retrain"`` heads (``c_grid`` order), the ``"reweight"`` heads, then the
    fine-tune snapshots, all fitted on (x (n, d), y (n,), pseudo-groups g (n,)) with the
    ``"retrain"``, ``"solver"`` and ``"finetune"`` streams; and the fine-tuning set (positions in x)."""
    cands = [AutoCandidate("erm", 0.0, head)]
    rng_retrain = streams.rng("retrain")
    lib_seed = streams.integer("solver")
    if "retrain" in families:
        scaled = standardize(x)  # once for every C
        for c in c_grid:
            cands.append(AutoCandidate("retrain", float(c), retrain_head(
                x, y, g, c, n_classes, num_retrains, rng_retrain, lib_seed, scaled)))
    if "reweight" in families:
        for c in c_grid:
            cands.append(AutoCandidate("reweight", float(c), reweight_head(x, y, g, c, n_classes, lib_seed)))
    idx = np.empty(0, dtype=np.int64)
    if "finetune" in families:
        ft, idx = finetune_snapshots(x, y, g, epochs, head, size, top_k, finetune, streams.rng("finetune"),
                                     streams.integer("finetune", index=1))
        cands += ft
    return cands, idx


def finetune_snapshots(x: np.ndarray, y_np: np.ndarray, g: np.ndarray, epochs: list[int], head: LinearHead,
                       size: int, top_k: int, finetune: FinetuneConfig, rng: np.random.Generator,
                       ft_seed: int) -> tuple[list[AutoCandidate], np.ndarray]:
    """Snapshots of GradTune's set of (x (n, d), y (n,)) fine-tuned from ``head`` with a
    sampler balanced over the pseudo-groups g (n,); and the set's rows (positions in x)."""
    h = torch.as_tensor(x)
    y = torch.as_tensor(y_np)
    norms = grad_norms(h, labels=y, weight=torch.as_tensor(head.weight), bias=torch.as_tensor(head.bias)).numpy()
    size, top_k = resolve_set_size(len(y_np), check_positive_int(size, "size"),
                                   check_positive_int(top_k, "top_k", allow_zero=True))
    idx = select_finetune_set(norms, size, top_k, seed=rng)
    g_set = g[idx]
    weights = 1.0 / np.bincount(g_set)[g_set]           # pseudo-group-balanced sampling
    cfg = replace(finetune, epochs=max(epochs), sampler="weighted", snapshot_epochs=tuple(epochs))
    rows = torch.as_tensor(idx)
    res = finetune_linear(h[rows], y[rows], head.weight, head.bias, cfg, seed=ft_seed,
                          sample_weight=torch.as_tensor(weights))
    heads = [LinearHead(*(t.detach().cpu().numpy() for t in res.snapshots[e])) for e in epochs]
    return [AutoCandidate("finetune", float(e), h) for e, h in zip(epochs, heads, strict=True)], idx


def score_correct(correct: np.ndarray, valid: np.ndarray, y: np.ndarray, cells: np.ndarray, groups: np.ndarray,
                  n_classes: int, min_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heads scored from which rows (m,) each gets right (K, m): worst accuracy over the
    cells (m,) and that cell's size, class-balanced accuracy, mean accuracy over the
    pseudo-groups (m,), each (K,); -inf where ``valid`` (K,) is False (non-finite logits)."""
    k = len(correct)
    values, sizes = cell_values(correct, valid, cells, n_classes, min_rows)
    balanced, pseudo = np.full(k, -np.inf), np.full(k, -np.inf)
    for i in np.flatnonzero(valid):
        ok = correct[i]
        balanced[i] = class_balanced_accuracy(ok, y, n_classes)
        accs, _ = cell_accuracies(ok, groups, 2 * n_classes, min_rows)
        pseudo[i] = float(np.nanmean(accs)) if not np.isnan(accs).all() else float(ok.mean())
    return values, sizes, balanced, pseudo
