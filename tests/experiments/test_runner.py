"""The experiment runner: one run's record against a hand evaluation, failures as records,
launchers that run the task function they are given."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune._validation import GradTuneInputError
from gradtune.experiments.bundles import BundleSource, bundle_fingerprint
from gradtune.experiments.launchers import LocalLauncher, SubmititLauncher, submitit_available
from gradtune.experiments.runner import RunTask, execute, execute_task, run_record
from gradtune.experiments.spec import RunSpec
from gradtune.metrics.accuracy import evaluate
from tests.experiments._toy import toy_bundle


def _bundle(name: str, seed: int):
    return toy_bundle(seed).resolve_heldout(seed)


def test_run_record_evaluates_the_fitted_head_on_selection_and_test():
    bundle = _bundle("toy", 1)
    spec = RunSpec("toy", 1, "gradtune", (("finetune.epochs", 3), ("size", 40), ("top_k", 32)))
    rec = run_record(spec, bundle)
    head = spec.build().fit(bundle, seed=1).model  # the same method fitted again, evaluated by hand
    train_counts = np.bincount(bundle.view("train").groups, minlength=bundle.n_groups)
    for split in ("selection", "test"):
        v = bundle.view(split)
        logits = v.features @ np.asarray(head.weight).T + np.asarray(head.bias)
        ref = evaluate(logits, v.labels, v.groups, n_groups=bundle.n_groups, train_group_counts=train_counts,
                       n_classes=bundle.n_classes).to_dict()
        got = rec["evaluation"][split]
        assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
        assert got["worst_group_accuracy"] == pytest.approx(ref["worst_group_accuracy"], abs=1e-12)
    assert rec["bundle_fingerprint"] == bundle_fingerprint(bundle)
    assert rec["method"] == "gradtune" and rec["group_labels"] == "none"
    assert rec["diagnostics"]["heldout_size"] == int(np.sum(bundle.split == "heldout"))


def test_a_failing_run_comes_back_as_a_failed_record():
    source = BundleSource("toy", 0, "callable", build=_bundle)
    fp = bundle_fingerprint(_bundle("toy", 0))
    task = RunTask(RunSpec("toy", 0, "gradtune", (("no_such_param", 1),)), source, "r1", fp, "dh")
    rec = execute_task(task)
    assert rec["status"] == "failed" and "no_such_param" in rec["error"]
    task = RunTask(RunSpec("toy", 0, "erm"), source, "r2", "not-the-fingerprint", "dh")
    rec = execute_task(task)
    assert rec["status"] == "failed" and "changed since the run was planned" in rec["error"]


def test_launchers_run_the_task_function_they_are_given():
    seen: list[dict] = []
    LocalLauncher(1).run([1, 2, 3], lambda t: {"run_id": t, "square": t * t}, seen.append)
    assert [r["square"] for r in seen] == [1, 4, 9]


def test_submitit_launcher_needs_a_failure_function(tmp_path):
    if not submitit_available():  # the launcher itself refuses, naming the package
        with pytest.raises(GradTuneInputError, match="submitit package"):
            SubmititLauncher(tmp_path)
        return
    with pytest.raises(GradTuneInputError, match="failure"):
        SubmititLauncher(tmp_path, cluster="debug").run([1], lambda t: {}, lambda r: None)


def test_execute_reuses_stored_runs(tmp_path):
    jobs = [("x", RunSpec("toy", 0, m), BundleSource("toy", 0, "callable", build=_bundle)) for m in ("erm", "dfr")]
    first = execute(jobs, tmp_path, launcher=LocalLauncher(1))
    again = execute(jobs, tmp_path, launcher=LocalLauncher(1))
    assert (first.new, first.reused, again.new, again.reused) == (2, 0, 0, 2)
    assert [r["evaluation"] for r in first.records] == [r["evaluation"] for r in again.records]
