"""Launchers: worker processes and submitit give the same stored results as a sequential run."""

from __future__ import annotations

import pytest

from gradtune._validation import GradTuneInputError
from gradtune.experiments import launchers
from gradtune.experiments.bundles import BundleSource
from gradtune.experiments.config import load_config
from gradtune.experiments.launchers import LocalLauncher, SubmititLauncher, make_launcher
from gradtune.experiments.runner import RunSpec, execute, run_experiments
from gradtune.results.store import ResultStore

from ._toy import config_text, toy_bundle, write_bundles

METRIC_KEYS = ("params", "test_metrics", "selection_metrics", "group_labels", "bundle_fingerprint", "diagnostics")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    bundles = write_bundles(root / "bundles")
    path = root / "exp.toml"
    path.write_text(config_text(bundles, seeds=(0, 1), methods=("erm", "random", "loss-topk", "gradtune", "dfr"),
                                epochs=20))
    return load_config(path)


@pytest.fixture(scope="module")
def sequential(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    summary = run_experiments([config], out, workers=1)
    assert summary.failed == 0
    return ResultStore(out / "results.sqlite", readonly=True)


def _by_id(store: ResultStore) -> dict[str, dict]:
    return {r["run_id"]: {k: r[k] for k in METRIC_KEYS} for r in store.records(status=None)}


def test_worker_processes_match_sequential(config, sequential, tmp_path):
    # 'fork' starts workers at once (spawned workers each import torch, ~10 s on a slow machine);
    # the tasks still travel pickled through the pool's queue, as with 'spawn'
    summary = run_experiments([config], tmp_path, workers=2, start_method="fork")
    assert (summary.new, summary.failed) == (20, 0)
    par = ResultStore(tmp_path / "results.sqlite", readonly=True)
    assert _by_id(par) == _by_id(sequential)
    workers = {r["worker"] for r in par.records()}
    assert len(workers) >= 1 and all(w.isdigit() for w in workers)  # recorded by the worker processes
    # the summary lists records in plan order, whatever order the workers finished in
    assert [(r["benchmark"], r["seed"], r["label"]) for r in summary.records] == \
        [(s.benchmark, s.seed, s.display) for s in config.run_specs()]


def test_submitit_debug_executor_matches_sequential(config, sequential, tmp_path):
    pytest.importorskip("submitit")
    cfg = config
    cfg.launcher.submitit.update({"cluster": "debug", "tasks_per_job": 7})
    try:
        summary = run_experiments([cfg], tmp_path, launcher="submitit", launcher_folder=tmp_path / "jobs")
    finally:
        for k in ("cluster", "tasks_per_job"):
            cfg.launcher.submitit.pop(k, None)
    assert (summary.new, summary.failed) == (20, 0)
    assert _by_id(ResultStore(tmp_path / "results.sqlite", readonly=True)) == _by_id(sequential)


def test_launcher_errors(monkeypatch, tmp_path):
    with pytest.raises(GradTuneInputError, match="unknown launcher 'ray'"):
        make_launcher("ray")
    with pytest.raises(GradTuneInputError, match="workers must be an integer >= 1"):
        LocalLauncher(0)
    with pytest.raises(GradTuneInputError, match="start_method must be one of"):
        LocalLauncher(2, start_method="thread")
    monkeypatch.setattr(launchers, "submitit_available", lambda: False)
    with pytest.raises(GradTuneInputError, match=r"needs the submitit package \(pip install 'gradtune\[cluster\]'\)"):
        SubmititLauncher(tmp_path)


def test_unpicklable_bundle_source_needs_one_worker(tmp_path):
    bundle = toy_bundle(0).resolve_heldout(0)

    def build(name, seed):  # a closure: cannot be sent to another process
        return bundle

    jobs = [("x", RunSpec("toy", 0, m), BundleSource("toy", 0, "callable", build=build)) for m in ("erm", "dfr")]
    with pytest.raises(GradTuneInputError, match="cannot be sent to worker processes"):
        execute(jobs, tmp_path, launcher=LocalLauncher(2))
    summary = execute(jobs, tmp_path, launcher=LocalLauncher(1))
    assert summary.new == 2 and summary.failed == 0
