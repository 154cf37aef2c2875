"""Experiment configs: packaged configs parse; malformed configs fail with the field named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gradtune.cli import main
from gradtune.experiments.config import ConfigError, load_config, packaged_configs, parse_config

from ._toy import config_text, write_bundles


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_bundles(tmp_path_factory.mktemp("bundles"))


def _cfg(**experiment):
    base = {"benchmarks": ["adult"], "seeds": [0, 1], "methods": ["erm", "gradtune"]}
    base.update(experiment)
    return {"experiment": base}


def _error(data, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data, **kw)
    return str(err.value)


def test_packaged_configs_parse():
    names = packaged_configs()
    for required in ("paper-table1", "ablation-k", "ablation-size", "ablation-balance", "ablation-retrain",
                     "offline-table1", "offline-ablation-k", "offline-ablation-size", "offline-ablation-balance",
                     "offline-ablation-retrain"):
        assert required in names
    for name in names:
        cfg = load_config(name, check_paths=name.startswith("offline-"))
        assert cfg.name == name and cfg.run_specs()
    k = load_config("offline-ablation-k")
    assert sorted(v.params["top_k"] for v in k.variants if v.method == "gradtune") == \
        [5, 50, 100, 200, 300, 400, 450, 495]
    size = load_config("ablation-size", check_paths=False)
    pairs = sorted((v.params["size"], v.params["top_k"]) for v in size.variants if v.method == "gradtune")
    assert pairs == [(20, 16), (100, 80), (250, 200), (500, 400)]  # k = 0.8 M'
    # per-benchmark settings of the paper's Table 3 reach the runs of that benchmark only
    t1 = load_config("paper-table1", check_paths=False)
    by = {(s.benchmark, s.method): dict(s.params) for s in t1.run_specs() if s.seed == 0}
    assert by[("celeba", "gradtune")]["finetune.batch_size"] == 100
    assert by[("multinli", "gradtune")]["finetune.optimizer"] == "adamw"
    assert "finetune.batch_size" not in by[("waterbirds", "gradtune")]
    assert by[("celeba", "dfr")] == {}


def test_grid_and_variants_expand(bundles):
    data = {"experiment": {"benchmarks": [f"bundle:{bundles['toy-a']}"], "seeds": [0, 1, 2],
                           "methods": ["erm", "gradtune"]},
            "params": {"gradtune": {"finetune": {"epochs": 3}}},
            "grid": {"gradtune": {"top_k": [4, 8], "finetune.sampler": ["class_balanced", "uniform"]}},
            "variants": {"gradtune": [{"size": 10}, {"size": 20, "label": "big"}]}}
    cfg = parse_config(data)
    assert len(cfg.variants) == 1 + 2 * 2 * 2
    assert len(cfg.run_specs()) == 3 * len(cfg.variants)
    labels = [v.label for v in cfg.variants]
    assert "gradtune [size=10, top_k=4, finetune.sampler=class_balanced]" in labels
    assert "big [top_k=8, finetune.sampler=uniform]" in labels
    v = next(v for v in cfg.variants if v.label == "big [top_k=8, finetune.sampler=uniform]")
    assert v.params == {"finetune.epochs": 3, "size": 20, "top_k": 8, "finetune.sampler": "uniform"}
    assert cfg.benchmarks[0].name == "toy-a" and cfg.benchmarks[0].kind == "bundle"
    method = cfg.run_specs()[1].build()
    assert method.finetune.epochs == 3


@pytest.mark.parametrize("data, field, words", [
    (_cfg(methods=["erm", "gradtune", "gradtun"]), "experiment.methods[2]", "unknown method 'gradtun'; available: ["),
    (_cfg(seeds=[0, -1]), "experiment.seeds[1]", "must be an integer >= 0"),
    (_cfg(seeds="0"), "experiment.seeds", "must be a non-empty list of integers"),
    (_cfg(benchmarks=["adlt"]), "experiment.benchmarks[0]", "unknown benchmark 'adlt'"),
    (_cfg(benchmarks=["adult", "adult"]), "experiment.benchmarks", "appear more than once"),
    (_cfg(methods=["erm", "erm"]), "experiment.methods", "each method once"),
    ({**_cfg(), "grid": {"gradtune": {"top_k": ["x", 5]}}}, "grid.gradtune.top_k[0]", "must be an integer"),
    ({**_cfg(), "grid": {"gradtune": {"top_k": [5, -1]}}}, "grid.gradtune.top_k[1]", "must be >= 0, got -1"),
    ({**_cfg(), "grid": {"gradtune": {"top_k": 5}}}, "grid.gradtune.top_k", "must be a non-empty list of values"),
    ({**_cfg(), "grid": {"gradtune": {"topk": [5]}}}, "grid.gradtune.topk", "not a parameter of method 'gradtune'"),
    ({**_cfg(), "grid": {"dfr": {"num_retrains": [5]}}}, "grid.dfr", "not a method of this experiment"),
    ({**_cfg(), "params": {"gradtune": {"finetune": {"sampler": 3}}}}, "params.gradtune.finetune.sampler",
     "must be a string"),
    ({**_cfg(), "params": {"gradtune": {"finetune": {"sampler": "balanced"}}}}, "params.gradtune.finetune.sampler",
     "must be one of ['class_balanced', 'uniform', 'weighted'], got 'balanced'"),
    ({**_cfg(), "params": {"gradtune": {"top_k": -10}}}, "params.gradtune.top_k", "must be >= 0, got -10"),
    ({**_cfg(), "params": {"gradtune": {"replace": "no"}}}, "params.gradtune.replace", "must be a boolean"),
    ({**_cfg(), "variants": {"gradtune": [{"size": 20, "top_k": 400}]}}, "method 'gradtune [size=20, top_k=400]'",
     "top_k must be at most size (20), got 400"),
    ({**_cfg(), "variants": {"gradtune": [{"top_k": 4}]}, "grid": {"gradtune": {"top_k": [5]}}},
     "variants.gradtune[0].top_k", "also set in grid.gradtune"),
    ({**_cfg(), "report": {"tables": ["table9"]}}, "report.tables[0]", "unknown item 'table9'"),
    ({**_cfg(), "launcher": {"workers": 0}}, "launcher.workers", "must be an integer >= 1"),
    ({**_cfg(), "launcher": {"kind": "ray"}}, "launcher.kind", "must be one of"),
    ({**_cfg(), "grids": {}}, "grids", "unknown section"),
    ({"experiment": {"seeds": [0], "methods": ["erm"]}}, "experiment.benchmarks", "missing"),
    ({"experiment": {**_cfg()["experiment"], "seed": [1]}}, "experiment.seed", "unknown key"),
])
def test_malformed_config_names_the_field(data, field, words):
    msg = _error(data)
    assert msg.startswith(field + ":") or f" {field}" in msg or msg.startswith(field), msg
    assert words in msg, msg


def test_bundle_paths_are_checked(tmp_path, monkeypatch, bundles):
    msg = _error(_cfg(benchmarks=["bundle:missing-{seed}.npz"]), base_dir=tmp_path)
    assert msg.startswith("experiment.benchmarks[0]: bundle file not found") and "missing-0.npz" in msg
    monkeypatch.delenv("GRADTUNE_TEST_BUNDLES", raising=False)
    msg = _error(_cfg(benchmarks=["bundle:${GRADTUNE_TEST_BUNDLES}/wb-seed{seed}.npz"]))
    assert "GRADTUNE_TEST_BUNDLES" in msg and "not set" in msg
    monkeypatch.setenv("GRADTUNE_TEST_BUNDLES", str(bundles["toy-a"].parent))
    cfg = parse_config(_cfg(benchmarks=["bundle:${GRADTUNE_TEST_BUNDLES}/toy-a.npz",
                                        {"name": "again", "bundle": str(bundles["toy-a"])}]))
    assert [b.name for b in cfg.benchmarks] == ["toy-a", "again"]
    # relative paths are relative to the config file; seeds are filled into {seed}
    cfg = parse_config(_cfg(benchmarks=["bundle:toy-a.npz"]), base_dir=bundles["toy-a"].parent)
    assert cfg.benchmarks[0].bundle_path(3) == bundles["toy-a"]


def test_config_file_errors_name_file_and_field(tmp_path, capsys, bundles):
    bad = tmp_path / "bad.toml"
    bad.write_text(config_text(bundles).replace('"gradtune"]', '"gradtun"]'))
    with pytest.raises(ConfigError, match=re.escape("bad.toml: experiment.methods[2]: unknown method 'gradtun'")):
        load_config(bad)
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "experiment.methods[2]: unknown method 'gradtun'" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[experiment\nname = 1")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(broken)
    with pytest.raises(FileNotFoundError, match="packaged configs"):
        load_config(tmp_path / "nope.toml")


def test_yaml_config(tmp_path, bundles):
    yaml = pytest.importorskip("yaml")
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({"experiment": {"benchmarks": [f"bundle:{bundles['toy-a']}"], "seeds": [0],
                                                "methods": ["erm"]}}))
    assert load_config(p).name == "exp"


def test_dry_run_and_list(capsys, tmp_path, bundles):
    p = tmp_path / "grid.toml"
    p.write_text(config_text(bundles, extra="[grid.gradtune]\ntop_k = [4, 8]"))
    assert main(["run", str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "toy: 16 runs = 2 benchmarks x 2 seeds x 4 settings" in out
    assert main(["run", "--list"]) == 0
    assert "offline-ablation-k" in capsys.readouterr().out
    assert not Path(tmp_path / "gradtune-results").exists()


def test_family_defaults_apply_under_the_configs_own_params(tmp_path):
    from gradtune.methods.tuning import family_defaults

    data = {"experiment": {"seeds": [0], "methods": ["gradtune", "dfr"], "benchmarks": [
        {"offline": "reviews"},                                   # family from the offline benchmark
        {"name": "multinli", "bundle": str(tmp_path / "m-seed{seed}.npz")},   # from the dataset name
        {"name": "mine", "bundle": str(tmp_path / "x-seed{seed}.npz"), "family": "text",
         "params": {"gradtune": {"finetune": {"lr": 3e-5}}}},   # explicit family, config overrides
        {"offline": "adult"},
    ]}}
    cfg = parse_config(data, check_paths=False)
    assert [b.family for b in cfg.benchmarks] == ["text", "text", "text", "tabular"]
    specs = {(s.benchmark, s.method): dict(s.params) for s in cfg.run_specs()}
    text = family_defaults("gradtune", "text")
    assert specs[("reviews", "gradtune")] == text == specs[("multinli", "gradtune")]
    assert specs[("mine", "gradtune")] == {**text, "finetune.lr": 3e-5}
    assert specs[("adult", "gradtune")] == {} and specs[("reviews", "dfr")] == {}
    bad = {"experiment": {**data["experiment"], "benchmarks": [{"offline": "adult", "family": "audio"}]}}
    assert "family" in _error(bad, check_paths=False)
