"""The embedding bundle: cached features of a frozen model, in one versioned file.

A bundle holds N rows of penultimate-layer features with their labels and the
split each row belongs to, plus optional logits, the ERM head, groups and
attributes. Every last-layer method in gradtune reads this format.

File format (version 1)
-----------------------
Either a ``.npz`` archive or a directory of ``.npy`` files, with these arrays
(loaded with ``allow_pickle=False``; nothing in a bundle is ever executed):

=======================  ==========  ==============================================
name                     shape       meaning
=======================  ==========  ==============================================
``format_version``       ()          int, must be 1
``features``             (N, d)      float, finite
``labels``               (N,)        int, in 0..C-1, at least 2 classes present
``split``                (N,)        str: train / val / heldout / selection / test
``logits``               (N, C)      optional, the ERM model's logits
``early_logits``         (N, C)      optional, an early checkpoint's logits (SELF)
``encoder_features``     (N, e)      optional, float, finite: a general-purpose frozen
                                     encoder's features of the same rows (group inference)
``head_weight``          (C, d)      optional, the ERM last layer's weight
``head_bias``            (C,)        optional, its bias
``groups``               (N,)        optional, int group ids (evaluation only)
``attributes``           (N,)        optional, int spurious attribute
``deployment_features``  (M, d)      optional, float, finite: features of unlabeled rows from
                                     where the model is deployed (no labels, no split; only
                                     ``gradtune-auto``'s guard reads them, for the shares of
                                     its inferred groups there)
``n_classes``            ()          optional, int C (else inferred)
``class_names``          (C,)        optional, str
``group_names``          (G,)        optional, str
``meta_json``            ()          optional, str: a JSON object of provenance
=======================  ==========  ==============================================

If the rows have ``val`` but no ``heldout``/``selection`` split, the validation
rows are split in half by a seed at load time (:meth:`EmbeddingBundle.resolve_heldout`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gradtune._io import atomic_save_npz
from gradtune._validation import MAX_IDS, GradTuneInputError, check_id_bounds
from gradtune.data.base import split_heldout
from gradtune.embeddings._bundle_files import read_bundle_arrays
from gradtune.embeddings.cache import hash_array

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "heldout", "selection", "test")
_REQUIRED = ("features", "labels", "split")
_OPTIONAL = ("logits", "early_logits", "encoder_features", "head_weight", "head_bias", "groups", "attributes",
             "deployment_features", "n_classes", "class_names", "group_names")
_KNOWN = ("format_version", "meta_json") + _REQUIRED + _OPTIONAL
_HASH_KEY = "content_sha256"


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array of a bundle file (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(hash_array(arrays[key]).encode())
    return h.hexdigest()


class BundleError(GradTuneInputError):
    """An embedding bundle is malformed; the message names the array and the problem."""


@dataclass
class SplitView:
    """The rows of one split.

    features : (n, d) float32; labels : (n,) int64; logits : (n, C) or None;
    groups / attributes : (n,) int64 or None; index : (n,) rows in the bundle;
    early_logits : (n, C) or None; encoder_features : (n, e) or None.
    """

    features: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None
    groups: np.ndarray | None
    attributes: np.ndarray | None
    index: np.ndarray
    early_logits: np.ndarray | None = None
    encoder_features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class EmbeddingBundle:
    """Features, labels, splits and optional head/logits/groups; see module docstring."""

    features: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    logits: np.ndarray | None = None
    early_logits: np.ndarray | None = None
    encoder_features: np.ndarray | None = None
    head_weight: np.ndarray | None = None
    head_bias: np.ndarray | None = None
    groups: np.ndarray | None = None
    attributes: np.ndarray | None = None
    deployment_features: np.ndarray | None = None
    n_classes: int | None = None
    class_names: list[str] | None = None
    group_names: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ views
    @property
    def n_groups(self) -> int | None:
        if self.groups is None:
            return None
        if self.group_names is not None:
            return len(self.group_names)
        return int(self.groups.max()) + 1

    def has_split(self, name: str) -> bool:
        return bool(np.any(self.split == name))

    def view(self, name: str) -> SplitView:
        """Rows of split ``name``; raises BundleError if the split is empty."""
        idx = np.flatnonzero(self.split == name)
        if idx.size == 0:
            present = sorted(set(self.split.tolist()))
            raise BundleError(f"the bundle has no rows in split {name!r}; splits present: {present}")

        # a split stored as one run of rows is a view, not a copy (paper-size training splits)
        rows: slice | np.ndarray = slice(int(idx[0]), int(idx[-1]) + 1) if idx[-1] - idx[0] + 1 == idx.size else idx

        def rows_of(a: np.ndarray) -> np.ndarray:
            out = a[rows]
            if isinstance(rows, slice):  # a view: writing to it would change the bundle
                out.flags.writeable = False
            return out

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else rows_of(a)

        return SplitView(rows_of(self.features), rows_of(self.labels), take(self.logits), take(self.groups),
                         take(self.attributes), idx, take(self.early_logits),
                         take(self.encoder_features))

    def resolve_heldout(self, seed: int = 0) -> EmbeddingBundle:
        """Split ``val`` rows into ``heldout``/``selection`` halves (seeded) if needed."""
        if self.has_split("heldout"):
            return self
        val = np.flatnonzero(self.split == "val")
        if val.size < 2:
            raise BundleError("the bundle has no 'heldout' rows and fewer than 2 'val' rows to split into held-out/selection halves")
        held, sel = split_heldout(val, seed)
        split = self.split.astype(f"<U{max(9, self.split.dtype.itemsize // 4)}").copy()
        split[held] = "heldout"
        split[sel] = "selection"
        return replace(self, split=split)

    # --------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike) -> Path:
        """Write the bundle atomically as ``.npz`` (or a directory if ``path`` has no suffix ``.npz``)."""
        path = Path(path)
        arrays = {"format_version": np.asarray(FORMAT_VERSION),
                  "meta_json": np.asarray(json.dumps(self.meta, default=str))}
        for key in _REQUIRED + _OPTIONAL:
            value = getattr(self, key)
            if value is None:
                continue
            if key in ("class_names", "group_names"):
                value = np.asarray([str(v) for v in value])
            arrays[key] = np.asarray(value)
        arrays[_HASH_KEY] = np.asarray(_content_hash(arrays))
        if path.suffix == ".npz":
            atomic_save_npz(path, **arrays)
        else:
            tmpdir = Path(tempfile.mkdtemp(dir=path.parent if path.parent.exists() else None,
                                           prefix=path.name + ".tmp"))
            for key, value in arrays.items():
                np.save(tmpdir / f"{key}.npy", value, allow_pickle=False)
            if path.exists():
                import shutil

                shutil.rmtree(path)
            os.replace(tmpdir, path)
        return path


def load_bundle(path: str | os.PathLike) -> EmbeddingBundle:
    """Read and validate a bundle from ``.npz`` or a directory of ``.npy`` files.

    Raises
    ------
    BundleError
        If the file is missing, truncated, of another format version, or any array
        is missing, mis-shaped, non-finite or out of range.
    """
    return _load(path, digest=False)[0]


def load_bundle_digest(path: str | os.PathLike) -> tuple[EmbeddingBundle, str]:
    """:func:`load_bundle`, and the sha256 of the very bytes it read (of the ``.npz``, or of
    the folder's files in name order), so the digest always describes the bundle returned.

    Every file is opened only when it is a regular file; declared array sizes are checked
    against the file and the free memory before anything is inflated
    (:mod:`gradtune.embeddings._bundle_files`).
    """
    bundle, digest = _load(path, digest=True)
    return bundle, str(digest)


def _load(path: str | os.PathLike, *, digest: bool) -> tuple[EmbeddingBundle, str | None]:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"embedding bundle {str(path)!r} does not exist")
    if not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
        raise BundleError(f"embedding bundle {str(path)!r} is not a regular file (a FIFO or device?)")
    arrays, meta_file, sha = read_bundle_arrays(path, lambda k: k in _KNOWN or k == _HASH_KEY, BundleError,
                                                digest=digest)
    return _from_arrays(path, arrays, meta_file or {}), sha


def _from_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> EmbeddingBundle:
    stored_hash = arrays.pop(_HASH_KEY, None)
    if stored_hash is not None and (stored_hash.shape != () or str(stored_hash) != _content_hash(arrays)):
        raise BundleError(f"{str(path)!r} does not match its content hash: an array was changed after the bundle "
                          "was written (or the file is damaged); rebuild it, or re-save it with EmbeddingBundle.save")
    version = arrays.pop("format_version")
    if "meta_json" in arrays:
        try:
            meta = json.loads(str(arrays.pop("meta_json")))
        except (json.JSONDecodeError, RecursionError):
            raise BundleError(f"meta_json of {str(path)!r} is not valid JSON (nor nested under 1000 levels)") from None
        if not isinstance(meta, dict):
            raise BundleError("meta_json must hold a JSON object")
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        raise BundleError(f"{str(path)!r} has bundle format version {version!r}; this gradtune reads version {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise BundleError(f"{str(path)!r} is missing required array(s) {missing}")
    kwargs: dict = dict(arrays)
    for key in ("class_names", "group_names"):
        if key in kwargs:
            kwargs[key] = [str(v) for v in np.atleast_1d(kwargs[key]).tolist()]
    if "n_classes" in kwargs:
        nc = kwargs["n_classes"]
        if nc.shape != () or nc.dtype.kind not in "iu":
            raise BundleError(f"n_classes must be a scalar integer, got shape {nc.shape} dtype {nc.dtype}")
        kwargs["n_classes"] = int(nc)
    return EmbeddingBundle(meta=meta, **kwargs)


def _validate(b: EmbeddingBundle) -> None:
    def arr(name: str, value, kinds: str) -> np.ndarray:
        a = np.asarray(value)
        if a.dtype.kind not in kinds:
            raise BundleError(f"{name} has dtype {a.dtype}; expected {'numbers' if 'f' in kinds else 'integers'}")
        return a

    def matrix(name: str, value, ok, shape: str) -> np.ndarray:
        """A finite float32 2-D array whose (rows, cols) pass ``ok``; else an error giving ``shape``."""
        a = arr(name, value, "fiu")
        if a.ndim != 2 or not ok(*a.shape):
            raise BundleError(f"{name} must have shape {shape}, got {a.shape}")
        if not np.isfinite(a).all():
            rows = int((~np.isfinite(a)).any(axis=1).sum())
            raise BundleError(f"{name} contain NaN or infinite values in {rows} row(s)")
        return a.astype(np.float32, copy=False)

    feats = b.features = matrix("features", b.features, lambda r, c: r > 0 and c > 0, "(N, d) with N, d > 0")
    n, d = feats.shape

    labels = arr("labels", b.labels, "biuf")
    if labels.shape != (n,):
        raise BundleError(f"labels must have shape ({n},) to match features, got {labels.shape}")
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise BundleError("labels must be integer class ids")
    if labels.dtype.kind in "uf":  # bound first: 2**63 cast to int64 would read as negative
        check_id_bounds(labels, "labels")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise BundleError(f"labels must be >= 0, found {labels.min()}")
    check_id_bounds(labels, "labels")
    b.labels = labels

    split = np.asarray(b.split)
    if split.dtype.kind not in "U":
        raise BundleError(f"split must be an array of strings {list(SPLIT_NAMES)}, got dtype {split.dtype}")
    if split.shape != (n,):
        raise BundleError(f"split must have shape ({n},), got {split.shape}")
    unknown = sorted(set(np.unique(split).tolist()) - set(SPLIT_NAMES))
    if unknown:
        raise BundleError(f"split has unknown value(s) {unknown}; allowed: {list(SPLIT_NAMES)}")
    b.split = split

    if b.encoder_features is not None:
        b.encoder_features = matrix("encoder_features", b.encoder_features, lambda r, c: r == n and c > 0,
                                    f"({n}, e) with e > 0 to match features")
    if b.deployment_features is not None:
        b.deployment_features = matrix("deployment_features", b.deployment_features, lambda r, c: r > 0 and c == d,
                                       f"(M, {d}) with M > 0: unlabeled rows with the same {d} features as the "
                                       "labeled ones")

    c = b.n_classes if b.n_classes is not None else None
    for name in ("logits", "early_logits"):
        value = getattr(b, name)
        if value is None:
            continue
        lg = arr(name, value, "fiu")
        if lg.ndim != 2 or lg.shape[0] != n:
            raise BundleError(f"{name} must have shape ({n}, C), got {lg.shape}")
        if not np.isfinite(lg).all():
            raise BundleError(f"{name} contain NaN or infinite values")
        c = c if c is not None else lg.shape[1]
        if lg.shape[1] != c:
            raise BundleError(f"{name} have {lg.shape[1]} columns but the bundle has {c} classes")
        setattr(b, name, lg.astype(np.float32, copy=False))
    if (b.head_weight is None) != (b.head_bias is None):
        raise BundleError("head_weight and head_bias must be given together")
    if b.head_weight is not None:
        w = arr("head_weight", b.head_weight, "fiu")
        bias = arr("head_bias", b.head_bias, "fiu")
        if w.ndim != 2 or w.shape[1] != d:
            raise BundleError(f"head_weight must have shape (C, {d}) to match features, got {w.shape}")
        c = c if c is not None else w.shape[0]
        if w.shape[0] != c:
            raise BundleError(f"head_weight has {w.shape[0]} rows but the bundle has {c} classes")
        if bias.shape != (c,):
            raise BundleError(f"head_bias must have shape ({c},), got {bias.shape}")
        if not (np.isfinite(w).all() and np.isfinite(bias).all()):
            raise BundleError("head_weight/head_bias contain NaN or infinite values")
        b.head_weight = w.astype(np.float32, copy=False)
        b.head_bias = bias.astype(np.float32, copy=False)
    if c is None:
        c = int(labels.max()) + 1
    if c < 2:
        raise BundleError(f"a classifier needs at least 2 classes, the bundle has {c}")
    if c > MAX_IDS:
        raise BundleError(f"the bundle declares {c} classes; at most {MAX_IDS} are supported")
    if labels.max() >= c:
        raise BundleError(f"labels must be < {c} (the number of classes), found {labels.max()}")
    if np.unique(labels).size < 2:
        raise BundleError(f"labels hold a single class ({labels[0]}); at least 2 classes are needed")
    b.n_classes = int(c)
    if b.class_names is not None and len(b.class_names) != c:
        raise BundleError(f"class_names has {len(b.class_names)} names for {c} classes")

    for name in ("groups", "attributes"):
        value = getattr(b, name)
        if value is None:
            continue
        g = arr(name, value, "biu")
        if g.shape != (n,):
            raise BundleError(f"{name} must have shape ({n},), got {g.shape}")
        if g.min() < 0:
            raise BundleError(f"{name} must be >= 0, found {g.min()}")
        check_id_bounds(g, name)
        setattr(b, name, g.astype(np.int64))
    if b.group_names is not None:
        if b.groups is None:
            raise BundleError("group_names given without groups")
        if b.groups.max() >= len(b.group_names):
            raise BundleError(f"groups go up to {b.groups.max()} but only {len(b.group_names)} group_names are given")
