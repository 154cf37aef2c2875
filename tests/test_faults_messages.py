"""Fault injection, third round: messages that name what is concerned, and no hang on a busy store.

Bad input ends as one line naming the flag, file, store, table or run (exit 2); a busy
store is told from a damaged one; ``--json`` answers failures with one JSON object; a
reader that closes stdout early ends the command quietly. Every command runs under a
deadline.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gradtune._errors import StoreBusyError
from gradtune.results.store import ResultStore

from . import test_faults
from .experiments._toy import toy_bundle
from .test_faults import (
    EXAMPLE,
    FAST,
    Case,
    _bundle,
    _config,
    _toy_store,
    assert_one_line_error,
    run_cli,
)

SRC = Path(test_faults.cli.__file__).resolve().parents[1]


def _write(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def _labels_2_63(tmp: Path) -> Path:
    labels = toy_bundle(0).labels.astype(np.uint64)
    labels[labels == 1] = 2**63
    return _bundle(tmp, labels=labels)


MESSAGES = [
    Case("run config nested 10^5 deep", "run", lambda t: [
        "run", _write(t, "deep.toml", b"a = " + b"[" * 100_000 + b"]" * 100_000), "--dry-run"], 2,
        "deep.toml: nested too deeply"),
    Case("run config not UTF-8", "run", lambda t: [
        "run", _write(t, "latin1.toml", '[experiment]\nname = "caf\u00e9"\n'.encode("latin-1")), "--dry-run"], 2,
        "latin1.toml' is not UTF-8 text"),
    Case("run config FIFO", "run", lambda t: ["run", _fifo(t, "c.toml"), "--dry-run"], 2,
         "c.toml"),
    Case("tune split seed -1", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o",
                                                  "--split-seed", "-1"], 2, "--split-seed must be"),
    Case("tune out empty", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", "", *FAST], 2,
         "--out is empty"),
    Case("run out empty", "run", lambda t: ["run", _config(t, ""), "--out", "", "--quiet"], 2, "--out is empty"),
    Case("embed out is the checkpoint", "embed", lambda t: ["embed", "--checkpoint", _write(t, "c.pt", b"x"),
                                                            "--out", t / "c.pt", "--force"], 2,
         "would overwrite the input --checkpoint"),
    Case("bundle labels 2^63", "tune", lambda t: ["tune", "--embeddings", _labels_2_63(t), "--out", t / "o",
                                                  "--fit-erm-head"], 2, "go up to 9223372036854775808"),
]


def _fifo(tmp: Path, name: str) -> Path:
    os.mkfifo(tmp / name)
    return tmp / name


@pytest.mark.parametrize("case", MESSAGES, ids=[c.name for c in MESSAGES])
def test_fault_messages(case: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --out must not write into the current folder either
    test_faults.test_fault(case, tmp_path, capsys)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "results.sqlite").exists()


# ------------------------------------------------------------------ stores

def test_a_store_locked_by_another_connection_is_busy_not_damaged(tmp_path):
    store = _toy_store(tmp_path)
    holder = sqlite3.connect(store, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # held until this connection closes
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE meta SET value=value WHERE key='schema_version'")
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError, match="is in use by another process, which held its lock for 1 s"):
            ResultStore(store, timeout=1.0)
        assert time.monotonic() - t0 < 20
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ResultStore(store)  # free again: opens


def _damage_row(store: Path, value: str) -> str:
    conn = sqlite3.connect(store)
    try:
        with conn:
            rid = conn.execute("SELECT run_id FROM runs ORDER BY run_id LIMIT 1").fetchone()[0]
            conn.execute("UPDATE runs SET diagnostics=? WHERE run_id=?", (value, rid))
    finally:
        conn.close()
    return rid


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, '{"not json'], ids=["nested", "truncated"])
def test_an_unparsable_row_is_named_and_skipped_by_report_and_recomputed_by_run(tmp_path, capsys, value):
    store = _toy_store(tmp_path)
    capsys.readouterr()
    rid = _damage_row(store, value)
    code, _, err = run_cli(["report", store, "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "cannot be parsed" in line]
    assert len(warned) == 1 and warned[0].startswith("gradtune report: warning:"), err
    assert f"{store}: table runs, run {rid}: column diagnostics" in warned[0]
    assert "Traceback" not in err
    code, out, err = run_cli(["run", tmp_path / "toy.toml", "--out", tmp_path / "res"], capsys)
    assert code == 0, err
    assert "1 runs computed, 1 already stored, 0 failed" in out + err
    rows = {r["run_id"]: r for r in ResultStore(store, readonly=True).records()}
    assert rid in rows and isinstance(rows[rid]["diagnostics"], dict)  # rewritten whole


# ------------------------------------------------------------------- output

def test_json_failure_prints_one_json_object(tmp_path, capsys):
    code, out, err = run_cli(["tune", "--embeddings", tmp_path / "none.npz", "--out", tmp_path / "o", "--json"],
                             capsys)
    assert code == 2
    assert json.loads(out) == {"error": f"embedding bundle {str(tmp_path / 'none.npz')!r} does not exist",
                               "exit_code": 2}
    assert_one_line_error(err, "tune", "does not exist")


def test_dry_run_into_a_closed_pipe_ends_quietly(tmp_path):
    cfg = _config(tmp_path, "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gradtune.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", "run", str(cfg), "--dry-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader leaves before the first line (`| head -0`)
    try:
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 141, err
    assert err == "", err


# ------------------------------------------------------------------- embed

def _embed_other_dataset(tmp: Path, monkeypatch, d: int, classes: int) -> list:
    import types

    from gradtune.data.base import GroupedDataset
    from gradtune.models.classifier import build_mlp_classifier
    from gradtune.training.config import TrainConfig
    from gradtune.training.trainer import seeded_scope, train

    def tabular(d: int, classes: int) -> GroupedDataset:
        n = 36
        x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
        labels, attrs = np.arange(n) % classes, (np.arange(n) // classes) % 2
        return GroupedDataset("toy", x, labels, attrs, 2 * labels + attrs, np.arange(n) % 3,
                              [f"c{i}" for i in range(classes)], ["s0", "s1"],
                              [f"g{i}" for i in range(2 * classes)])

    with seeded_scope(0):
        model = build_mlp_classifier(5, 3, hidden=(8,))
    train(model, tabular(5, 3), TrainConfig(epochs=1, batch_size=8, progress=False,
                                            checkpoint_dir=str(tmp / "ck")), meta={"dataset": "toy", "root": str(tmp)})
    reg = types.ModuleType("gradtune.data.registry")
    reg.load_dataset = lambda name, root: tabular(d, classes)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gradtune.data.registry", reg)
    return ["embed", "--checkpoint", tmp / "ck" / "last.pt", "--out", tmp / "e.npz", "--dataset", "other",
            "--root", tmp, "--no-progress"]


@pytest.mark.parametrize(("d", "classes", "needle"), [
    (5, 2, "predicts 3 classes but dataset 'other' has 2"),
    (7, 3, "was trained on 'toy' and does not fit the inputs of dataset 'other'"),
], ids=["other class count", "other input width"])
def test_embed_with_a_checkpoint_of_another_dataset_is_bad_input(tmp_path, capsys, monkeypatch, d, classes,
                                                                 needle):
    argv = _embed_other_dataset(tmp_path, monkeypatch, d, classes)
    capsys.readouterr()
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert_one_line_error(err, "embed", needle)
    assert not (tmp_path / "e.npz").exists()


# ------------------------------------------------------------------- API

def test_gradtune_fit_skips_batches_of_zero_rows():
    """The old code met torch's reshape error inside the feature hook (an internal error)."""
    import torch

    from gradtune.estimator import GradTune

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    x, y = torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 2
    with_empty = GradTune(10, 5, seed=3).fit(model(), [(x[:20], y[:20]), (x[:0], y[:0]), (x[20:], y[20:])])
    plain = GradTune(10, 5, seed=3).fit(model(), [(x[:20], y[:20]), (x[20:], y[20:])])
    torch.testing.assert_close(with_empty.weight_, plain.weight_)
    assert with_empty.report_.size == 10
    with pytest.raises(ValueError, match="no batches"):
        GradTune(10, 5).fit(model(), [(x[:0], y[:0])])
