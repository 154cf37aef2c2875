"""Where config paths resolve, and running a config on some of its benchmarks (``--benchmarks``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gradtune.cli import main
from gradtune.embeddings.bundle import load_bundle
from gradtune.experiments.config import ConfigError, load_config, select_benchmarks
from gradtune.experiments.config_benchmarks import resolve_path
from gradtune.experiments.runner import run_experiments
from gradtune.results.store import ResultStore

from ._toy import config_text, write_bundles

PAPER = ("waterbirds", "celeba", "multinli", "civilcomments")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A config folder and a different current folder."""
    cfg_dir, cwd = tmp_path / "configs", tmp_path / "cwd"
    cfg_dir.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cfg_dir, cwd


def _copy(src: Path, *dests: Path) -> None:
    for d in dests:
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, d)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def test_packaged_config_takes_a_relative_variable_from_the_current_folder(places, monkeypatch, bundles):
    _, cwd = places
    _copy(bundles["toy-a"], *(cwd / "bundles" / f"waterbirds-seed{s}.npz" for s in (0, 1, 2)))
    monkeypatch.setenv("GRADTUNE_BUNDLES", "bundles")
    cfg = load_config("paper-table1", benchmarks=["waterbirds"])
    assert cfg.benchmark("waterbirds").bundle_path(1) == cwd / "bundles" / "waterbirds-seed1.npz"
    assert cfg.name == "paper-table1[waterbirds]" and cfg.absent == PAPER[1:]
    specs = cfg.run_specs()
    assert {s.benchmark for s in specs} == {"waterbirds"} and len(specs) == 3 * 10
    assert cfg.to_dict()["absent_benchmarks"] == list(PAPER[1:])
    assert cfg.to_dict()["benchmarks"][0]["written"] == "${GRADTUNE_BUNDLES}/waterbirds-seed{seed}.npz"

    # without the selection the first missing benchmark fails, with both forms of its path
    msg = _error(load_config, "paper-table1")
    assert msg.startswith("paper-table1.toml: experiment.benchmarks[1]: bundle file not found (benchmark 'celeba', "
                          "seed(s) [0, 1, 2])"), msg
    for part in ("'${GRADTUNE_BUNDLES}/celeba-seed{seed}.npz'", "GRADTUNE_BUNDLES='bundles'",
                 f"resolved against the current directory {cwd}:", str(cwd / "bundles" / "celeba-seed0.npz"),
                 "--benchmarks"):
        assert part in msg, (part, msg)
    # a missing variable is an error only for the benchmarks asked for
    monkeypatch.delenv("GRADTUNE_BUNDLES")
    msg = _error(load_config, "paper-table1", benchmarks=["multinli"])
    assert "experiment.benchmarks[2]" in msg and "['GRADTUNE_BUNDLES'], which are not set" in msg
    assert "--bundles DIR" in msg
    assert load_config("paper-table1", benchmarks=["waterbirds"], variables={"GRADTUNE_BUNDLES": "bundles"}
                       ).benchmark("waterbirds").bundle_path(0) == cwd / "bundles" / "waterbirds-seed0.npz"


