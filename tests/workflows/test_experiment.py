"""The experiment workflow: configs into a store, each stored number against the method run by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.embeddings.bundle import load_bundle
from gradtune.experiments.spec import RunSpec
from gradtune.metrics.accuracy import evaluate
from gradtune.results.records import load_records
from gradtune.workflows.experiment import benchmark_names, load_selected, run_configs
from tests.experiments._toy import config_text, write_bundles


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_bundles(tmp_path_factory.mktemp("bundles"))


def test_benchmark_names_split_commas_and_keep_order():
    assert benchmark_names(["b,a", "c", "a", " b "]) == ["b", "a", "c"]


def test_run_configs_stores_what_the_methods_give_by_hand(tmp_path, bundles):
    path = tmp_path / "exp.toml"
    path.write_text(config_text(bundles, name="wf", seeds=(0,), methods=("erm", "random"), epochs=3))
    configs = load_selected([path], benchmarks=["toy-a"])
    assert [b.name for b in configs[0].benchmarks] == ["toy-a"]
    seen: list[tuple[str, bool]] = []
    outcome = run_configs(configs, tmp_path / "out", progress=False,
                          on_record=lambda r, reused: seen.append((r["method"], reused)), report=True)
    assert outcome.summary.new == 2 and sorted(seen) == [("erm", False), ("random", False)]
    assert outcome.report is not None and (tmp_path / "out" / "report" / "report.md").exists()
    records = {r["method"]: r for r in load_records(tmp_path / "out")}
    bundle = load_bundle(bundles["toy-a"]).resolve_heldout(0)
    counts = np.bincount(bundle.view("train").groups, minlength=bundle.n_groups)
    test = bundle.view("test")
    for spec in configs[0].run_specs():
        head = RunSpec(spec.benchmark, 0, spec.method, spec.params).build().fit(bundle, seed=0).model
        ref = evaluate(test.features @ np.asarray(head.weight).T + np.asarray(head.bias), test.labels, test.groups,
                       n_groups=bundle.n_groups, train_group_counts=counts, n_classes=bundle.n_classes)
        got = records[spec.method]["evaluation"]["test"]
        assert got["worst_group_accuracy"] == pytest.approx(ref.worst_group_accuracy, abs=1e-12)
        assert got["accuracy"] == pytest.approx(ref.accuracy, abs=1e-12)
    again = run_configs(configs, tmp_path / "out", progress=False)
    assert (again.summary.new, again.summary.reused) == (0, 2)
