"""The results store: one SQLite file holding every run of every experiment.

Each run is one row of ``runs``, keyed by its run id (a hash of benchmark, seed,
method, resolved hyperparameters and the bundle's content fingerprint, see
:func:`make_run_id`). A row carries the full metric dictionaries of
:func:`gradtune.metrics.accuracy.evaluate` for the ``selection`` and ``test`` rows
(JSON), the headline test metrics as plain columns (for SQL queries), per-group test
accuracies, timings, hyperparameters, seed, code version (``gradtune.__version__``
plus the git commit when the package sits in a git checkout), the bundle/data hash,
and a status:

``running``
    dispatched, not finished (a crash leaves this; a rerun recomputes it);
``done``
    finished; a rerun skips it unless forced;
``failed``
    raised an error (kept in ``error``); a rerun retries it.

Other tables: ``bundles`` (one row per bundle fingerprint: where it came from, split
sizes, provenance), ``heldout_norms`` (the ERM head's per-sample gradient norms on the
held-out rows, with labels and groups, for the paper's Fig. 2/4), ``experiments`` (the
resolved config of every experiment run into this store) and ``experiment_runs`` (which
planned runs belong to which experiment, with the experiment's display label).

Every write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction in WAL mode with a busy
timeout, so readers never see half a row, a killed process leaves no partial row, and
several processes can share the file on one machine. (Do not share it over NFS: with a
cluster launcher only the submitting process writes.)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gradtune._io import jsonable
from gradtune._validation import GradTuneInputError
from gradtune.results._code_version import code_version
from gradtune.results.store_integrity import check_store, connect_readonly

__all__ = ["ResultStore", "make_run_id", "code_version", "STATUSES", "SCHEMA_VERSION", "find_store"]

SCHEMA_VERSION = 1
STATUSES = ("running", "done", "failed")
STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    benchmark TEXT NOT NULL,
    seed INTEGER NOT NULL,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    params TEXT NOT NULL,
    group_labels TEXT,
    bundle_fingerprint TEXT NOT NULL,
    data_hash TEXT,
    code_version TEXT,
    git_commit TEXT,
    selection_metrics TEXT,
    test_metrics TEXT,
    test_accuracy REAL,
    test_worst_group_accuracy REAL,
    test_mean_group_accuracy REAL,
    test_weighted_accuracy REAL,
    test_worst_class_accuracy REAL,
    test_group_accuracy TEXT,
    group_names TEXT,
    class_names TEXT,
    diagnostics TEXT,
    load_seconds REAL,
    fit_seconds REAL,
    eval_seconds REAL,
    started_at TEXT,
    finished_at TEXT,
    host TEXT,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_benchmark ON runs (benchmark, method, seed);
CREATE TABLE IF NOT EXISTS bundles (
    fingerprint TEXT PRIMARY KEY,
    benchmark TEXT NOT NULL,
    seed INTEGER NOT NULL,
    source TEXT,
    data_hash TEXT,
    split_sizes TEXT,
    n_features INTEGER,
    n_classes INTEGER,
    group_names TEXT,
    meta TEXT,
    created_at TEXT
);
CREATE TABLE IF NOT EXISTS heldout_norms (
    benchmark TEXT NOT NULL,
    seed INTEGER NOT NULL,
    bundle_fingerprint TEXT NOT NULL,
    norms TEXT NOT NULL,
    labels TEXT,
    groups TEXT,
    group_names TEXT,
    created_at TEXT,
    PRIMARY KEY (benchmark, seed, bundle_fingerprint)
);
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    source TEXT,
    created_at TEXT,
    updated_at TEXT
);
CREATE TABLE IF NOT EXISTS experiment_runs (
    experiment TEXT NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    benchmark TEXT NOT NULL,
    seed INTEGER NOT NULL,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (experiment, run_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

_JSON_COLUMNS = ("params", "selection_metrics", "test_metrics", "test_group_accuracy", "group_names",
                 "class_names", "diagnostics")


class _BadRow(ValueError):
    """A stored row whose JSON cannot be parsed."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=jsonable, allow_nan=True)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def make_run_id(benchmark: str, seed: int, method: str, params: dict[str, Any], fingerprint: str) -> str:
    """The run id: a 16-hex-digit sha256 of what determines a run's result.

    Parameters
    ----------
    benchmark : str
    seed : int
    method : str
        Registry name.
    params : dict
        The method's resolved hyperparameters (``Method.params()``), not only overrides,
        so a changed default gives a new id.
    fingerprint : str
        The bundle's content hash (:func:`gradtune.experiments.runner.bundle_fingerprint`).
    """
    blob = json.dumps({"benchmark": benchmark, "seed": int(seed), "method": method, "params": params,
                       "bundle": fingerprint}, sort_keys=True, default=jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_store(path: str | os.PathLike) -> Path:
    """Resolve a results database from a file or a folder (``DIR/results.sqlite`` or
    ``DIR/runs/results.sqlite``); a clear error if there is none."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for cand in (p / STORE_NAME, p / "runs" / STORE_NAME):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"no {STORE_NAME} in {p} (nor in {p / 'runs'}); run `gradtune run CONFIG --out {p}` first")
    if p.exists():
        check_store(p, readonly=True, schema_version=SCHEMA_VERSION)  # not a regular file: raises, naming it
    raise FileNotFoundError(f"results store {p} does not exist")


class ResultStore:
    """A SQLite results store (see the module docstring for the tables).

    Parameters
    ----------
    path : str or PathLike
        The database file (created with its folder if missing).
    timeout : float, default=60.0
        Seconds a writer waits for another writer's lock (SQLite busy timeout).
    readonly : bool, default=False
        Open an existing store without creating or migrating anything; writes raise.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self.readonly = bool(readonly)
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"results store {self.path} does not exist")
        if self.path.exists():
            check_store(self.path, readonly=readonly, schema_version=SCHEMA_VERSION, timeout=self.timeout)
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise GradTuneInputError(f"{self.path} has schema version {row[0]}; this gradtune reads version "
                                             f"{SCHEMA_VERSION}")

    # ------------------------------------------------------------- connection
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.readonly and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            conn = connect_readonly(self.path, self.timeout)
        else:  # a writable file is opened read-write even for reading, so closing tidies up the WAL files
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            if not self.readonly:
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error)."""
        if self.readonly:
            raise GradTuneInputError(f"{self.path} was opened read-only")
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ runs
    def statuses(self, run_ids: Iterable[str] | None = None) -> dict[str, str]:
        """``run_id -> status`` for the given ids (all runs if None); absent ids are left out."""
        with self._connect() as conn:
            if run_ids is None:
                rows = conn.execute("SELECT run_id, status FROM runs").fetchall()
            else:
                ids = list(run_ids)
                rows = []
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    rows += conn.execute(f"SELECT run_id, status FROM runs WHERE run_id IN "
                                         f"({','.join('?' * len(chunk))})", chunk).fetchall()
        return {r["run_id"]: r["status"] for r in rows}

    def mark_running(self, runs: Sequence[dict[str, Any]], *, worker: str = "") -> None:
        """Record that these runs were dispatched (status ``running``), in one transaction.

        Each dict needs run_id, benchmark, seed, method, label, params, bundle_fingerprint.
        A ``done`` row is only reset when ``force`` is true in the dict.
        """
        now = _now()
        with self.transaction() as conn:
            for r in runs:
                conn.execute(
                    "INSERT INTO runs (run_id, status, benchmark, seed, method, label, params, bundle_fingerprint,"
                    " started_at, host, worker, attempts) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
                    "ON CONFLICT(run_id) DO UPDATE SET status='running', started_at=excluded.started_at, "
                    "host=excluded.host, worker=excluded.worker, attempts=runs.attempts+1, error=NULL "
                    "WHERE runs.status != 'done' OR ?",
                    (r["run_id"], r["benchmark"], int(r["seed"]), r["method"], r["label"], _dumps(r["params"]),
                     r["bundle_fingerprint"], now, socket.gethostname(), worker, bool(r.get("force", False))))

    def save_record(self, record: dict[str, Any]) -> None:
        """Write a finished (``done``) or ``failed`` run in one transaction, replacing its row."""
        status = record.get("status", "done")
        if status not in ("done", "failed"):
            raise GradTuneInputError(f"save_record: status must be 'done' or 'failed', got {status!r}")
        ev = record.get("evaluation") or {}
        test = ev.get("test") or {}
        timings = record.get("timings") or {}
        values = {
            "run_id": record["run_id"], "status": status, "benchmark": record["benchmark"],
            "seed": int(record["seed"]), "method": record["method"], "label": record.get("label") or record["method"],
            "params": _dumps(record.get("params", {})), "group_labels": record.get("group_labels"),
            "bundle_fingerprint": record["bundle_fingerprint"], "data_hash": record.get("data_hash"),
            "code_version": record.get("code_version"), "git_commit": record.get("git_commit"),
            "selection_metrics": _dumps(ev.get("selection")), "test_metrics": _dumps(test or None),
            "test_accuracy": test.get("accuracy"),
            "test_worst_group_accuracy": test.get("worst_group_accuracy"),
            "test_mean_group_accuracy": test.get("mean_group_accuracy"),
            "test_weighted_accuracy": test.get("weighted_accuracy"),
            "test_worst_class_accuracy": test.get("worst_class_accuracy"),
            "test_group_accuracy": _dumps(test.get("group_accuracy")),
            "group_names": _dumps(record.get("group_names")), "class_names": _dumps(record.get("class_names")),
            "diagnostics": _dumps(record.get("diagnostics", {})),
            "load_seconds": timings.get("load_seconds"), "fit_seconds": record.get("fit_seconds"),
            "eval_seconds": timings.get("eval_seconds"), "started_at": record.get("started_at"),
            "finished_at": record.get("finished_at") or _now(), "host": record.get("host"),
            "worker": record.get("worker"), "error": record.get("error"),
        }
        cols = list(values)
        with self.transaction() as conn:
            prev = conn.execute("SELECT attempts FROM runs WHERE run_id=?", (record["run_id"],)).fetchone()
            values_attempts = max(int(prev["attempts"]) if prev else 0, 1)
            conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(cols)}, attempts) VALUES "
                         f"({', '.join('?' * len(cols))}, ?)", [*values.values(), values_attempts])

    def _row_to_record(self, row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        for c in _JSON_COLUMNS:
            try:
                d[c] = _loads(d.get(c))
            except (ValueError, RecursionError) as err:  # hand-edited or damaged: named, never fatal
                raise _BadRow(f"{self.path}: table runs, run {d.get('run_id')}: column {c} cannot be parsed "
                              f"({type(err).__name__}); the run is skipped (a rerun computes it again)") from None
        evaluation = {}
        if d.get("selection_metrics") is not None:
            evaluation["selection"] = d["selection_metrics"]
        if d.get("test_metrics") is not None:
            evaluation["test"] = d["test_metrics"]
        d["evaluation"] = evaluation
        d["timings"] = {"load_seconds": d.get("load_seconds"), "fit_seconds": d.get("fit_seconds"),
                        "eval_seconds": d.get("eval_seconds")}
        return d

    def row_is_readable(self, row: sqlite3.Row) -> bool:
        """Whether a ``runs`` row parses into a record (a damaged one is computed again)."""
        try:
            self._row_to_record(row)
        except _BadRow:
            return False
        return True

    def records(self, *, status: str | None = "done", run_ids: Iterable[str] | None = None,
                benchmark: str | None = None, method: str | None = None,
                seed: int | None = None) -> list[dict[str, Any]]:
        """Stored runs as record dicts (``evaluation`` = {'selection', 'test'} GroupReport dicts).

        Filters combine with AND; ``status=None`` returns every status.
        """
        where, args = [], []
        for col, val in (("status", status), ("benchmark", benchmark), ("method", method), ("seed", seed)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        order = " ORDER BY benchmark, method, seed, run_id"
        ids = None if run_ids is None else list(dict.fromkeys(run_ids))
        rows: list[sqlite3.Row] = []
        with self._connect() as conn:
            if ids is None:
                rows = conn.execute("SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
                                    + order, args).fetchall()
            else:
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    cond = " AND ".join([*where, f"run_id IN ({','.join('?' * len(chunk))})"])
                    rows += conn.execute(f"SELECT * FROM runs WHERE {cond}{order}", [*args, *chunk]).fetchall()
        out = []
        for r in rows:
            try:
                out.append(self._row_to_record(r))
            except _BadRow as err:
                warnings.warn(str(err), stacklevel=2)
        return out

    def counts(self) -> dict[str, int]:
        """Number of runs per status (every status present, zeros included)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({r["status"]: r["n"] for r in rows})
        return out

    # ---------------------------------------------------------- bundles, norms
    def put_bundle(self, fingerprint: str, *, benchmark: str, seed: int, source: str, data_hash: str | None,
                   split_sizes: dict[str, int], n_features: int, n_classes: int,
                   group_names: Sequence[str] | None, meta: dict[str, Any] | None) -> None:
        """Describe a bundle (idempotent)."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (fingerprint, benchmark, int(seed), source, data_hash, _dumps(split_sizes),
                          int(n_features), int(n_classes), _dumps(list(group_names) if group_names else None),
                          _dumps(meta), _now()))

    def bundles(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM bundles ORDER BY benchmark, seed").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for c in ("split_sizes", "group_names", "meta"):
                d[c] = _loads(d[c])
            out.append(d)
        return out

    def has_norms(self, benchmark: str, seed: int, fingerprint: str) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM heldout_norms WHERE benchmark=? AND seed=? AND bundle_fingerprint=?",
                                (benchmark, int(seed), fingerprint)).fetchone() is not None

    def put_norms(self, benchmark: str, seed: int, fingerprint: str, *, norms: Sequence[float],
                  labels: Sequence[int] | None, groups: Sequence[int] | None,
                  group_names: Sequence[str] | None) -> None:
        """Store the ERM head's held-out gradient norms of one bundle (replaces an older entry)."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO heldout_norms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (benchmark, int(seed), fingerprint, _dumps(list(map(float, norms))),
                          _dumps(None if labels is None else list(map(int, labels))),
                          _dumps(None if groups is None else list(map(int, groups))),
                          _dumps(list(group_names) if group_names else None), _now()))

    def norms(self, *, benchmark: str | None = None,
              fingerprints: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Held-out norm entries: dicts with benchmark, seed, bundle_fingerprint, norms, labels, groups,
        group_names (lists)."""
        with self._connect() as conn:
            if benchmark is None:
                rows = conn.execute("SELECT * FROM heldout_norms ORDER BY benchmark, seed").fetchall()
            else:
                rows = conn.execute("SELECT * FROM heldout_norms WHERE benchmark=? ORDER BY seed",
                                    (benchmark,)).fetchall()
        keep = None if fingerprints is None else set(fingerprints)
        out = []
        for r in rows:
            if keep is not None and r["bundle_fingerprint"] not in keep:
                continue
            d = dict(r)
            for c in ("norms", "labels", "groups", "group_names"):
                d[c] = _loads(d[c])
            out.append(d)
        return out

    # -------------------------------------------------------------- run log
    def log_invocation(self, entry: dict[str, Any]) -> None:
        """Append one entry (what ran, how, how long) to the store's run log."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='run_log'").fetchone()
            log = _loads(row["value"]) if row else []
            log.append({"at": _now(), **entry})
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('run_log', ?)", (_dumps(log),))

    def run_log(self) -> list[dict[str, Any]]:
        """Every logged invocation, oldest first."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='run_log'").fetchone()
        return _loads(row["value"]) if row else []

    # ------------------------------------------------------------ experiments
    def register_experiment(self, name: str, config: dict[str, Any], planned: Sequence[dict[str, Any]],
                            *, source: str | None = None) -> None:
        """Store an experiment's resolved config and its planned runs (replacing an earlier plan
        of the same name), in one transaction. ``planned``: dicts with run_id, benchmark, seed,
        method, label, in plan order."""
        now = _now()
        with self.transaction() as conn:
            prev = conn.execute("SELECT created_at FROM experiments WHERE name=?", (name,)).fetchone()
            conn.execute("INSERT OR REPLACE INTO experiments VALUES (?, ?, ?, ?, ?)",
                         (name, _dumps(config), source, prev["created_at"] if prev else now, now))
            conn.execute("DELETE FROM experiment_runs WHERE experiment=?", (name,))
            conn.executemany(
                "INSERT OR REPLACE INTO experiment_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(name, p["run_id"], i, p["benchmark"], int(p["seed"]), p["method"], p["label"])
                 for i, p in enumerate(planned)])

    def experiments(self) -> list[dict[str, Any]]:
        """Every experiment: name, config (dict), source, created_at, updated_at, runs (planned, in order)."""
        with self._connect() as conn:
            exps = conn.execute("SELECT * FROM experiments ORDER BY created_at, name").fetchall()
            links = conn.execute("SELECT * FROM experiment_runs ORDER BY experiment, position").fetchall()
        by_exp: dict[str, list[dict]] = {}
        for r in links:
            by_exp.setdefault(r["experiment"], []).append(dict(r))
        out = []
        for e in exps:
            d = dict(e)
            d["config"] = _loads(d["config"])
            d["runs"] = by_exp.get(e["name"], [])
            out.append(d)
        return out

