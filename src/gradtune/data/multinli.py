"""MultiNLI reader in the group_DRO layout (label: entailment class, spurious: negation).

On disk (kohpangwei/group_DRO's instructions)::

    multinli/
        data/metadata_random.csv                  ,gold_label,sentence2_has_negation,split
        glue_data/MNLI/cached_train_bert-base-uncased_128_mnli
        glue_data/MNLI/cached_dev_bert-base-uncased_128_mnli
        glue_data/MNLI/cached_dev_bert-base-uncased_128_mnli-mm

(or all four files flat in one folder). ``gold_label`` is 0 contradiction / 1 entailment /
2 neutral, ``sentence2_has_negation`` 0/1, ``split`` 0/1/2 (group_DRO's random split).
The cached files are ``torch.save`` pickles of a list of ``utils_glue.InputFeatures``
(``input_ids``, ``input_mask``, ``segment_ids``: 128 ints each; ``label_id``). The three
lists are concatenated (train, dev matched, dev mismatched) and row i is matched with
metadata row i. Groups are ``2 * label + negation`` (6 groups).

Security: the cached files are pickles, and unpickling can run arbitrary code. They are
read with :class:`RestrictedUnpickler`, which admits only ``utils_glue.InputFeatures``
(mapped to this module's :class:`InputFeatures`) and plain containers/numbers, and refuses
anything else with :class:`UnsafePickleError` before any object is built. ``torch.load``
is never called.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from gradtune.data.base import DatasetNotFoundError, GroupedDataset
from gradtune.data.registry import register_dataset
from gradtune.data.waterbirds import _int_column

__all__ = [
    "FEATURE_FILES",
    "InputFeatures",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_cached_features",
    "load_multinli",
]

FEATURE_FILES = (
    "cached_train_bert-base-uncased_128_mnli",
    "cached_dev_bert-base-uncased_128_mnli",
    "cached_dev_bert-base-uncased_128_mnli-mm",
)
"""group_DRO's cached BERT features, in concatenation order (train, dev, dev mismatched)."""
_FEATURE_GLOBS = ("cached_train_*_mnli", "cached_dev_*_mnli", "cached_dev_*_mnli-mm")
METADATA_FILE = "metadata_random.csv"
FEATURE_NAMES = ["input_ids", "input_mask", "segment_ids"]
CLASS_NAMES = ["contradiction", "entailment", "neutral"]
ATTRIBUTE_NAMES = ["no negation", "negation"]

_SOURCE = (
    "MultiNLI in this layout is set up by following the instructions of the group_DRO "
    "repository (github.com/kohpangwei/group_DRO, 'MultiNLI with annotated negations'): "
    "it provides multinli/data/metadata_random.csv and the cached BERT features "
    "multinli/glue_data/MNLI/cached_*_bert-base-uncased_128_mnli*."
)

# torch's legacy (non-zip) serialization constants (torch/serialization.py).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001


class UnsafePickleError(pickle.UnpicklingError):
    """A cached-feature pickle references something other than ``InputFeatures``."""


