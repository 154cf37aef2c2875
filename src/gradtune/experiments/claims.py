"""Run claims: several grid processes on one results store compute each run once.

Before a process computes pending runs it claims them in the store's ``claims`` table
(one row per run id: host, process id, time and an owner token), in one ``BEGIN
IMMEDIATE`` transaction, so two processes never both hold a claim.

Whether a claim's holder still lives is decided by a lease the holder keeps: an
exclusive ``flock`` on its own file ``<store>.owners/<token>``, taken when it first
claims and held until it exits. The kernel drops the lock when the holder dies, however
it dies (SIGKILL included), so a claim whose lock can be taken is stale and is taken
over. Neither the host name nor the process id decides anything: a rerun in a
restarted container (another host name, the same volume) or after the dead process's
id was reused takes the claims over at once. (Claims of an older gradtune carry no
token; they are taken over when their process on this host is gone, or at once when
they name another host.)

A run that another live process holds, or that became ``done`` meanwhile, is waited
for and then read from the store. The table is created on first use; stores without
it read as "nothing claimed".
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gradtune.results.store import ResultStore

__all__ = ["claim_runs", "release_runs", "run_claimed", "owner_token", "holder_alive"]

_TABLE = ("CREATE TABLE IF NOT EXISTS claims (run_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, "
          "claimed_at TEXT NOT NULL, owner TEXT)")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_OWNERS: dict[Path, tuple[int, str, int]] = {}  # lease folder -> (pid, token, locked fd) of this process


def _lease_dir(store: ResultStore) -> Path:
    return store.path.with_name(store.path.name + ".owners")


def _release_at_exit(folder: Path, pid: int, token: str, fd: int) -> None:
    if os.getpid() != pid:  # a forked child exiting normally must not drop its parent's lease
        return
    try:
        (folder / token).unlink(missing_ok=True)
        os.close(fd)
    except OSError:
        pass


def owner_token(store: ResultStore) -> str:
    """This process's token on ``store``: created, and its lease file locked, on first use.

    A forked child gets a token of its own (it shares its parent's lock, not its identity).
    """
    folder = _lease_dir(store)
    held = _OWNERS.get(folder)
    if held is not None and held[0] == os.getpid():
        return held[1]
    folder.mkdir(exist_ok=True)
    for old in list(folder.iterdir())[:1000]:  # leases of holders long gone (no claim names them any more)
        if _TOKEN.fullmatch(old.name):
            holder_alive(store, "", 0, old.name)
    token = uuid.uuid4().hex
    tmp = folder / f".{token}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else can hold it
    os.rename(tmp, folder / token)  # visible under its token only once locked, so never taken for dead
    _OWNERS[folder] = (os.getpid(), token, fd)
    atexit.register(_release_at_exit, folder, os.getpid(), token, fd)
    return token


def holder_alive(store: ResultStore, host: str, pid: int, owner: str | None) -> bool:
    """True when the process that holds a claim (``host``, ``pid``, ``owner`` token) still lives.

    A token's lease file that is missing, or whose lock can be taken, marks a dead holder;
    the file of a dead holder is removed on the way.
    """
    if owner is None:  # a claim written by an older gradtune
        if host != socket.gethostname():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError, ValueError):
            return True
        return True
    if not _TOKEN.fullmatch(str(owner)):
        return False  # not a token this code writes: nothing to wait for
    folder = _lease_dir(store)
    held = _OWNERS.get(folder)
    if held is not None and held[0] == os.getpid() and held[1] == owner:
        return True
    try:
        fd = os.open(folder / owner, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot look (permissions): trust it, as before
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    else:
        (folder / owner).unlink(missing_ok=True)  # ours now, and its holder is gone: tidy it away
        return False
    finally:
        os.close(fd)


def _ensure_table(conn: Any) -> None:
    conn.execute(_TABLE)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(claims)")}
    if "owner" not in columns:  # a store claimed by an older gradtune
        conn.execute("ALTER TABLE claims ADD COLUMN owner TEXT")


def claim_runs(store: ResultStore, run_ids: Sequence[str], *, force: bool = False) -> tuple[list[str], list[str]]:
    """Claim ``run_ids`` for this process.

    Returns
    -------
    mine : list of str
        Ids this process now holds and must compute.
    others : list of str
        Ids held by another live process, or already ``done`` (unless ``force``).
    """
    host, pid, token = socket.gethostname(), os.getpid(), owner_token(store)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    mine, others = [], []
    with store.transaction() as conn:
        _ensure_table(conn)
        holders = conn.execute("SELECT DISTINCT host, pid, owner FROM claims WHERE owner IS NOT ? OR owner IS NULL",
                               (token,)).fetchall()
        for h in holders:  # drop every claim of a holder that is gone, whatever run it names
            if not holder_alive(store, h["host"], h["pid"], h["owner"]):
                conn.execute("DELETE FROM claims WHERE host=? AND pid=? AND owner IS ?", (h["host"], h["pid"], h["owner"]))
        for rid in run_ids:
            row = conn.execute("SELECT owner FROM claims WHERE run_id=?", (rid,)).fetchone()
            if row is not None and row["owner"] != token:
                others.append(rid)
                continue
            stored = conn.execute("SELECT * FROM runs WHERE run_id=?", (rid,)).fetchone()
            if stored is not None and stored["status"] == "done" and not force and store.row_is_readable(stored):
                others.append(rid)
                continue
            conn.execute("INSERT OR REPLACE INTO claims (run_id, host, pid, claimed_at, owner) "
                         "VALUES (?, ?, ?, ?, ?)", (rid, host, pid, now, token))
            mine.append(rid)
    return mine, others


def release_runs(store: ResultStore, run_ids: Sequence[str]) -> None:
    """Drop this process's claims on ``run_ids``."""
    token = owner_token(store)
    with store.transaction() as conn:
        _ensure_table(conn)
        conn.executemany("DELETE FROM claims WHERE run_id=? AND owner=?", [(rid, token) for rid in run_ids])


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
        ids = sorted(waiting)
        records = {r["run_id"]: r for r in store.records(status=None, run_ids=ids)}
        held: dict[str, tuple] = {}
        with store.transaction() as conn:
            _ensure_table(conn)
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                held.update({r["run_id"]: (r["host"], r["pid"], r["owner"]) for r in conn.execute(
                    f"SELECT * FROM claims WHERE run_id IN ({','.join('?' * len(chunk))})", chunk)})
        alive = {key: holder_alive(store, *key) for key in set(held.values())}
        for rid in ids:
            holder = held.get(rid)
            if holder is not None and alive[holder]:
                continue
            rec = records.get(rid)
            waiting.discard(rid)
            if rec is not None and rec["status"] in ("done", "failed"):
                on_stored(rec)
            else:
                todo.append(rid)  # its holder died before finishing: compute it here
