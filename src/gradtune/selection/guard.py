"""The guard of label-free repair: which candidate head, if any, replaces the ERM head.

Candidates are judged on audit cells (:mod:`gradtune.selection.audit`) of two validation
halves: a candidate fitted on half A is scored on half B's cells (``values_a``) and the
one fitted on half B on half A's cells (``values_b``). Index 0 is the ERM head, scored on
the same cells. A candidate may replace it only when

* its mean worst-cell accuracy beats ERM's by ``margin`` plus ``margin_z`` binomial
  standard errors of the difference (on the smaller of the two worst cells, both halves
  counted);
* with a paired bootstrap bound given (``lower``, from :func:`paired_gain_bound`), that
  bound of its gain exceeds ``margin``: a candidate and the ERM head are scored on the
  same rows, and most rows get the same answer from both, so the paired gain is far less
  noisy than two separate accuracies;
* with ``confirm_z`` set, it also beats ERM on *each* half on its own by ``confirm_z``
  standard errors of that half: the best of several noisy candidates looks better than it
  is (the winner's curse), and a gain that is real shows on both halves, fitted and
  scored on disjoint rows;
* it loses at most ``max_balanced_drop`` of class-balanced accuracy, and (with
  ``pseudo`` given) at most ``max_pseudo_drop`` of the mean accuracy over the inferred
  groups (a negative ``max_pseudo_drop``: that mean must rise by at least its size): a
  "repair" that only trades accuracy from easy rows to hard ones raises the worst audit
  cell without raising the group-balanced accuracy;
* it gets at least ``min_repaired_accuracy`` of its worst audit cell right (the caller
  scales this to the number of classes: guessing gets ``1 / C`` of a cell right; with
  ``floor_values`` given, those are the worst-cell accuracies the floor reads).

Among the allowed candidates the one with the highest mean value wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from gradtune._validation import GradTuneInputError
from gradtune.selection.audit import cell_accuracies

__all__ = ["GuardRule", "GuardDecision", "guard_choice", "guard_record", "replay_guard", "replay_guards",
           "class_balanced_accuracy", "paired_gain_bound", "bootstrap_worst_cells"]


@dataclass(frozen=True)
class GuardRule:
    """The thresholds of :func:`guard_choice` (see the module docstring). The defaults
    here check nothing but "better than ERM"; gradtune-auto's own defaults are declared
    with its parameters."""

    margin: float = 0.0
    margin_z: float = 0.0
    confirm_z: float | None = None
    max_balanced_drop: float = float("inf")
    min_repaired_accuracy: float = 0.0
    max_pseudo_drop: float | None = None
    pseudo_weighting: str = "equally"   # how the pseudo-groups were weighted (said in the reason)


@dataclass
class GuardDecision:
    """best : index of the chosen candidate (0: the ERM head); values, needed, allowed,
    balanced : (K,) per candidate; reason : why the ERM head was kept, else None."""

    best: int
    values: np.ndarray
    needed: np.ndarray
    allowed: np.ndarray
    balanced: np.ndarray
    reason: str | None


def class_balanced_accuracy(correct: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean accuracy over the classes present, from (n,) bool ``correct`` and (n,) labels."""
    acc, _ = cell_accuracies(correct, labels, n_classes, 1)
    return float(np.nanmean(acc))


_BLOCK = 64  # bootstrap draws held in memory at once


