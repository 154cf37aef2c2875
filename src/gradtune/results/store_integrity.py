"""Checks a results store passes before it is used.

:func:`check_store` runs when a :class:`~gradtune.results.store.ResultStore` opens
an existing file: it must be a regular file, start with the SQLite header, pass
``PRAGMA quick_check``, and (once it holds gradtune's tables) carry a schema version
this code reads. A failure raises :class:`~gradtune._errors.StoreCorruptError` naming
the file and the way out (restore a copy, or start a new store).

:func:`connect_readonly` opens a store for reading without writing anything, so a
report can be made from a store on a read-only disk or in a read-only folder.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

from gradtune._errors import OutputError, StoreBusyError, StoreCorruptError

__all__ = ["SQLITE_HEADER", "check_store", "connect_readonly", "repair_hint"]

SQLITE_HEADER = b"SQLite format 3\x00"


def repair_hint(path: Path) -> str:
    return (f"restore {os.fsdecode(path)} from a copy, or write to a new store (--out NEW_FOLDER); "
            "`gradtune run` recomputes what the new store lacks")


def connect_readonly(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-only connection; ``immutable`` when the folder cannot be written (then SQLite
    could not create its shared-memory file, and nobody can be writing the store)."""
    immutable = "&immutable=1" if not os.access(path.parent, os.W_OK) or not os.access(path, os.W_OK) else ""
    return sqlite3.connect(f"file:{quote(os.fsdecode(path.resolve()))}?mode=ro{immutable}", uri=True,
                           timeout=timeout, isolation_level=None)


def check_store(path: Path, *, readonly: bool, schema_version: int, timeout: float = 60.0) -> None:
    """Raise a one-line error if the existing file ``path`` is not a usable results store.

    Parameters
    ----------
    path : Path
        The store file (it exists).
    readonly : bool
        Whether the store is opened only for reading (then it must already hold runs).
    schema_version : int
        The version this code reads.
    timeout : float
        SQLite busy timeout in seconds.
    """
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise StoreCorruptError(f"results store {os.fsdecode(path)} is not a regular file; give a .sqlite file "
                                "or a folder")
    if not readonly and not os.access(path, os.W_OK):
        raise OutputError(f"results store {os.fsdecode(path)} is read-only; make it writable, or write to a new "
                          "store (--out NEW_FOLDER). `gradtune report` reads it as it is")
    if st.st_size == 0:
        if readonly:
            raise StoreCorruptError(f"results store {os.fsdecode(path)} is empty (0 bytes), it holds no runs; "
                                    f"{repair_hint(path)}")
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as err:
        raise StoreCorruptError(f"results store {os.fsdecode(path)} cannot be read ({err.strerror})") from None
    if head != SQLITE_HEADER:
        raise StoreCorruptError(f"results store {os.fsdecode(path)} is not a SQLite database (damaged or another "
                                f"file); {repair_hint(path)}")
    try:
        conn = connect_readonly(path, timeout) if readonly else sqlite3.connect(path, timeout=timeout,
                                                                                 isolation_level=None)
        try:
            result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            version = None
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = None if row is None else row[0]
        finally:
            conn.close()
    except sqlite3.OperationalError as err:
        if "locked" not in str(err) and "busy" not in str(err):
            raise StoreCorruptError(f"results store {os.fsdecode(path)} is corrupt ({' '.join(str(err).split())}); "
                                    f"{repair_hint(path)}") from None
        raise StoreBusyError(f"results store {os.fsdecode(path)} is in use by another process, which held its "
                             f"lock for {timeout:.0f} s; wait for it to finish, or write to another --out") from None
    except sqlite3.DatabaseError as err:
        raise StoreCorruptError(f"results store {os.fsdecode(path)} is corrupt ({' '.join(str(err).split())}); "
                                f"{repair_hint(path)}") from None
    if result != ["ok"]:
        raise StoreCorruptError(f"results store {os.fsdecode(path)} failed its integrity check "
                                f"({'; '.join(result[:3])}); {repair_hint(path)}")
    if readonly and "runs" not in tables:
        raise StoreCorruptError(f"{os.fsdecode(path)} is a SQLite file but not a gradtune results store (no runs "
                                "table); give the store written by `gradtune run`")
    if version is not None and str(version) != str(schema_version):
        raise StoreCorruptError(f"results store {os.fsdecode(path)} has schema version {version}; this gradtune "
                                f"reads version {schema_version}. Use the gradtune that wrote it, or a new store")
