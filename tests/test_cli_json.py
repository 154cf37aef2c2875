"""``--json`` on tune, run and demo: stdout is one JSON object with the results, the rest is on stderr."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradtune import cli
from gradtune._cli_flags import jsonable

from .experiments._toy import config_text, toy_bundle
from .workflows.test_demo import toy_build


def _json_stdout(capsys) -> tuple[dict, str]:
    cap = capsys.readouterr()
    return json.loads(cap.out), cap.err  # the whole of stdout must parse


def test_jsonable_makes_strict_json() -> None:
    value = {"p": Path("a/b"), "nan": float("nan"), "arr": np.arange(3), "f": np.float32(0.5), 1: (True, None)}
    out = jsonable(value)
    assert out == {"p": "a/b", "nan": None, "arr": [0, 1, 2], "f": 0.5, "1": [True, None]}
    json.dumps(out, allow_nan=False)
    assert math.isnan(value["nan"])  # the input is left alone


def test_tune_json_is_metrics_json_plus_paths(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["tune", "--embeddings", "example", "--out", str(out), "--epochs", "5", "--json"]
    assert cli.main(argv) == 0
    res, err = _json_stdout(capsys)
    assert res["metrics"] == json.loads((out / "metrics.json").read_text())
    assert res["reused"] is False
    assert res["paths"] == {"out": str(out), "metrics": str(out / "metrics.json"), "head": str(out / "head.npz")}
    assert "worst-group accuracy" in err  # the tables moved to stderr
    assert cli.main(argv) == 0
    again, err = _json_stdout(capsys)
    assert again["reused"] is True and again["metrics"] == res["metrics"]
    assert "already holds this run" in err


def test_run_json_counts_and_store(tmp_path, capsys) -> None:
    toy_bundle(0).save(tmp_path / "b.npz")
    cfg = tmp_path / "c.toml"
    cfg.write_text(config_text({"toy": tmp_path / "b.npz"}, seeds=(0, 1), methods=("erm", "gradtune"), epochs=2))
    argv = ["run", str(cfg), "--out", str(tmp_path / "res"), "--json"]
    assert cli.main(argv) == 0
    res, err = _json_stdout(capsys)
    assert (res["new"], res["reused"], res["failed"]) == (4, 0, 0)  # 2 seeds x 2 methods
    assert res["store"] == str(tmp_path / "res" / "results.sqlite") and Path(res["store"]).exists()
    assert res["report"] is None and res["failed_runs"] == []
    assert "4 runs computed" in err
    assert cli.main(argv) == 0
    res, _ = _json_stdout(capsys)
    assert (res["new"], res["reused"], res["failed"]) == (0, 4, 0)


def test_run_list_json(capsys) -> None:
    from gradtune.experiments.config import packaged_configs

    assert cli.main(["run", "--list", "--json"]) == 0
    res, _ = _json_stdout(capsys)
    assert res["configs"] == {k: str(v) for k, v in packaged_configs().items()}


@pytest.mark.slow
def test_demo_json_table_records_and_paths(tmp_path, capsys, monkeypatch) -> None:
    import gradtune.workflows.demo as demo

    real = demo.run_demo
    monkeypatch.setattr(demo, "run_demo", lambda cfg: real(cfg, build=toy_build))  # no download
    argv = ["demo", "--benchmarks", "adult", "--seeds", "0", "--methods", "erm", "random",
            "--out", str(tmp_path / "rep"), "--cache-dir", str(tmp_path / "cache"), "--json"]
    assert cli.main(argv) == 0
    res, err = _json_stdout(capsys)
    assert res["counts"] == {"new": 2, "reused": 0}
    assert [row["Method"] for row in res["table"]] == ["erm", "random"]
    csv = pd.read_csv(res["paths"]["csv"])
    assert len(csv) == 2 and set(csv["method"]) == {"erm", "random"}
    for key in ("markdown", "html", "csv"):
        assert Path(res["paths"][key]).exists()
    assert "Test accuracy" in err
    assert cli.main(argv) == 0
    res, _ = _json_stdout(capsys)
    assert res["counts"] == {"new": 0, "reused": 2}