def bootstrap_worst_cells(correct: np.ndarray, cells: np.ndarray, n_cells: int, min_rows: int,
                          weights: np.ndarray) -> np.ndarray:
    """Worst-cell accuracy of several heads under row weights.

    Parameters
    ----------
    correct : (K, n) bool, head k right on row i
    cells : (n,) int cell ids in ``[0, n_cells)``
    min_rows : int
        Cells with fewer rows (unweighted) are left out, as in
        :func:`~gradtune.selection.audit.worst_cell_accuracy`; all rows form one cell when
        none qualifies.
    weights : (B, n) non-negative row weights (e.g. Poisson(1) bootstrap draws)

    Returns
    -------
    (K, B) the lowest weighted cell accuracy of each head under each weighting (cells that
    get no weight in a draw are skipped).
    """
    counts = np.bincount(cells, minlength=n_cells)
    kept = np.flatnonzero(counts >= max(int(min_rows), 1))
    onehot = (cells[:, None] == kept[None, :]) if kept.size else np.ones((len(cells), 1), dtype=bool)
    w = np.asarray(weights, dtype=np.float32)
    den = w @ onehot.astype(np.float32)                                    # (B, c)
    ok = np.asarray(correct, dtype=np.float32)
    k, c = ok.shape[0], onehot.shape[1]
    hits = w @ (ok.T[:, :, None] * onehot[:, None, :]).reshape(len(cells), k * c)   # (B, K * c)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = hits.reshape(-1, k, c) / den[:, None, :]
    acc[np.broadcast_to(den[:, None, :] == 0, acc.shape)] = np.inf         # an empty cell is no one's worst
    return acc.min(axis=2).T.astype(np.float64)


def paired_gain_bound(halves: list[tuple[np.ndarray, np.ndarray]], n_cells: int, min_rows: int, quantile: float,
                      rng: np.random.Generator, n_boot: int = 300) -> np.ndarray:
    """Lower bootstrap bound of each head's worst-cell gain over head 0, paired by row.

    Parameters
    ----------
    halves : list of (correct (K, n_h) bool, cells (n_h,) int), one per validation half
        (the heads in the same order in every half; head 0 is the reference)
    n_cells, min_rows : as in :func:`bootstrap_worst_cells`
    quantile : float in (0, 1)
        The bound is this quantile of the bootstrap distribution of the gain in the mean
        over halves of the worst-cell accuracy (0.1: a one-sided 90% bound).
    rng : numpy Generator (Poisson(1) row weights, drawn independently per half)
    n_boot : int

    Returns
    -------
    (K,) the bound; 0 for head 0.
    """
    total = None
    for correct, cells in halves:
        worst = np.concatenate([  # (K, B); the draws in blocks keep the weight matrix small
            bootstrap_worst_cells(correct, cells, n_cells, min_rows,
                                  rng.poisson(1.0, size=(min(_BLOCK, int(n_boot) - start), len(cells))))
            for start in range(0, int(n_boot), _BLOCK)], axis=1)
        total = worst if total is None else total + worst
    assert total is not None, "at least one half is needed"
    gain = (total - total[0]) / len(halves)
    return np.quantile(gain, float(quantile), axis=1)


def _se(v: np.ndarray, v0: float, n: np.ndarray, n0: int) -> np.ndarray:
    """Binomial standard error of the difference of two accuracies on ``min(n, n0)`` rows."""
    pairs = np.minimum(n, n0).clip(min=1)
    return np.sqrt((v * (1 - v) + v0 * (1 - v0)).clip(0) / pairs)