class InputFeatures:
    """Stand-in for ``utils_glue.InputFeatures``: one tokenized premise/hypothesis pair.

    Attributes
    ----------
    input_ids, input_mask, segment_ids : np.ndarray of shape (L,), int64
        Token ids, attention mask and segment (token type) ids, right-padded to L.
    label_id : int
        0 contradiction, 1 entailment, 2 neutral.
    """

    __slots__ = ("input_ids", "input_mask", "segment_ids", "label_id")

    def __init__(
        self,
        input_ids: Sequence[int],
        input_mask: Sequence[int],
        segment_ids: Sequence[int],
        label_id: int,
    ) -> None:
        self.__setstate__(
            {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
             "label_id": label_id}
        )

    def __setstate__(self, state: Any) -> None:
        # Pickles of plain objects carry their __dict__; a slots-style (dict, slots) pair
        # is accepted too. Lists become arrays at once, freeing the Python ints.
        if isinstance(state, tuple) and len(state) == 2:
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        if not isinstance(state, dict):
            raise UnsafePickleError(
                f"InputFeatures state must be a dict, got {type(state).__name__}."
            )
        missing = [k for k in self.__slots__ if k not in state]
        if missing:
            raise ValueError(f"InputFeatures in the cached file lacks field(s) {missing}.")
        for key in ("input_ids", "input_mask", "segment_ids"):
            seq = state[key]
            arr = np.asarray(seq) if isinstance(seq, (list, tuple)) else None
            if arr is None or arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise ValueError(
                    f"InputFeatures.{key} must be a flat list of ints, got "
                    f"{type(seq).__name__}" + (f" of dtype {arr.dtype}" if arr is not None else "")
                    + "."
                )
            setattr(self, key, arr.astype(np.int64, copy=False))
        label = state["label_id"]
        if type(label) is not int:
            raise ValueError(f"InputFeatures.label_id must be an int, got {type(label).__name__}.")
        self.label_id = label

    def __repr__(self) -> str:
        return f"InputFeatures(len={len(self.input_ids)}, label_id={self.label_id})"


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> InputFeatures:
    """``copyreg._reconstructor`` restricted to ``InputFeatures`` (pickle protocols 0/1)."""
    if cls is not InputFeatures or base is not object or state is not None:
        raise UnsafePickleError(
            "refusing copyreg._reconstructor for anything but InputFeatures."
        )
    return InputFeatures.__new__(InputFeatures)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain data and ``utils_glue.InputFeatures``.

    ``find_class`` admits ``utils_glue.InputFeatures`` (mapped to
    :class:`InputFeatures`) and, for pickle protocols 0/1, ``copyreg._reconstructor``
    (a restricted stand-in) with ``builtins.object``. Every other global, and every
    persistent id (torch tensor storages), raises :class:`UnsafePickleError` before it is
    called.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("utils_glue", "InputFeatures"): InputFeatures,
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("builtins", "object"): object,
        # Python 2 names, which protocol 0-2 pickles written by Python 3 still use.
        ("copy_reg", "_reconstructor"): _safe_reconstructor,
        ("__builtin__", "object"): object,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: the cached MultiNLI features may only "
                "reference utils_glue.InputFeatures (a list of InputFeatures with int lists). "
                "This file is not group_DRO's cache or has been tampered with."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        raise UnsafePickleError(
            f"refusing persistent object {kind!r} (a torch tensor/storage): the cached "
            "MultiNLI features should be plain lists of ints."
        )


def _restricted_load(fh: BinaryIO) -> Any:
    return RestrictedUnpickler(fh).load()


