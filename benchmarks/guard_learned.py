"""Would a guard learned from the development half's outcomes generalize? A study, not a default.

    python benchmarks/guard_learned.py [--out build/guard-replay] [--cv member kind]
                                       [--model logistic boosting] [--thresholds 0.7 0.8 0.9]

Reads a replay store of ``benchmarks/guard_replay.py collect`` (development members only;
the gate was open when it was collected). Every retraining candidate of every stored run
becomes one example: the numbers the guard sees (:data:`FEATURES`, computed from
``diagnostics["guard_inputs"]`` and the structure test's AUCs) and, as the target, whether
its refit raised test WGA over ERM by more than 2 points. A classifier is fitted on some
members and scores the candidates of the others; a run is repaired with its best-scored
candidate when that score exceeds a threshold, otherwise the ERM head is kept. The stress
suite's acceptance checks are then printed as ``guard_replay.py replay`` prints them, with
the hand-written guard (the recorded rule and the default gate) first for comparison.

Two ways of holding members out:

* ``member``: each member's runs are scored by a classifier fitted on every other member.
  Members of the same kind (the same feature law, a sibling control) stay in training.
* ``kind``: each kind of features (:func:`feature_kind`: Gaussian, ReLU layer, shared
  factors, heavy tails, an MLP head, images, text, tabular), controls included, is scored
  by a classifier that never saw that kind, as a problem built elsewhere would be.

Test rows are read only here, to build the targets and the checks, as in the replay tool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gradtune.data.synthetic import ShortcutSpec
from gradtune.experiments.stress import STRESS_SUITE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard_replay import DEFAULT_GATE, summarize  # noqa: E402  (the replay tool's checks)

#: What each candidate example holds, in this order.
FEATURES = ("gain_a", "gain_b", "gain_min", "bound", "balanced_change", "pseudo_change", "floor",
            "structure_auc", "twin_auc", "cell_rows", "erm_value_a", "erm_value_b", "erm_balanced")
GAIN = 0.02  # a candidate "helps" when its refit raises test WGA by more than this


def feature_kind(member: str) -> str:
    """The kind of features a member's rows have (controls with the shortcut members of their kind)."""
    m = STRESS_SUITE[member]
    if isinstance(m.spec, ShortcutSpec):
        s = m.spec
        if s.encoder == "relu":
            return "relu"
        if s.noise_factors:
            return "factors"
        if s.noise_df is not None:
            return "heavy-tail"
        return "mlp" if m.erm == "mlp" else "gaussian"
    return {"vision": "images"}.get(m.data_family, m.data_family)


def candidate_features(rec: dict) -> np.ndarray:
    """(K - 1, len(FEATURES)) one row per non-ERM candidate of a stored run (ERM is candidate 0)."""
    g = {k: np.asarray(v, dtype=np.float64) for k, v in rec["guard_inputs"].items() if k != "rule"}
    va, vb = g["values_a"], g["values_b"]
    ga, gb = va[1:] - va[0], vb[1:] - vb[0]
    k = len(va) - 1
    auc = 0.5 if rec.get("auc") is None else float(rec["auc"])
    twin = 0.5 if rec.get("twin_auc") is None else float(rec["twin_auc"])
    cols = [ga, gb, np.minimum(ga, gb), g["lower"][1:], g["balanced"][1:] - g["balanced"][0],
            g["pseudo"][1:] - g["pseudo"][0], g["floor_values"][1:], np.full(k, auc), np.full(k, twin),
            np.minimum(g["sizes_a"][1:], g["sizes_b"][1:]), np.full(k, va[0]), np.full(k, vb[0]),
            np.full(k, g["balanced"][0])]
    return np.stack(cols, axis=1)


def examples(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X (n, F), helps (n,) bool, run index (n,), candidate index (n,)) over the runs with candidates."""
    xs, ys, ri, ki = [], [], [], []
    for i, r in enumerate(runs):
        if "guard_inputs" not in r:
            continue
        f = candidate_features(r)
        xs.append(f)
        ys.append(np.array([t[0] - r["erm"][0] > GAIN for t in r["candidate_test"][1:]]))
        ri.append(np.full(len(f), i))
        ki.append(np.arange(1, len(f) + 1))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ri), np.concatenate(ki)


def _classifier(model: str):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if model == "boosting":
        return GradientBoostingClassifier(n_estimators=150, max_depth=2, learning_rate=0.05, subsample=0.8,
                                          random_state=0)
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def held_out_scores(x: np.ndarray, helps: np.ndarray, groups: np.ndarray, model: str) -> np.ndarray:
    """(n,) each example's probability of helping, from a classifier fitted without its group."""
    out = np.zeros(len(x))
    for g in np.unique(groups):
        test = groups == g
        if helps[~test].all() or not helps[~test].any():
            continue  # one class only in training: score 0 (keep the head)
        out[test] = _classifier(model).fit(x[~test], helps[~test]).predict_proba(x[test])[:, 1]
    return out


def chosen(scores: np.ndarray, run_idx: np.ndarray, cand_idx: np.ndarray, threshold: float) -> dict[int, int]:
    """run -> its best-scored candidate, for the runs whose best score exceeds ``threshold``."""
    best: dict[int, tuple[float, int]] = {}
    for s, r, k in zip(scores, run_idx, cand_idx, strict=True):
        if s > threshold and (r not in best or s > best[r][0]):
            best[int(r)] = (float(s), int(k))
    return {r: k for r, (_, k) in best.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("build/guard-replay"), help="the replay store's folder")
    ap.add_argument("--cv", nargs="+", default=["member", "kind"], choices=("member", "kind"))
    ap.add_argument("--model", nargs="+", default=["logistic", "boosting"], choices=("logistic", "boosting"))
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    args = ap.parse_args(argv)
    store = args.out / "runs.jsonl"
    if not store.exists():
        ap.error(f"no store at {store}: run `python benchmarks/guard_replay.py collect --out {args.out}` first")
    runs = [json.loads(line) for line in store.read_text().splitlines()]
    x, helps, run_idx, cand_idx = examples(runs)
    print(f"{len(runs)} runs, {len(x)} candidates ({helps.mean():.0%} raise test WGA by more than "
          f"{100 * GAIN:.0f} points)")

    def report(title: str, decider) -> None:
        lines, repaired = summarize(runs, DEFAULT_GATE, {}, decider)
        failing = [line.split(":")[0][2:] for line in lines[:-2]
                   if "not met" in line or ("control" in line and "100%" not in line)]
        print(f"\n## {title}: {repaired} of {len(runs)} runs repaired")
        print("\n".join(lines[-2:]))
        if failing:
            print("  failing: " + ", ".join(failing))

    report("the hand-written guard (recorded rule, default gate)", None)
    for cv in args.cv:
        groups = np.array([runs[i]["member"] if cv == "member" else feature_kind(runs[i]["member"])
                           for i in run_idx])
        for model in args.model:
            scores = held_out_scores(x, helps, groups, model)
            for thr in args.thresholds:
                pick = {id(runs[i]): k for i, k in chosen(scores, run_idx, cand_idx, thr).items()}

                def decider(r: dict, pick=pick) -> tuple[list[float], bool]:
                    k = pick.get(id(r))
                    return (r["erm"], False) if k is None else (r["candidate_test"][k], True)
                report(f"learned ({model}), held out by {cv}, threshold {thr:g}", decider)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