def test_user_config_paths_resolve_against_its_folder_unless_they_start_with_a_variable(
        places, monkeypatch, bundles, tmp_path):
    cfg_dir, cwd = places
    _copy(bundles["toy-a"], cfg_dir / "b" / "toy-seed0.npz", cfg_dir / "b" / "toy-seed1.npz")
    _copy(bundles["toy-b"], cwd / "rel" / "toy2.npz", tmp_path / "home" / "toy3.npz")
    monkeypatch.setenv("GT_TEST_DIR", "rel")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = cfg_dir / "exp.toml"
    path.write_text('[experiment]\nbenchmarks = ["bundle:b/toy-seed{seed}.npz", "bundle:${GT_TEST_DIR}/toy2.npz", '
                    '"bundle:~/toy3.npz"]\nseeds = [0, 1]\nmethods = ["erm"]\ncache_dir = "cache"\n')
    cfg = load_config(Path("..") / "configs" / "exp.toml")  # the file itself from the current folder
    assert [b.name for b in cfg.benchmarks] == ["toy", "toy2", "toy3"]
    assert cfg.benchmarks[0].bundle_path(1) == cfg_dir / "b" / "toy-seed1.npz"
    assert cfg.benchmarks[1].bundle_path(0) == cwd / "rel" / "toy2.npz"
    assert cfg.benchmarks[2].bundle_path(0) == tmp_path / "home" / "toy3.npz"
    assert cfg.cache_dir == cfg_dir / "cache"

    path.write_text(path.read_text().replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    msg = _error(load_config, path)
    assert "bundle file not found (benchmark 'toy', seed(s) [2])" in msg
    assert f"'b/toy-seed{{seed}}.npz', resolved against the config file's folder {cfg_dir}: " \
           f"{cfg_dir / 'b' / 'toy-seed2.npz'}" in msg, msg
    # the same path resolves against the current folder when the data comes from no file
    loc = resolve_path("b/x.npz", config_dir=None)
    assert Path(loc.path) == cwd / "b" / "x.npz" and "the current directory" in loc.explain()


def test_select_names_unknown_benchmarks_and_leaves_out_configs_without_any():
    t1 = load_config("paper-table1", check_paths=False)
    k = load_config("ablation-k", check_paths=False)
    assert t1.select(list(reversed(PAPER))) is t1  # all of them: the experiment itself
    both = t1.select(["civilcomments", "waterbirds"])
    assert [b.name for b in both.benchmarks] == ["waterbirds", "civilcomments"]  # the config's order
    assert both.name == "paper-table1[waterbirds,civilcomments]" and both.absent == ("celeba", "multinli")
    msg = _error(t1.select, ["waterbird"])
    assert "['waterbird']" in msg and str(list(PAPER)) in msg

    kept, skipped = select_benchmarks([t1, k], ["multinli"])
    assert [c.name for c in kept] == ["paper-table1[multinli]"] and skipped == [k]
    kept, skipped = select_benchmarks([t1, k], ["celeba"])
    assert [c.name for c in kept] == ["paper-table1[celeba]", "ablation-k[celeba]"] and skipped == []
    msg = _error(select_benchmarks, [t1, k], ["imagenet", "celeba"])
    assert "['imagenet']" in msg and "ablation-k: waterbirds, celeba" in msg
    assert select_benchmarks([t1], None) == ([t1], [])


def _two_benchmark_config(folder: Path, bundles: dict[str, Path]) -> Path:
    path = folder / "exp.toml"
    path.write_text(config_text({"toy-a": bundles["toy-a"], "toy-b": folder / "missing" / "toy-b.npz"},
                                name="exp", methods=("erm", "random"), epochs=2))
    return path


def test_run_experiments_on_some_benchmarks(places, bundles):
    cfg_dir, cwd = places
    cfg = load_config(_two_benchmark_config(cfg_dir, bundles), check_paths=False)
    msg = _error(run_experiments, [cfg], cwd / "out", benchmarks=["toy-b"], progress=False)
    assert "toy-b.npz" in msg and "bundle file not found" in msg
    summary = run_experiments([cfg], cwd / "out", benchmarks=["toy-a"], progress=False)
    assert summary.failed == 0 and summary.new == 2 * 2
    assert {r["benchmark"] for r in summary.records} == {"toy-a"}
    store = ResultStore(cwd / "out" / "results.sqlite", readonly=True)
    (exp,) = store.experiments()
    assert exp["name"] == "exp[toy-a]" and exp["config"]["absent_benchmarks"] == ["toy-b"]
    assert len(exp["runs"]) == 4
    # the ERM runs' test accuracy, recomputed from the bundle's head
    b = load_bundle(bundles["toy-a"])
    test = b.split == "test"
    acc = np.mean((b.features[test] @ b.head_weight.T + b.head_bias).argmax(1) == b.labels[test])
    erm = [r for r in summary.records if r["method"] == "erm"]
    assert len(erm) == 2 and all(r["evaluation"]["test"]["accuracy"] == pytest.approx(acc) for r in erm)


def test_cli_benchmarks_and_bundles(places, bundles, capsys, monkeypatch):
    cfg_dir, cwd = places
    path = _two_benchmark_config(cfg_dir, bundles)
    assert main(["run", str(path), "--benchmarks", "toy-a", "--dry-run"]) == 0
    assert "exp[toy-a]: 4 runs = 1 benchmarks x 2 seeds x 2 settings; report: table1; absent: toy-b" in \
        capsys.readouterr().out
    assert main(["run", str(path), "--benchmarks", "toy-a,toy-b", "--quiet", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert "benchmark 'toy-b'" in err and str(cfg_dir / "missing" / "toy-b.npz") in err
    assert main(["run", str(path), "--benchmarks", "toy-a", "--quiet", "--out", "out"]) == 0
    assert main(["report", "out", "--out", "report"]) == 0
    md = (cwd / "report" / "report.md").read_text()
    assert "exp[toy-a]: Benchmarks absent from this experiment: toy-b (it was run on toy-a only)." in md

    # --bundles gives ${GRADTUNE_BUNDLES}, relative to the current folder; a config with none
    # of the asked benchmarks is left out
    _copy(bundles["toy-b"], cwd / "bs" / "toy-b.npz")
    monkeypatch.delenv("GRADTUNE_BUNDLES", raising=False)
    var_cfg = cfg_dir / "var.toml"
    var_cfg.write_text(config_text({"toy-b": Path("${GRADTUNE_BUNDLES}/toy-b.npz")}, name="var", methods=("erm",)))
    assert main(["run", str(var_cfg), str(path), "--benchmarks", "toy-b", "--bundles", "bs", "--dry-run"]) == 2
    assert "benchmark 'toy-b'" in capsys.readouterr().err  # exp's toy-b file is still missing
    assert main(["run", str(var_cfg), "ablation-k", "--benchmarks", "toy-b", "--bundles", "bs", "--quiet",
                 "--out", "out2"]) == 0
    captured = capsys.readouterr()
    assert "ablation-k: left out" in captured.err and "2 runs computed" in captured.out
