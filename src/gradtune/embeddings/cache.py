"""A disk cache of encoded features, keyed by what went into them.

Encoding a benchmark with a frozen encoder takes minutes on a laptop CPU and gives the
same features for every experiment seed, so it is done once and stored. An entry is
one ``.npz`` file ``<cache_dir>/<name>.npz`` holding

* ``features``: the (N, d) float32 array;
* ``key``: the hex SHA-256 of the entry's key description (:func:`cache_key`): the
  inputs' content or the data files' identity, the encoder's name and version, and the
  preprocessing parameters;
* ``sha256``: the hex SHA-256 of the features themselves (:func:`hash_array`).

Reading checks the stored key against the expected one: a file written for other
inputs or settings (stale), one that cannot be read (truncated, corrupt), one whose
features no longer match their hash, or one with another row count than asked, is a
miss, and :meth:`FeatureCache.get_or_compute` recomputes and overwrites it. Writes go
to a temporary file in the same folder, then ``os.replace`` it into place, so a reader
never sees a partial file and an interrupted write leaves the old entry intact.

The cache folder is the ``cache_dir`` argument, else ``$GRADTUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/gradtune`` (the XDG base-directory rule: an unset, empty or relative
``XDG_CACHE_HOME`` is ignored), else ``~/.cache/gradtune``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradtune._io import atomic_save_npz
from gradtune._paths import CACHE_ENV_VAR, default_cache_dir

__all__ = ["CACHE_FORMAT", "ENV_VAR", "default_cache_dir", "cache_key", "hash_array",
           "hash_texts", "file_identity", "FeatureCache"]

CACHE_FORMAT = 1
"""Bumped when the entry layout changes; part of every key."""
ENV_VAR = CACHE_ENV_VAR
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def hash_array(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (hex)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data.cast("B"))
    return h.hexdigest()


def hash_texts(texts: Any) -> str:
    """SHA-256 of a sequence of strings (length-prefixed, UTF-8; hex)."""
    h = hashlib.sha256()
    for t in texts:
        b = str(t).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def file_identity(paths: Any) -> list[dict[str, Any]]:
    """Path, size and modification time of each file (a cheap stand-in for its content)."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append({"path": str(Path(p).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def cache_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a JSON-able description; numpy arrays inside are hashed by content."""
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return {"ndarray_sha256": hash_array(o)}
        if isinstance(o, (np.integer, np.floating)):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cache key part of type {type(o).__name__} is not JSON-able")

    text = json.dumps({"cache_format": CACHE_FORMAT, **dict(parts)}, sort_keys=True, default=default)
    return hashlib.sha256(text.encode()).hexdigest()


class FeatureCache:
    """Encoded features on disk, one ``.npz`` entry per name (see module docstring).

    Parameters
    ----------
    cache_dir : path, optional
        Folder of the entries (created on first write). Default: :func:`default_cache_dir`.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def path(self, name: str) -> Path:
        """File of entry ``name`` (letters, digits, ``.``, ``_``, ``-``)."""
        if not _NAME_RE.match(name):
            raise ValueError(f"cache entry name {name!r} must be letters, digits, '.', '_' or '-'")
        return self.cache_dir / f"{name}.npz"

    def load(self, name: str, key: str, *, rows: int | None = None) -> np.ndarray | None:
        """The cached (N, d) float32 features, or None if absent, stale, unreadable, of another
        row count than ``rows``, or not matching their stored content hash (each with a warning
        but the plain miss)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = str(z["key"]) if "key" in z.files else None
                if stored != key:
                    return None
                feats = z["features"]
                digest = str(z["sha256"]) if "sha256" in z.files else None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            warnings.warn(f"feature cache {path} is unreadable ({type(err).__name__}: {err}); "
                          "it will be rebuilt", RuntimeWarning, stacklevel=2)
            return None
        if feats.ndim != 2 or feats.dtype.kind != "f" or not np.isfinite(feats).all():
            warnings.warn(f"feature cache {path} holds malformed features {feats.shape} {feats.dtype}; "
                          "it will be rebuilt", RuntimeWarning, stacklevel=2)
            return None
        if rows is not None and feats.shape[0] != rows:
            warnings.warn(f"feature cache {path} holds {feats.shape[0]} rows for {rows} inputs; it will be rebuilt",
                          RuntimeWarning, stacklevel=2)
            return None
        if digest != hash_array(feats):
            warnings.warn(f"feature cache {path} does not match its content hash (changed or damaged); "
                          "it will be rebuilt", RuntimeWarning, stacklevel=2)
            return None
        return feats.astype(np.float32, copy=False)

    def save(self, name: str, key: str, features: np.ndarray) -> Path:
        """Write entry ``name`` atomically (temporary file + ``os.replace``)."""
        path = self.path(name)
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 2:
            raise ValueError(f"features must have shape (N, d), got {feats.shape}")
        return atomic_save_npz(path, features=feats, key=np.asarray(key), sha256=np.asarray(hash_array(feats)))

    def get_or_compute(self, name: str, key: str, compute: Callable[[], np.ndarray], *,
                       rows: int | None = None) -> tuple[np.ndarray, bool]:
        """Cached features for ``(name, key)``, computing and storing them on a miss (an entry
        with another row count than ``rows`` is a miss).

        Returns
        -------
        features : np.ndarray of shape (N, d), float32
        hit : bool
            True if the features came from disk.
        """
        feats = self.load(name, key, rows=rows)
        if feats is not None:
            return feats, True
        feats = np.asarray(compute(), dtype=np.float32)
        try:
            self.save(name, key, feats)
        except OSError as err:  # a read-only or full disk must not stop the run
            warnings.warn(f"could not write feature cache {self.path(name)}: {err}", RuntimeWarning,
                          stacklevel=2)
        return feats, False