def load_cached_features(path: str | os.PathLike[str]) -> list[InputFeatures]:
    """Read one ``torch.save``-d list of ``InputFeatures`` without executing code.

    Handles torch's zip format (``<archive>/data.pkl``) and the legacy format (a magic
    number, protocol version and system info pickled in sequence, then the object, then
    the list of storage keys, which must be empty).

    Parameters
    ----------
    path : path
        A ``cached_*`` file.

    Returns
    -------
    list of InputFeatures

    Raises
    ------
    UnsafePickleError
        If the pickle references anything but ``utils_glue.InputFeatures`` or holds tensors.
    ValueError
        If the file is not a torch-saved list of ``InputFeatures``.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(members) != 1:
                raise ValueError(
                    f"{path}: a zip file without exactly one data.pkl is not a torch.save file."
                )
            with zf.open(members[0]) as fh:
                obj = _restricted_load(fh)  # type: ignore[arg-type]
    else:
        with open(path, "rb") as fh:
            try:
                magic = _restricted_load(fh)
            except UnsafePickleError:
                raise
            except Exception as exc:
                raise ValueError(
                    f"{path}: not a torch.save file (neither zip nor legacy format): {exc}"
                ) from exc
            if magic != _TORCH_LEGACY_MAGIC:
                raise ValueError(
                    f"{path}: not a torch.save file (legacy-format magic number missing)."
                )
            version = _restricted_load(fh)
            if version != _TORCH_LEGACY_PROTOCOL:
                raise ValueError(f"{path}: unsupported torch legacy protocol {version!r}.")
            _sys_info = _restricted_load(fh)
            obj = _restricted_load(fh)
            storage_keys = _restricted_load(fh)
            if storage_keys:
                raise UnsafePickleError(f"{path}: holds tensor storages; expected plain lists.")
    if not isinstance(obj, list) or not all(isinstance(f, InputFeatures) for f in obj):
        raise ValueError(
            f"{path}: expected a list of InputFeatures, got {type(obj).__name__}"
            + (f" of {type(obj[0]).__name__}" if isinstance(obj, list) and obj else "")
            + "."
        )
    return obj


def _features_to_array(features: list[InputFeatures], path: Path, dtype: Any) -> np.ndarray:
    """Stack features into (n, 3, L): input_ids, input_mask, segment_ids."""
    if not features:
        raise ValueError(f"{path}: holds no features.")
    length = len(features[0].input_ids)
    out = np.empty((len(features), 3, length), dtype=dtype)
    for i, f in enumerate(features):
        if not (len(f.input_ids) == len(f.input_mask) == len(f.segment_ids) == length):
            raise ValueError(
                f"{path}: feature {i} has sequence lengths {len(f.input_ids)}/"
                f"{len(f.input_mask)}/{len(f.segment_ids)}; expected {length} for all."
            )
        out[i, 0] = f.input_ids
        out[i, 1] = f.input_mask
        out[i, 2] = f.segment_ids
    return out


def _find_files(root: Path) -> tuple[Path, list[Path]]:
    bases = [root, root / "multinli"]
    meta_candidates = [d / sub / METADATA_FILE for d in bases for sub in ("data", "")]
    meta = next((p for p in meta_candidates if p.is_file()), None)
    if meta is None:
        looked = ", ".join(str(p) for p in meta_candidates)
        raise DatasetNotFoundError(
            f"MultiNLI: {METADATA_FILE} not found (looked for {looked}). {_SOURCE}"
        )
    top = meta.parent.parent if meta.parent.name == "data" else meta.parent
    feature_dirs = [top / "glue_data" / "MNLI", meta.parent, top]
    found: list[Path] = []
    for exact, pattern in zip(FEATURE_FILES, _FEATURE_GLOBS, strict=True):
        hit = None
        for d in feature_dirs:
            if (d / exact).is_file():
                hit = d / exact
                break
        if hit is None:
            for d in feature_dirs:
                matches = sorted(p for p in d.glob(pattern) if p.is_file()) if d.is_dir() else []
                if len(matches) == 1:
                    hit = matches[0]
                    break
        if hit is None:
            looked = ", ".join(str(d) for d in dict.fromkeys(feature_dirs))
            raise DatasetNotFoundError(
                f"MultiNLI: cached feature file {exact} not found (looked in {looked}); "
                f"expected all of {', '.join(FEATURE_FILES)}. {_SOURCE}"
            )
        found.append(hit)
    return meta, found


PAPER_GROUP_COUNTS: dict[str, tuple[int, ...]] = {  # (contradiction, entailment, neutral) x (no negation, negation)
    "train": (57498, 11158, 67376, 1521, 66630, 1992),
    "val": (22814, 4634, 26949, 613, 26655, 797),
    "test": (34597, 6655, 40496, 886, 39930, 1148),
}
"""Samples per group and split in the GradTune paper's Table 2 (group ids in order)."""


