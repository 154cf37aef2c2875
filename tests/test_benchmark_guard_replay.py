"""benchmarks/guard_replay.py: decisions replayed from hand-made stored runs, by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradtune.selection.guard import GuardRule, guard_record
from tests._benchmarks import benchmark_module


@pytest.fixture(scope="module")
def tool():
    yield from benchmark_module("guard_replay")


def _run(member: str, seed: int, control: bool, auc: float, twin_auc: float | None) -> dict:
    # ERM 0.2 on its worst cell; candidate 1 gains 0.3 (bound 0.2), candidate 2 gains 0.1 (bound 0.04)
    rec = guard_record(np.array([0.2, 0.5, 0.3]), np.array([40, 40, 40]), np.array([0.9, 0.85, 0.88]),
                       GuardRule(margin=0.05), pseudo=np.array([0.7, 0.72, 0.71]),
                       lower=np.array([0.0, 0.2, 0.04]))
    return {"member": member, "seed": seed, "control": control, "auc": auc, "twin_auc": twin_auc,
            "erm": [0.5, 0.8], "oracle": [0.7, 0.78], "guard_inputs": json.loads(json.dumps(rec)),
            "candidate_test": [[0.5, 0.8], [0.65, 0.79], [0.55, 0.8]]}


def test_the_gate_and_the_guard_are_replayed(tool) -> None:
    gate = dict(tool.DEFAULT_GATE)
    run = _run("lin-weak-core-64", 0, False, auc=0.65, twin_auc=None)
    assert tool.decide(run, gate, {}) == ([0.65, 0.79], True)             # gate open, candidate 1
    assert tool.decide(run, gate, {"margin": 0.25}) == ([0.5, 0.8], False)  # its bound 0.2 <= 0.25
    closed = {**gate, "min_structure_auc": 0.7}
    assert tool.decide(run, closed, {}) == ([0.5, 0.8], False)             # 0.65 < 0.7, no twin AUC
    assert tool.decide({**run, "twin_auc": 0.75}, closed, {})[1]            # the twins' route opens it
    kept = {k: v for k, v in run.items() if k not in ("guard_inputs", "candidate_test")}
    assert tool.decide(kept, gate, {}) == ([0.5, 0.8], False)              # kept before the guard


def test_the_checks_count_a_repaired_control_as_failing(tool) -> None:
    runs = [_run("lin-weak-core-64", s, False, 0.65, None) for s in range(3)]
    runs += [_run("control-2class", s, True, 0.65 if s == 0 else 0.5, None) for s in range(3)]
    lines, repaired = tool.summarize(runs, dict(tool.DEFAULT_GATE), {})
    assert repaired == 4
    assert lines[-2] == "- members failing a check: 1 of 2"
    # by hand: lin-weak-core-64 closes (0.65 - 0.5) / (0.7 - 0.5) = 75% of its gap; the control, repaired
    # in one seed of three, (0.55 - 0.5) / 0.2 = 25%; the median of the two is 50%
    assert lines[-1].startswith("- median ERM -> oracle gap closed over the 2 members with a gap: 50%")
    control = next(line for line in lines if line.startswith("- control-2class"))
    assert "kept in 67% of seeds" in control


def test_report_members_are_refused(tool, tmp_path) -> None:
    with pytest.raises(SystemExit) as e:
        tool.main(["replay", "--members", "lin-weak-core-512", "--out", str(tmp_path)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        tool.main(["replay", "--members", "lin-weak-core-64", "--out", str(tmp_path)])  # no store yet
