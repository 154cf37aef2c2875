"""The SQLite results store: atomic rows, resume after a kill, force, run ids, MLflow mirror."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from gradtune.cli import main
from gradtune.experiments.config import load_config
from gradtune.experiments.runner import run_experiments
from gradtune.results.store import ResultStore, make_run_id
from tests.experiments._toy import config_text, write_bundles

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_bundles(tmp_path_factory.mktemp("bundles"))


def _rows(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs")]
    finally:
        conn.close()


def _record(run_id: str, **kw) -> dict:
    rec = {"run_id": run_id, "benchmark": "b", "seed": 0, "method": "erm", "label": "ERM", "params": {},
           "bundle_fingerprint": "f" * 16, "group_labels": "none", "fit_seconds": 0.1,
           "evaluation": {"test": {"accuracy": 0.9, "worst_group_accuracy": 0.5, "group_accuracy": [0.5, 1.0]},
                          "selection": {"accuracy": 0.8}}, "diagnostics": {"size": 3}}
    rec.update(kw)
    return rec


def test_store_roundtrip_and_atomic_transactions(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.mark_running([_record("a")])
    assert store.counts() == {"running": 1, "done": 0, "failed": 0}
    store.save_record(_record("a"))
    store.save_record(_record("b", status="failed", error="boom", evaluation={}))
    assert store.counts() == {"running": 0, "done": 1, "failed": 1}
    (rec,) = store.records()
    assert rec["evaluation"]["test"]["group_accuracy"] == [0.5, 1.0] and rec["test_accuracy"] == 0.9
    assert rec["diagnostics"] == {"size": 3} and rec["attempts"] == 1
    # a done run is not reset by a plain dispatch, only when forced
    store.mark_running([_record("a")])
    assert store.statuses(["a"]) == {"a": "done"}
    store.mark_running([{**_record("a"), "force": True}])
    assert store.statuses(["a"]) == {"a": "running"}
    # a transaction that fails half-way leaves nothing behind
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO runs (run_id, status, benchmark, seed, method, label, params, bundle_fingerprint)"
                      " VALUES ('c', 'done', 'b', 0, 'erm', 'ERM', '{}', 'f')")
        raise RuntimeError("crash mid-write")
    assert "c" not in store.statuses()
    with pytest.raises(FileNotFoundError):
        ResultStore(tmp_path / "none.sqlite", readonly=True)


def test_run_id_covers_what_determines_a_run():
    base = make_run_id("wb", 0, "gradtune", {"top_k": 400, "finetune": {"epochs": 500}}, "abc")
    assert base == make_run_id("wb", 0, "gradtune", {"finetune": {"epochs": 500}, "top_k": 400}, "abc")
    for other in (make_run_id("wb", 1, "gradtune", {"top_k": 400, "finetune": {"epochs": 500}}, "abc"),
                  make_run_id("wb", 0, "gradtune", {"top_k": 400, "finetune": {"epochs": 50}}, "abc"),
                  make_run_id("wb", 0, "gradtune", {"top_k": 400, "finetune": {"epochs": 500}}, "abd"),
                  make_run_id("cb", 0, "gradtune", {"top_k": 400, "finetune": {"epochs": 500}}, "abc")):
        assert other != base


def test_resume_skips_done_runs_and_force_recomputes(tmp_path, bundles):
    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config_text(bundles, seeds=(0,)))
    cfg = load_config(cfg_path)
    first = run_experiments([cfg], tmp_path / "out")
    assert (first.new, first.reused, first.failed) == (6, 0, 0)
    before = {r["run_id"]: r["finished_at"] for r in _rows(tmp_path / "out" / "results.sqlite")}
    again = run_experiments([cfg], tmp_path / "out")
    assert (again.new, again.reused) == (0, 6)
    assert [r["evaluation"] for r in again.records] == [r["evaluation"] for r in first.records]
    forced = run_experiments([cfg], tmp_path / "out", force=True)
    assert (forced.new, forced.reused) == (6, 0)
    rows = _rows(tmp_path / "out" / "results.sqlite")
    assert len(rows) == 6 and all(r["finished_at"] != before[r["run_id"]] for r in rows)
    store = ResultStore(tmp_path / "out" / "results.sqlite", readonly=True)
    (exp,) = store.experiments()
    assert exp["name"] == "toy" and len(exp["runs"]) == 6 and exp["config"]["n_planned"] == 6
    rec = store.records(method="gradtune")[0]
    assert rec["code_version"] and rec["data_hash"] and rec["bundle_fingerprint"]
    assert rec["selection_metrics"]["accuracy"] is not None and rec["test_metrics"]["worst_group_accuracy"] is not None
    assert rec["params"]["finetune"]["epochs"] == 5 and rec["group_labels"] == "none"
    assert len(store.norms()) == 2  # held-out gradient norms per bundle (Fig. 2/4)


def test_sigkill_mid_grid_then_rerun_completes_without_duplicates(tmp_path, bundles):
    cfg_path = tmp_path / "grid.toml"
    # enough fine-tuning steps that the grid takes a few seconds, so the kill lands mid-grid
    cfg_path.write_text(config_text(bundles, seeds=(0, 1), methods=("erm", "random", "gradtune"), epochs=800))
    n_runs = 2 * 2 * 3
    out = tmp_path / "out"
    db = out / "results.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "gradtune.cli", "run", str(cfg_path), "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = sum(r["status"] == "done" for r in _rows(db)) if db.exists() else 0
            except sqlite3.OperationalError:
                done = 0
            if done >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the grid finished before it could be killed: {proc.stderr.read()!r}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    rows = _rows(db)
    done_before = {r["run_id"]: r["finished_at"] for r in rows if r["status"] == "done"}
    assert 3 <= len(done_before) < n_runs
    for r in rows:  # no half-written row: a done row has all its metrics, an unfinished one none
        if r["status"] == "done":
            assert json.loads(r["test_metrics"])["accuracy"] == r["test_accuracy"]
        else:
            assert r["status"] == "running" and r["test_metrics"] is None

    assert main(["run", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    rows = _rows(db)
    assert len(rows) == n_runs and len({r["run_id"] for r in rows}) == n_runs
    assert all(r["status"] == "done" for r in rows)
    for r in rows:  # runs finished before the kill were kept, not recomputed
        if r["run_id"] in done_before:
            assert r["finished_at"] == done_before[r["run_id"]]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM experiment_runs").fetchone()[0] == n_runs
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_failed_runs_are_stored_and_retried(tmp_path, bundles, monkeypatch):
    from gradtune.methods.gradtune import GradTuneMethod

    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config_text(bundles, seeds=(0,), methods=("erm", "gradtune")))
    cfg = load_config(cfg_path)

    def boom(self, bundle, *, seed):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(GradTuneMethod, "fit", boom)
    res = run_experiments([cfg], tmp_path / "out")
    assert (res.new, res.failed) == (2, 2)
    store = ResultStore(tmp_path / "out" / "results.sqlite", readonly=True)
    failed = store.records(status="failed")
    assert len(failed) == 2 and "injected failure" in failed[0]["error"]
    monkeypatch.undo()
    res = run_experiments([cfg], tmp_path / "out")
    assert (res.new, res.reused, res.failed) == (2, 2, 0)
    assert store.counts() == {"running": 0, "done": 4, "failed": 0}


def test_mlflow_is_optional(tmp_path, bundles, monkeypatch, capsys):
    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config_text(bundles, seeds=(0,), methods=("erm",)))
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed
    assert main(["run", str(cfg_path), "--out", str(tmp_path / "out"), "--mlflow"]) == 2
    assert "mlflow package is not installed" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.sqlite").exists()

    logged: list[dict] = []
    fake = types.SimpleNamespace(
        set_tracking_uri=lambda uri: None, set_experiment=lambda name: logged.append({"experiment": name}),
        start_run=lambda run_name: _Ctx(logged, run_name), log_params=lambda p: logged[-1].update(params=p),
        set_tags=lambda t: logged[-1].update(tags=t), log_metrics=lambda m: logged[-1].update(metrics=m))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    assert main(["run", str(cfg_path), "--out", str(tmp_path / "out"), "--mlflow", "--quiet"]) == 0
    runs = [e for e in logged if "run_name" in e]
    assert logged[0] == {"experiment": "gradtune:toy"} and len(runs) == 2
    assert runs[0]["metrics"]["test_worst_group_accuracy"] <= runs[0]["metrics"]["test_accuracy"]
    assert runs[0]["tags"]["gradtune.run_id"] and runs[0]["params"]["method"] == "erm"


class _Ctx:
    def __init__(self, log: list, name: str) -> None:
        log.append({"run_name": name})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
