"""Crash safety of the results store: SIGKILLed grids, concurrent grids, failed writes.

A grid is killed with SIGKILL at random points (drawn from a seeded generator) several
times and then rerun; the final store must hold exactly the rows of an uninterrupted
run, none lost, duplicated, half-written or still ``running``. Grids run in forked
processes (the test process has imported everything already, so a child starts at once).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gradtune.experiments.config import load_config
from gradtune.experiments.runner import run_experiments
from gradtune.results.store import ResultStore

from ._toy import config_text, write_bundles

KEYS = ("status", "params", "test_metrics", "selection_metrics", "group_labels", "bundle_fingerprint", "diagnostics")
FORK = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
pytestmark = pytest.mark.skipif(FORK is None, reason="needs the fork start method (POSIX)")


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    bundles = write_bundles(root / "bundles")
    path = root / "grid.toml"
    path.write_text(config_text(bundles, seeds=(0, 1, 2), methods=("erm", "random", "gradtune"), epochs=5000))
    return path


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("reference")
    summary = run_experiments([load_config(config_path)], out, workers=1, progress=False)
    assert summary.failed == 0 and summary.new == 18
    return _rows(out / "results.sqlite")


def _rows(path: Path) -> dict[str, dict]:
    store = ResultStore(path, readonly=True)
    return {r["run_id"]: {k: r[k] for k in KEYS} for r in store.records(status=None)}


def _grid(config_path: Path, out: Path, workers: int) -> None:
    summary = run_experiments([load_config(config_path)], out, workers=workers, start_method="fork",
                              progress=False)
    os._exit(0 if summary.failed == 0 else 3)


def _start(config_path: Path, out: Path, workers: int = 1):
    proc = FORK.Process(target=_grid, args=(config_path, out, workers))
    proc.start()
    return proc


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _check_integrity(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone()
        assert n == distinct
    finally:
        conn.close()


def _done(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the tables do not exist yet
        return 0


def test_sigkilled_grid_resumes_to_the_uninterrupted_result(config_path, reference, tmp_path):
    rng = np.random.default_rng(15)
    out, store = tmp_path / "killed", tmp_path / "killed" / "results.sqlite"
    kills = 0
    for extra in rng.uniform(0.0, 0.08, size=5):
        start = _done(store)
        proc = _start(config_path, out)
        while proc.is_alive() and _done(store) == start:  # let at least one more run finish ...
            time.sleep(0.02)
        time.sleep(float(extra))  # ... then kill at a random point of the next one or its write
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.join(10)
        assert proc.exitcode in (0, -signal.SIGKILL), f"the grid failed on its own (exit {proc.exitcode})"
        _check_integrity(store)
        rows = _rows(store)
        assert 0 < sum(r["status"] == "done" for r in rows.values())
        for rid, row in rows.items():  # what is done is already final
            if row["status"] == "done":
                assert row == reference[rid]
    assert kills == 5 and _done(store) < len(reference)
    summary = run_experiments([load_config(config_path)], out, workers=1, progress=False)
    assert summary.failed == 0 and summary.new + summary.reused == 18
    _check_integrity(store)
    assert _rows(store) == reference


def test_sigkilled_pool_leaves_no_orphans_and_resumes(config_path, reference, tmp_path):
    out = tmp_path / "pool"
    proc = _start(config_path, out, workers=2)
    deadline = time.monotonic() + 20
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.1)
        workers = _children(proc.pid)
    assert len(workers) >= 2, "the pool did not start"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    orphans = [w for w in workers if _alive(w)]
    for w in orphans:  # never leave them behind, even when the check fails
        os.kill(w, signal.SIGKILL)
    assert not orphans, "pool workers outlived their killed parent"
    run_experiments([load_config(config_path)], out, workers=1, progress=False)
    _check_integrity(out / "results.sqlite")
    assert _rows(out / "results.sqlite") == reference


def test_two_concurrent_grids_compute_each_run_once(config_path, reference, tmp_path):
    out = tmp_path / "shared"
    procs = [_start(config_path, out), _start(config_path, out)]
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    _check_integrity(out / "results.sqlite")
    assert _rows(out / "results.sqlite") == reference
    log = ResultStore(out / "results.sqlite", readonly=True).run_log()
    assert len(log) == 2
    assert sum(e["new"] for e in log) == 18  # none computed twice
    assert all(e["new"] + e["reused"] == 18 for e in log)


def test_a_write_that_fails_midway_leaves_the_store_as_it_was(config_path, reference, tmp_path):
    out = tmp_path / "store"
    run_experiments([load_config(config_path)], out, workers=1, progress=False)
    store = ResultStore(out / "results.sqlite")

    def dump() -> list[str]:
        conn = sqlite3.connect(out / "results.sqlite")
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    before = dump()
    planned = [{"run_id": "a", "benchmark": "b", "seed": 0, "method": "m", "label": "l"},
               {"run_id": "b"}]  # the second is malformed: the write fails after the first rows
    with pytest.raises(KeyError):
        store.register_experiment("toy", {"name": "toy"}, planned)
    record = next(iter(store.records()))
    with pytest.raises(ValueError):
        store.save_record({**record, "seed": "not a number"})
    assert dump() == before
    assert _rows(out / "results.sqlite") == reference


# ------------------------------------------------------- claims whose holder is gone

SRC = Path(__import__("gradtune").__file__).resolve().parents[1]
RERUN = ("import sys; from gradtune.experiments.config import load_config; "
         "from gradtune.experiments.runner import run_experiments; "
         "s = run_experiments([load_config(sys.argv[1])], sys.argv[2], workers=1, progress=False); "
         "sys.exit(0 if s.failed == 0 else 3)")


def _claims(path: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT run_id, host, pid, owner FROM claims").fetchall()
    finally:
        conn.close()


def _kill_after_first_run(config_path: Path, out: Path) -> None:
    proc = _start(config_path, out)
    deadline = time.monotonic() + 60
    while proc.is_alive() and _done(out / "results.sqlite") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL, "the grid finished before it could be killed"


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-u", "hostname", "probe-host"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="`unshare -u` (a new UTS namespace) is refused here: "
                    "it needs root or user namespaces")
def test_killed_grid_rerun_under_another_hostname_finishes(config_path, reference, tmp_path):
    """A restarted container on the same volume: the killed grid's claims name a host that
    never comes back; the rerun takes them over instead of waiting forever."""
    out = tmp_path / "moved"
    _kill_after_first_run(config_path, out)
    left = _claims(out / "results.sqlite")
    assert left and all(host == socket.gethostname() for _, host, _, _ in left)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    script = 'hostname gradtune-restarted && exec "$0" -c "$1" "$2" "$3"'
    res = subprocess.run(["unshare", "-u", "sh", "-c", script, sys.executable, RERUN, str(config_path), str(out)],
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_integrity(out / "results.sqlite")
    assert _rows(out / "results.sqlite") == reference
    hosts = {r["host"] for r in ResultStore(out / "results.sqlite", readonly=True).records()}
    assert "gradtune-restarted" in hosts  # the rerun really ran under the other name
    assert _claims(out / "results.sqlite") == []


def test_claim_of_a_dead_holder_whose_pid_was_reused_is_taken_over(config_path, reference, tmp_path):
    """Claims of this host naming a live process id (ours: the id was reused) but whose lease
    is free, and a token-less claim of another host (an older gradtune), are taken over."""
    out = tmp_path / "reused"
    _kill_after_first_run(config_path, out)
    store = out / "results.sqlite"
    conn = sqlite3.connect(store)
    try:
        with conn:
            conn.execute("UPDATE claims SET pid=?", (os.getpid(),))
            first = conn.execute("SELECT run_id FROM claims ORDER BY run_id").fetchone()[0]
            conn.execute("UPDATE claims SET host='elsewhere', owner=NULL WHERE run_id=?", (first,))
    finally:
        conn.close()
    proc = FORK.Process(target=_grid, args=(config_path, out, 1))
    proc.start()
    proc.join(240)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        pytest.fail("the rerun waited on claims of a dead holder")
    assert proc.exitcode == 0
    assert _rows(store) == reference


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A test session started in the
    background of a non-interactive shell inherits SIGINT as ignored, and an ignored SIGINT
    stays ignored across exec, so the Ctrl-C below would never reach the run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_a_pool_reports_once_without_worker_tracebacks(config_path, tmp_path):
    """Ctrl-C reaches the whole process group; only the parent reports it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gradtune.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", "run", str(config_path), "--out", str(out),
                             "--workers", "2", "--quiet"], env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_children(proc.pid)) < 2:
            time.sleep(0.1)
        while time.monotonic() < deadline and _done(out / "results.sqlite") == 0:
            time.sleep(0.05)  # the workers are inside their tasks now
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if line.startswith("gradtune run:")] == [
        "gradtune run: interrupted; completed results are kept on disk"]


def test_lease_files_of_dead_holders_are_swept_and_live_ones_kept(tmp_path):
    import fcntl

    from gradtune.experiments.claims import holder_alive, owner_token

    store = ResultStore(tmp_path / "s.sqlite")
    folder = tmp_path / "s.sqlite.owners"
    folder.mkdir()
    stale, live = folder / ("a" * 32), folder / ("b" * 32)
    stale.touch()
    live.touch()
    fd = os.open(live, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held as a live holder holds it
        token = owner_token(store)
        assert not stale.exists() and live.exists() and (folder / token).exists()
        assert holder_alive(store, "any", 1, "b" * 32) and holder_alive(store, "any", 1, token)
        assert not holder_alive(store, "any", 1, "c" * 32)  # no lease file: gone
        assert not holder_alive(store, "any", 1, "../../etc/passwd")  # not a token: never a path
    finally:
        os.close(fd)
    assert not holder_alive(store, "any", 1, "b" * 32) and not live.exists()