def guard_choice(values_a: np.ndarray, sizes_a: np.ndarray, balanced: np.ndarray, rule: GuardRule,
                 values_b: np.ndarray | None = None, sizes_b: np.ndarray | None = None, *,
                 pseudo: np.ndarray | None = None, lower: np.ndarray | None = None,
                 floor_values: np.ndarray | None = None) -> GuardDecision:
    """Pick the candidate that replaces the ERM head (index 0), or keep it.

    Parameters
    ----------
    values_a, sizes_a : (K,) worst audit-cell accuracy of each candidate on one half, and
        that cell's size (-inf for a candidate with non-finite logits)
    balanced : (K,) class-balanced accuracy on the scored rows (mean over halves)
    rule : GuardRule
    values_b, sizes_b : (K,) the same on the other half (cross-fitting), or None
    pseudo : (K,) mean accuracy over the inferred groups of the scored rows, or None
    lower : (K,) a lower bound of each candidate's gain in value over ERM's
        (:func:`paired_gain_bound`), or None
    floor_values : (K,) the worst-cell accuracy ``min_repaired_accuracy`` is checked on
        (e.g. over more cells than the value reads), or None for the values themselves
    """
    va = np.asarray(values_a, dtype=np.float64)
    na = np.asarray(sizes_a, dtype=np.int64)
    halves = [(va, na)]
    if values_b is not None and sizes_b is not None:
        halves.append((np.asarray(values_b, dtype=np.float64), np.asarray(sizes_b, dtype=np.int64)))
    values = np.mean([v for v, _ in halves], axis=0)
    n_all = np.sum([n for _, n in halves], axis=0)
    finite = np.isfinite(values)
    vals = np.where(finite, values, 0.0)
    se = _se(vals, vals[0], n_all, int(n_all[0]))
    needed = vals[0] + float(rule.margin) + float(rule.margin_z) * se
    allowed = finite & (values > needed)
    bound_ok = np.ones(len(values), dtype=bool)
    if lower is not None:
        bound_ok = np.asarray(lower, dtype=np.float64) > float(rule.margin)
        allowed &= bound_ok
    if rule.confirm_z is not None and len(halves) > 1:
        for v, n in halves:
            vf = np.where(np.isfinite(v), v, 0.0)
            allowed &= v > vf[0] + float(rule.confirm_z) * _se(vf, vf[0], n, int(n[0]))
    allowed &= balanced >= balanced[0] - float(rule.max_balanced_drop)
    floor = values if floor_values is None else np.asarray(floor_values, dtype=np.float64)
    allowed &= floor >= float(rule.min_repaired_accuracy)
    pseudo_ok = np.ones(len(values), dtype=bool)
    if pseudo is not None and rule.max_pseudo_drop is not None:
        pm = np.asarray(pseudo, dtype=np.float64)
        pseudo_ok = pm >= pm[0] - float(rule.max_pseudo_drop)
        allowed &= pseudo_ok
    allowed[0] = True
    best = int(np.argmax(np.where(allowed, values, -np.inf))) if allowed[1:].any() else 0
    reason = None if best else _reason(values, needed, balanced, allowed, rule, pseudo_ok, bound_ok, floor)
    return GuardDecision(best, values, needed, allowed, np.asarray(balanced, dtype=np.float64), reason)


_REQUIRED = ("values_a", "sizes_a", "balanced")
_OPTIONAL = ("values_b", "sizes_b", "pseudo", "lower", "floor_values")
_RECORD_ARRAYS = _REQUIRED + _OPTIONAL


def guard_record(values_a: np.ndarray, sizes_a: np.ndarray, balanced: np.ndarray, rule: GuardRule,
                 values_b: np.ndarray | None = None, sizes_b: np.ndarray | None = None, *,
                 pseudo: np.ndarray | None = None, lower: np.ndarray | None = None,
                 floor_values: np.ndarray | None = None) -> dict[str, Any]:
    """The arguments of one :func:`guard_choice` call as a JSON-friendly dict (lists of floats,
    None where absent; the rule's fields under ``"rule"``), so that :func:`replay_guard` can
    decide again, under other thresholds, without refitting a candidate."""
    arrays = (values_a, sizes_a, balanced, values_b, sizes_b, pseudo, lower, floor_values)
    out: dict[str, Any] = {k: None if a is None else np.asarray(a, dtype=np.float64).tolist()
                           for k, a in zip(_RECORD_ARRAYS, arrays, strict=True)}
    out["rule"] = asdict(rule)
    return out


