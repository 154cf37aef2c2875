"""Names and optional dependencies are checked while the arguments are parsed,
before anything heavy is imported or any work starts (gradtune._cli_types)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradtune import _cli_types
from gradtune._names import METHOD_NAMES, OFFLINE_BENCHMARK_NAMES
from gradtune.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")

# a fresh interpreter: which modules did the refused command load, and how long did it take?
PROBE = """
import json, sys, time
from gradtune.cli import main
t = time.perf_counter()
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = None
heavy = sorted(m for m in ("torch", "sklearn", "pandas", "matplotlib", "transformers") if m in sys.modules)
print(json.dumps({"code": code, "seconds": time.perf_counter() - t, "heavy": heavy}))
"""


def _probe(argv: list[str], tmp_path: Path, env_extra: dict | None = None) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.parametrize("argv, needle", [
    (["tune", "--embeddings", "example", "--out", "o", "--method", "gradtnue"],
     "argument --method: unknown method 'gradtnue'; did you mean 'gradtune'?"),
    (["demo", "--benchmarks", "adlt"], "argument --benchmarks: unknown benchmark 'adlt'; did you mean 'adult'?"),
    (["demo", "--benchmarks", "adult", "--methods", "erm", "dfrr"], "unknown method 'dfrr'; did you mean 'dfr'?"),
])
def test_a_wrong_name_or_file_fails_at_parse_time_without_heavy_imports(tmp_path, argv, needle) -> None:
    res, err = _probe(argv, tmp_path)
    assert res["code"] == 2 and needle in err, err
    assert res["heavy"] == [], res  # nothing was loaded before the refusal
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1
    assert list(tmp_path.iterdir()) == []  # no output folder, no partial file


def test_missing_matplotlib_fails_demo_and_report_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec

    def no_matplotlib(name: str, *a, **k):
        return None if name == "matplotlib" else real(name, *a, **k)

    monkeypatch.setattr(_cli_types.importlib.util, "find_spec", no_matplotlib)
    for argv in (["demo", "--benchmarks", "adult", "--out", str(tmp_path / "d")],
                 ["demo"],  # the default --out is checked too
                 ["report", str(tmp_path), "--out", str(tmp_path / "r")]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "argument --out: the report's figures need matplotlib" in err, err
        assert "pip install 'gradtune[report]'" in err
    assert list(tmp_path.iterdir()) == []


def test_types_accept_every_listed_name_and_refuse_the_rest() -> None:
    for name in METHOD_NAMES:
        assert _cli_types.method_arg(name) == name
    for name in OFFLINE_BENCHMARK_NAMES:
        assert _cli_types.offline_benchmark_arg(name) == name
    assert _cli_types.demo_method_arg("all") == "all"
    with pytest.raises(argparse.ArgumentTypeError, match="available: afr, dfr"):
        _cli_types.method_arg("all")
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown benchmark 'zzz'; available: adult"):
        _cli_types.offline_benchmark_arg("zzz")  # nothing close: no suggestion


def test_a_plugin_registered_in_the_process_is_accepted() -> None:
    from gradtune.methods.base import METHODS

    name = "plugin-for-parse-test"
    with pytest.raises(argparse.ArgumentTypeError):
        _cli_types.method_arg(name)
    METHODS[name] = object
    try:
        assert _cli_types.method_arg(name) == name
    finally:
        del METHODS[name]


def test_refusal_is_fast(tmp_path) -> None:
    # the refusal itself (after the interpreter started) takes well under the ~3 s that
    # importing torch and scikit-learn took before the check moved to parse time
    t = time.perf_counter()
    res, _ = _probe(["tune", "--embeddings", "example", "--out", "o", "--method", "nope"], tmp_path)
    assert res["code"] == 2 and res["seconds"] < 1.0, res
    assert time.perf_counter() - t < 30


def test_parse_time_refusal_with_json_prints_one_object(capsys):
    from gradtune.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["tune", "--embeddings", "example", "--out", "unused", "--method", "nope", "--json"])
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    obj = json.loads(out)
    assert obj["exit_code"] == 2 and "unknown method 'nope'" in obj["error"]
    assert "unknown method 'nope'" in err
