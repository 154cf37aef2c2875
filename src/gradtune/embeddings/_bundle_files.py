"""Reading a bundle's files once, with every size checked before anything is inflated.

:func:`read_bundle_arrays` opens each file of a bundle (the ``.npz``, or the ``.npy``
files and ``meta.json`` of a folder) once, refuses anything but a regular file before
reading a byte of it (a FIFO is opened without blocking), and checks what each array
declares before its data is read:

* the ``.npy`` header's shape times item size must equal what the file (or the zip
  entry's declared size) holds, so a header claiming terabytes in a small file is
  named as damaged, not met as "out of memory";
* the declared sizes of all arrays together must fit the memory the machine has free
  (:func:`memory_budget`), so a zip bomb is refused from its directory alone;
* the required arrays must be present and the per-row arrays must agree on the row
  count, so an inconsistent archive is refused before it is inflated.

The sha256 it returns covers the bytes of the same open files the arrays were read
from, so a bundle replaced on disk meanwhile cannot pair one file's arrays with
another file's digest; a file changed in place while it was read is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from gradtune._validation import GradTuneInputError

__all__ = ["read_bundle_arrays", "memory_budget", "META_JSON_LIMIT", "ROW_ARRAYS"]

META_JSON_LIMIT = 16 << 20
"""Largest ``meta.json`` (bytes) a folder bundle may carry."""

ROW_ARRAYS = ("features", "labels", "split", "logits", "early_logits", "encoder_features", "groups", "attributes")
"""Arrays with one entry per row: their first dimensions must agree."""

_REQUIRED = ("format_version", "features", "labels", "split")


class _BundleFileError(GradTuneInputError):
    """Replaced by the caller with its own bundle error type."""


def memory_budget() -> int:
    """Bytes of memory free for arrays: ``MemAvailable`` (Linux), else the free pages, else 8 GiB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 20 else f"{n} bytes"


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading, only when it is a regular file (never blocks on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise _BundleFileError(f"cannot open {str(path)!r}: {err.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _BundleFileError(f"{str(path)!r} is not a regular file (a FIFO, a device or a folder?)")
    return os.fdopen(fd, "rb")


def _header(fh: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data size declared by the ``.npy`` header at ``fh``'s position."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as err:
        raise _BundleFileError(f"{where} is not a readable .npy array: {err}") from None
    if dtype.hasobject:
        raise _BundleFileError(f"could not read {where}: it holds Python objects (a pickled array); bundles hold "
                               "plain arrays only")
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= int(n)
    return tuple(int(n) for n in shape), dtype, nbytes


def _check_declared(shapes: dict[str, tuple[int, ...]], total: int, path: Path) -> None:
    missing = [k for k in _REQUIRED if k not in shapes]
    if "format_version" in missing:
        raise _BundleFileError(f"{str(path)!r} is not a gradtune bundle: it has no 'format_version' array "
                               f"(found: {sorted(shapes)}); write one with EmbeddingBundle.save")
    if missing:
        raise _BundleFileError(f"{str(path)!r} is missing required array(s) {missing}")
    n = shapes["features"][0] if shapes["features"] else None
    for k in ROW_ARRAYS:  # the row counts, from the headers alone
        shape = shapes.get(k)
        if k != "features" and n is not None and shape is not None and (shape[:1] or (None,))[0] != n:
            want = f"({n},)" if len(shape) <= 1 else f"({n}, {'e' if k == 'encoder_features' else 'C'})"
            raise _BundleFileError(f"{k} must have shape {want} to match features, got {shape} "
                                   f"(in {str(path)!r}; checked before reading the data)")
    budget = memory_budget()
    if total > budget:
        raise _BundleFileError(f"{str(path)!r} declares arrays of {_gib(total)} in all, more than the "
                               f"{_gib(budget)} of memory free; nothing was read")


def _hash_stream(fh: IO[bytes], h: Any) -> None:
    fh.seek(0)
    while block := fh.read(1 << 20):
        h.update(block)


def _unchanged(fh: IO[bytes], before: os.stat_result, path: Path) -> None:
    after = os.fstat(fh.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise _BundleFileError(f"{str(path)!r} changed while it was read; read it again once it is written")


def _read_npz(path: Path, keep: Callable[[str], bool], h: Any) -> dict[str, np.ndarray]:
    with _open_regular(path) as fh:
        before = os.fstat(fh.fileno())
        if h is not None:
            h.update(path.name.encode())
            _hash_stream(fh, h)
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            entries, shapes, total = {}, {}, 0
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if not keep(key) or key in entries:
                    continue
                where = f"array {key!r} of {str(path)!r}"
                with zf.open(info) as entry:
                    shape, _, nbytes = _header(entry, where)
                    declared = info.file_size - entry.tell()
                if nbytes != declared:
                    raise _BundleFileError(f"{where} is damaged: its header declares {_gib(nbytes)} of data, "
                                           f"the archive holds {_gib(max(declared, 0))}")
                entries[key], shapes[key] = info, shape
                total += nbytes
            _check_declared(shapes, total, path)
            arrays = {}
            for key, info in entries.items():
                with zf.open(info) as entry:
                    arrays[key] = np.lib.format.read_array(entry, allow_pickle=False)
        _unchanged(fh, before, path)
    return arrays


def _read_folder(path: Path, keep: Callable[[str], bool], h: Any) -> tuple[dict[str, np.ndarray], dict | None]:
    files = sorted(f for f in path.iterdir() if (f.suffix == ".npy" and keep(f.stem)) or f.name == "meta.json")
    opened, shapes, total = [], {}, 0
    try:
        for f in files:
            fh = _open_regular(f)
            opened.append((f, fh, os.fstat(fh.fileno())))
            size = opened[-1][2].st_size
            if f.name == "meta.json":
                if size > META_JSON_LIMIT:
                    raise _BundleFileError(f"{str(f)!r} holds {_gib(size)}; a bundle's meta.json may hold at most "
                                           f"{_gib(META_JSON_LIMIT)}")
                continue
            shape, _, nbytes = _header(fh, repr(str(f)))
            if fh.tell() + nbytes != size:
                raise _BundleFileError(f"{str(f)!r} is truncated or damaged: its header declares {_gib(nbytes)} "
                                       f"of data, the file holds {_gib(max(size - fh.tell(), 0))}")
            shapes[f.stem] = shape
            total += nbytes
        _check_declared(shapes, total, path)
        arrays, meta = {}, None
        for f, fh, before in opened:
            if h is not None:
                h.update(f.name.encode())
            if f.name == "meta.json":
                fh.seek(0)
                raw = fh.read(META_JSON_LIMIT + 1)
                if h is not None:
                    h.update(raw)
                meta = _parse_meta(raw, f)
            else:
                fh.seek(0)
                arrays[f.stem] = np.load(fh, allow_pickle=False)
                if h is not None:
                    _hash_stream(fh, h)
            _unchanged(fh, before, f)
    finally:
        for _, fh, _ in opened:
            fh.close()
    return arrays, meta


def _parse_meta(raw: bytes, where: Path) -> dict:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _BundleFileError(f"{str(where)!r} is not valid JSON (nor nested under 1000 levels): "
                               f"{type(err).__name__}") from None
    if not isinstance(meta, dict):
        raise _BundleFileError(f"{str(where)!r} must hold a JSON object")
    return meta


def read_bundle_arrays(path: Path, keep: Callable[[str], bool], error: type[GradTuneInputError], *,
                       digest: bool = True) -> tuple[dict[str, np.ndarray], dict | None, str | None]:
    """The arrays of the bundle at ``path`` whose names pass ``keep``, a folder bundle's
    ``meta.json`` (or None), and the sha256 of the bytes read (None unless ``digest``).

    The digest equals :func:`gradtune._io.file_digest` of the ``.npz``; for a folder it
    covers the files read (name, then bytes, in name order). Any problem raises ``error``.
    """
    h = hashlib.sha256() if digest else None
    try:
        if path.is_dir():
            arrays, meta = _read_folder(path, keep, h)
        else:
            arrays, meta = _read_npz(path, keep, h), None
    except _BundleFileError as err:
        raise error(str(err)) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as err:
        raise error(f"could not read embedding bundle {str(path)!r} (truncated, corrupt, or pickled object "
                    f"arrays?): {err}") from None
    return arrays, meta, None if h is None else h.hexdigest()