@register_dataset("multinli", paper_group_counts=PAPER_GROUP_COUNTS, aliases=("mnli",))
def load_multinli(
    root: str | os.PathLike[str],
    *,
    dtype: Any = np.int64,
    loader: Callable[[Path], list[InputFeatures]] | None = None,
) -> GroupedDataset:
    """Read MultiNLI (group_DRO layout) into a :class:`GroupedDataset`.

    Parameters
    ----------
    root : path
        The group_DRO ``multinli/`` folder (holding ``data/`` and ``glue_data/MNLI/``), its
        parent, or one folder holding the metadata and the three cached files flat.
    dtype : numpy dtype, default np.int64
        Integer dtype of ``inputs`` (``np.int32`` halves the ~1.3 GB of the full set).
    loader : callable, optional
        Reads one cached file into a list of :class:`InputFeatures`; defaults to the
        restricted :func:`load_cached_features`.

    Returns
    -------
    GroupedDataset
        ``inputs``: int array of shape (N, 3, L) (L = 128), channels ``input_ids``,
        ``input_mask``, ``segment_ids`` (``extra["feature_names"]``); ``labels`` (N,)
        0 contradiction / 1 entailment / 2 neutral; ``attributes`` (N,) negation in the
        hypothesis 0/1; ``groups`` (N,) ``2*label + negation`` (6 groups); ``split`` (N,)
        0/1/2; ``extra["metadata_index"]`` (N,) the metadata's original row index.

    Raises
    ------
    DatasetNotFoundError
        If the metadata or a cached feature file is missing.
    UnsafePickleError
        If a cached file references anything but ``utils_glue.InputFeatures``.
    ValueError
        If the features do not line up with the metadata (count or ``label_id`` mismatch).
    """
    meta_path, feature_paths = _find_files(Path(root).expanduser())
    df = pd.read_csv(meta_path, index_col=0)
    needed = ("gold_label", "sentence2_has_negation", "split")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(
            f"MultiNLI: {meta_path} lacks column(s) {missing}; expected the header "
            f"',gold_label,sentence2_has_negation,split'. Found {list(df.columns)}."
        )
    labels = _int_column(df, "gold_label", {0, 1, 2}, meta_path)
    negation = _int_column(df, "sentence2_has_negation", {0, 1}, meta_path)
    split = _int_column(df, "split", {0, 1, 2}, meta_path)

    read = loader if loader is not None else load_cached_features
    blocks: list[np.ndarray] = []
    label_ids: list[np.ndarray] = []
    for path in feature_paths:
        feats = read(path)
        blocks.append(_features_to_array(feats, path, dtype))
        label_ids.append(np.fromiter((f.label_id for f in feats), dtype=np.int64, count=len(feats)))
        del feats
    if len({b.shape[2] for b in blocks}) != 1:
        raise ValueError(
            "MultiNLI: the cached files have different sequence lengths "
            f"({[b.shape[2] for b in blocks]}); they must come from one preprocessing run."
        )
    n_feat = sum(len(b) for b in blocks)
    if n_feat != len(df):
        sizes = ", ".join(f"{p.name}: {len(b)}" for p, b in zip(feature_paths, blocks, strict=True))
        raise ValueError(
            f"MultiNLI: {meta_path} has {len(df)} rows but the cached files hold {n_feat} "
            f"features ({sizes}); rows are matched by position, so the counts must agree "
            "(the full dataset has 412,349)."
        )
    inputs = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
    del blocks
    feat_labels = np.concatenate(label_ids)
    bad = np.flatnonzero(feat_labels != labels)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"MultiNLI: label_id of the cached features disagrees with gold_label in "
            f"{meta_path} at {bad.size} of {len(df)} rows (first: row {i}, label_id "
            f"{int(feat_labels[i])} vs gold_label {int(labels[i])}). The cached files must be "
            f"concatenated as {', '.join(FEATURE_FILES)} and match this metadata file."
        )
    return GroupedDataset(
        name="multinli",
        inputs=inputs,
        labels=labels,
        attributes=negation,
        groups=2 * labels + negation,
        split=split,
        class_names=list(CLASS_NAMES),
        attribute_names=list(ATTRIBUTE_NAMES),
        group_names=[f"{c},{a}" for c in CLASS_NAMES for a in ATTRIBUTE_NAMES],
        extra={
            "feature_names": list(FEATURE_NAMES),
            "metadata_index": df.index.to_numpy(),
        },
    )
