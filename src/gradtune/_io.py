"""Small atomic-write helpers: a crash never leaves a half-written result file.

Every writer here writes a temporary file beside the target and renames it over the
target, so a link planted at the target's path is replaced, never followed: nothing
is written outside the output folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gradtune._errors import OutputError

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_save_npz", "file_digest",
           "jsonable", "save_run_outputs", "load_run_manifest", "save_figure", "output_lock", "FolderBusyError"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: readers see the old file or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig`` through :func:`atomic_write` (format from the suffix): a link at
    ``path`` is replaced, not followed, and a failed draw leaves the old figure."""
    fmt = Path(path).suffix.lstrip(".") or None
    return atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **kwargs))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=jsonable) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file (or of every file in a directory, in name order)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def _bytes_digest(name: str, data: bytes) -> str:
    """:func:`file_digest` of a file called ``name`` holding ``data``."""
    h = hashlib.sha256(os.path.basename(name).encode())
    h.update(data)
    return h.hexdigest()


class FolderBusyError(OutputError):
    """Another process holds an output folder's lock past the wait allowed."""


@contextmanager
def output_lock(folder: str | os.PathLike, *, timeout: float = 120.0, what: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on its ``.gradtune.lock``) so two
    writers of one output folder take turns; waits at most ``timeout`` seconds, then raises
    :class:`FolderBusyError` naming the folder. The lock dies with its process."""
    path = Path(folder) / ".gradtune.lock"
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise FolderBusyError(f"{what} {os.fsdecode(folder)} is in use by another process (it held "
                                      f"the folder's lock for {timeout:.0f} s); wait for it or choose "
                                      "another folder") from None
            time.sleep(0.05)
            continue
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file after we opened it: lock the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # removed while still locked, so no one can lock this inode after us
        os.close(fd)


def jsonable(o: Any) -> Any:
    """``json.dumps`` default: numpy values, paths, objects with ``to_dict``, sets and tuples."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


MANIFEST_KEY = "output_files"
"""Key of a manifest (a result JSON) that lists the sha256 of each file written with it."""


def save_run_outputs(folder: str | os.PathLike, manifest_name: str, manifest: dict[str, Any],
                     arrays: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """Write a run's outputs as one unit: each ``.npz`` of ``arrays`` (file name -> arrays)
    atomically, then the manifest JSON last, holding the sha256 of every other file.

    A crash between the writes leaves the previous manifest, whose hashes no longer
    match, so :func:`load_run_manifest` treats the run as unfinished.

    The ``.npz`` files are hashed from the bytes written (never re-read, so a concurrent
    writer renaming its own file over one cannot pair its head with this manifest), and
    ``manifest`` gains the ``output_files`` entry it was written with.

    Returns
    -------
    list of Path
        The files written, the manifest last.
    """
    folder = Path(folder)
    written, hashes = [], {}
    try:
        for name, content in arrays.items():
            buf = io.BytesIO()
            np.savez(buf, **content)
            data = buf.getvalue()  # hashed as written, never re-read: another writer may rename over it
            written.append(atomic_write(folder / name, lambda fh, data=data: fh.write(data)))
            hashes[name] = _bytes_digest(name, data)
        manifest[MANIFEST_KEY] = hashes  # the caller's dict becomes what was written
        written.append(atomic_write_json(folder / manifest_name, manifest))
    except BaseException:
        for f in written:  # no manifest lists them: drop them rather than leave a half-written run
            f.unlink(missing_ok=True)
        raise
    return written


def load_run_manifest(folder: str | os.PathLike, manifest_name: str) -> dict[str, Any] | None:
    """The manifest written by :func:`save_run_outputs`, or None when it is missing or not
    JSON, or when a file it lists is missing, not a regular file, or has another sha256."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / manifest_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get(MANIFEST_KEY) if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return None
    for name, digest in files.items():
        f = folder / str(name)
        if not f.is_file() or file_digest(f) != digest:
            return None
    return manifest
