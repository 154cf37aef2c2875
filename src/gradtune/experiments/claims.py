"""Run claims: several grid processes on one results store compute each run once.

Before a process computes pending runs it claims them in the store's ``claims`` table
(one row per run id: host, process id, time), in one ``BEGIN IMMEDIATE`` transaction,
so two processes never both hold a claim. A claim is taken over when its holder is
gone: a process of this host that no longer exists. (Claims of other hosts are
trusted; the store is not shared across machines, see
:mod:`gradtune.results.store`.) A run that another live process holds, or that
became ``done`` meanwhile, is waited for and then read from the store.

The table is created on first use; stores without it read as "nothing claimed".
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from gradtune.results.store import ResultStore

__all__ = ["claim_runs", "release_runs", "run_claimed"]

_TABLE = ("CREATE TABLE IF NOT EXISTS claims (run_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, "
          "claimed_at TEXT NOT NULL)")


def _alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_runs(store: ResultStore, run_ids: Sequence[str], *, force: bool = False) -> tuple[list[str], list[str]]:
    """Claim ``run_ids`` for this process.

    Returns
    -------
    mine : list of str
        Ids this process now holds and must compute.
    others : list of str
        Ids held by another live process, or already ``done`` (unless ``force``).
    """
    host, pid = socket.gethostname(), os.getpid()
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    mine, others = [], []
    with store.transaction() as conn:
        conn.execute(_TABLE)
        for rid in run_ids:
            row = conn.execute("SELECT host, pid FROM claims WHERE run_id=?", (rid,)).fetchone()
            if row is not None and (row["host"], int(row["pid"])) != (host, pid) and _alive(row["host"], row["pid"]):
                others.append(rid)
                continue
            status = conn.execute("SELECT status FROM runs WHERE run_id=?", (rid,)).fetchone()
            if status is not None and status["status"] == "done" and not force:
                others.append(rid)
                continue
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)", (rid, host, pid, now))
            mine.append(rid)
    return mine, others


def release_runs(store: ResultStore, run_ids: Sequence[str]) -> None:
    """Drop this process's claims on ``run_ids``."""
    with store.transaction() as conn:
        conn.execute(_TABLE)
        conn.executemany("DELETE FROM claims WHERE run_id=? AND host=? AND pid=?",
                         [(rid, socket.gethostname(), os.getpid()) for rid in run_ids])


def run_claimed(store: ResultStore, tasks: Sequence[Any], run: Callable[[list[Any]], None],
                on_stored: Callable[[dict], None], *, force: bool = False, poll: float = 0.2) -> None:
    """Compute the tasks (objects with ``run_id``) this process can claim with ``run(tasks)``,
    then wait for the others and pass each one's stored record to ``on_stored``.

    A run whose holder dies while it is waited for is claimed and computed here.
    """
    by_id = {t.run_id: t for t in tasks}
    waiting: set[str] = set()
    todo = list(by_id)
    while todo or waiting:
        if todo:
            mine, others = claim_runs(store, todo, force=force)
            waiting.update(others)
            try:
                if mine:
                    run([by_id[r] for r in mine])
            finally:
                release_runs(store, mine)
            todo = []
            force = False  # what others finish meanwhile is their fresh result
        if not waiting:
            break
        time.sleep(poll)
        records = {r["run_id"]: r for r in store.records(status=None, run_ids=sorted(waiting))}
        with store.transaction() as conn:
            conn.execute(_TABLE)
            held = {r["run_id"]: (r["host"], r["pid"]) for r in conn.execute(
                f"SELECT * FROM claims WHERE run_id IN ({','.join('?' * len(waiting))})", sorted(waiting))}
        for rid in sorted(waiting):
            holder = held.get(rid)
            if holder is not None and _alive(*holder):
                continue
            rec = records.get(rid)
            waiting.discard(rid)
            if rec is not None and rec["status"] in ("done", "failed"):
                on_stored(rec)
            else:
                todo.append(rid)  # its holder died before finishing: compute it here