def replay_guard(record: dict[str, Any], **overrides: Any) -> GuardDecision:
    """:func:`guard_choice` on a :func:`guard_record`, with fields of its :class:`GuardRule`
    replaced by ``overrides`` (e.g. ``margin=0.1``); ``lower=None`` or ``floor_values=None``
    drop the paired bound or the separate floor cells (an unknown rule field raises TypeError)."""
    missing = [k for k in (*_REQUIRED, "rule") if record.get(k) is None]
    if missing:
        raise GradTuneInputError(f"not a guard_record: {missing} missing (keys present: {sorted(record)})")
    dropped = {k for k in ("lower", "floor_values") if k in overrides}
    for k in dropped:
        if overrides.pop(k) is not None:
            raise GradTuneInputError(f"{k} can only be dropped in a replay ({k}=None), not replaced")
    got = {k: None if record.get(k) is None or k in dropped else np.asarray(record[k], dtype=np.float64)
           for k in _OPTIONAL}
    rule = replace(GuardRule(**record["rule"]), **overrides)
    va, na, bal = (np.asarray(record[k], dtype=np.float64) for k in _REQUIRED)
    nb = None if got["sizes_b"] is None else got["sizes_b"].astype(np.int64)
    return guard_choice(va, na.astype(np.int64), bal, rule, got["values_b"], nb, pseudo=got["pseudo"],
                        lower=got["lower"], floor_values=got["floor_values"])


def replay_guards(records: list[dict[str, Any]], **overrides: Any) -> tuple[int, GuardDecision]:
    """:func:`replay_guard` on each record in turn (cell sets judged in order): the first that
    repairs, as (its index, its decision); the last record's when every one keeps the ERM head."""
    if not records:
        raise GradTuneInputError("replay_guards needs at least one guard record")
    for i, rec in enumerate(records):
        decision = replay_guard(rec, **overrides)
        if decision.best:
            return i, decision
    return len(records) - 1, decision


def _reason(values: np.ndarray, needed: np.ndarray, balanced: np.ndarray, allowed: np.ndarray,
            rule: GuardRule, pseudo_ok: np.ndarray, bound_ok: np.ndarray, floor: np.ndarray) -> str:
    """Why no candidate passed, from the best-valued candidate's numbers."""
    if len(values) < 2 or not np.isfinite(values[1:]).any():
        return "there was no usable candidate besides the ERM head"
    j = 1 + int(np.nanargmax(np.where(np.isfinite(values[1:]), values[1:], -np.inf)))
    if values[j] <= needed[j]:
        return (f"no candidate beat the ERM head on the audit cells by more than the noise (best "
                f"{values[j]:.1%} against the ERM head's {values[0]:.1%}, {needed[j]:.1%} needed)")
    if not bound_ok[j]:
        return (f"the best candidate's gain on the audit cells ({values[j]:.1%} against {values[0]:.1%}) is "
                "within the noise of the rows it was scored on (paired bootstrap bound <= "
                f"{float(rule.margin):g})")
    if floor[j] < float(rule.min_repaired_accuracy):
        return (f"the best candidate classifies only {floor[j]:.1%} of its worst audit cell correctly "
                f"(min_repaired_accuracy={float(rule.min_repaired_accuracy):.3g}): it guesses on the rows the "
                "ERM head gets wrong rather than repairing them")
    if balanced[j] < balanced[0] - float(rule.max_balanced_drop):
        return (f"the candidates that beat the ERM head lose more than max_balanced_drop="
                f"{float(rule.max_balanced_drop):g} of class-balanced accuracy (best candidate: "
                f"{balanced[j]:.1%} against {balanced[0]:.1%})")
    if not pseudo_ok[j]:
        drop = float(rule.max_pseudo_drop or 0.0)   # pseudo_ok is only False with the rule set
        change = (f"lowers the mean accuracy over the inferred groups (weighted {rule.pseudo_weighting}) by more "
                  f"than max_pseudo_drop={drop:g}" if drop >= 0 else
                  f"raises the mean accuracy over the inferred groups (weighted {rule.pseudo_weighting}) by less "
                  f"than {-drop:g} (max_pseudo_drop={drop:g})")
        return (f"the best candidate raises the worst audit cell ({values[j]:.1%} against {values[0]:.1%}) but "
                f"{change}: it trades easy rows for hard ones rather than repairing a minority")
    return (f"the best candidate's gain on the audit cells ({values[j]:.1%} against {values[0]:.1%}) "
            f"did not show on each validation half separately (confirm_z={rule.confirm_z:g}): it looks "
            "like the luck of picking the best of several noisy candidates")
