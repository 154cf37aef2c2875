"""benchmarks/guard_learned.py: candidate features, kinds and choices, by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradtune.selection.guard import GuardRule, guard_record
from tests._benchmarks import benchmark_module


@pytest.fixture(scope="module")
def tool():
    yield from benchmark_module("guard_learned")


def _run(member: str, auc: float | None) -> dict:
    rec = guard_record(np.array([0.2, 0.5, 0.3]), np.array([40, 30, 40]), np.array([0.9, 0.85, 0.88]),
                       GuardRule(margin=0.05), values_b=np.array([0.1, 0.4, 0.35]), sizes_b=np.array([20, 25, 35]),
                       pseudo=np.array([0.7, 0.72, 0.71]), lower=np.array([0.0, 0.2, 0.04]),
                       floor_values=np.array([0.15, 0.45, 0.32]))
    return {"member": member, "seed": 0, "control": False, "auc": auc, "twin_auc": 0.8, "erm": [0.5, 0.8],
            "oracle": [0.7, 0.78], "guard_inputs": json.loads(json.dumps(rec)),
            "candidate_test": [[0.5, 0.8], [0.65, 0.79], [0.51, 0.8]]}


def test_candidate_features_by_hand(tool) -> None:
    f = tool.candidate_features(_run("lin-weak-core-64", None))
    assert f.shape == (2, len(tool.FEATURES))
    row = dict(zip(tool.FEATURES, f[0], strict=True))
    # candidate 1: gains 0.3 (half a) and 0.3 (half b); balanced 0.85 - 0.9; pseudo 0.72 - 0.7
    expect = {"gain_a": 0.3, "gain_b": 0.3, "gain_min": 0.3, "bound": 0.2, "balanced_change": -0.05,
              "pseudo_change": 0.02, "floor": 0.45, "structure_auc": 0.5, "twin_auc": 0.8, "cell_rows": 25,
              "erm_value_a": 0.2, "erm_value_b": 0.1, "erm_balanced": 0.9}
    for k, v in expect.items():
        assert row[k] == pytest.approx(v), k
    assert f[1, tool.FEATURES.index("gain_min")] == pytest.approx(0.1)   # min(0.1, 0.25)


def test_examples_and_targets(tool) -> None:
    runs = [_run("lin-weak-core-64", 0.7), {"member": "control-2class", "seed": 0, "erm": [0.7, 0.7]}]
    x, helps, run_idx, cand_idx = tool.examples(runs)
    assert x.shape == (2, len(tool.FEATURES))
    assert helps.tolist() == [True, False]     # +15 points, +1 point (not above 2)
    assert run_idx.tolist() == [0, 0] and cand_idx.tolist() == [1, 2]


def test_feature_kinds(tool) -> None:
    kinds = {m: tool.feature_kind(m) for m in ("control-relu", "relu-weak-core", "control-factor4", "control-mvt3",
                                               "lin-weak-core-64", "mlp-weak-core", "fm-control-bg", "reviews-question")}
    assert kinds == {"control-relu": "relu", "relu-weak-core": "relu", "control-factor4": "factors",
                     "control-mvt3": "heavy-tail", "lin-weak-core-64": "gaussian", "mlp-weak-core": "mlp",
                     "fm-control-bg": "images", "reviews-question": "text"}


def test_chosen_takes_each_runs_best_candidate_over_the_threshold(tool) -> None:
    scores = np.array([0.6, 0.95, 0.85, 0.7, 0.2])
    runs = np.array([0, 0, 1, 1, 2])
    cands = np.array([1, 2, 1, 2, 1])
    assert tool.chosen(scores, runs, cands, 0.8) == {0: 2, 1: 1}
    assert tool.chosen(scores, runs, cands, 0.99) == {}


def test_held_out_scores_never_see_their_group(tool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    helps = x[:, 0] > 0
    groups = np.repeat(np.arange(3), 20)
    s = tool.held_out_scores(x, helps, groups, "logistic")
    assert ((s > 0.5) == helps).mean() > 0.9    # a learnable rule transfers across groups
    # holding out group 2 (the only rows that do not help) leaves one target to learn: scored 0, kept
    one = tool.held_out_scores(x, np.array([True] * 40 + [False] * 20), groups, "logistic")
    assert (one[40:] == 0).all() and (one[:40] > 0).all()
