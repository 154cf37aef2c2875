"""The one data structure every dataset reader returns.

A :class:`GroupedDataset` holds N samples of any modality (image paths, texts,
token ids, tabular rows) with their class label, spurious attribute, group id and
official split. Groups are ``group = label * n_attributes + attribute`` unless a
reader documents otherwise (e.g. the 16 overlapping WILDS groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DATA_FAMILIES = ("vision", "text", "tabular")
"""Data families; each method may declare defaults per family (``Method.family_defaults``)."""
DATASET_FAMILIES: dict[str, str] = {"waterbirds": "vision", "celeba": "vision", "multinli": "text",
                                    "civilcomments": "text"}
"""The family of each paper dataset (MultiNLI and CivilComments get the text defaults)."""
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
"""Integer codes of the official splits (the Waterbirds/CelebA convention)."""


class DatasetNotFoundError(FileNotFoundError):
    """A benchmark's files are missing; the message names them and where to get them."""


@dataclass
class GroupedDataset:
    """Samples with labels, spurious attributes, groups and official splits.

    Attributes
    ----------
    name : str
        Benchmark name, e.g. ``"waterbirds"``.
    inputs : Any
        Length-N sequence of inputs: file paths, strings, an (N, ...) array, ...
    labels : np.ndarray of shape (N,), int64
        Class labels in ``0..n_classes-1``.
    attributes : np.ndarray of shape (N,), int64
        Spurious attribute in ``0..n_attributes-1``.
    groups : np.ndarray of shape (N,), int64
        Group ids in ``0..n_groups-1``.
    split : np.ndarray of shape (N,), int64
        0 train, 1 validation, 2 test (see :data:`SPLIT_CODES`).
    class_names, attribute_names, group_names : list of str
    extra : dict
        Reader-specific arrays aligned with the samples (e.g. ``input_mask``).
    """

    name: str
    inputs: Any
    labels: np.ndarray
    attributes: np.ndarray
    groups: np.ndarray
    split: np.ndarray
    class_names: list[str]
    attribute_names: list[str]
    group_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        for key in ("attributes", "groups", "split"):
            arr = np.asarray(getattr(self, key), dtype=np.int64)
            if arr.shape != (n,):
                raise ValueError(f"{self.name}: {key} has shape {arr.shape}, expected ({n},)")
            setattr(self, key, arr)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.inputs) != n:
            raise ValueError(f"{self.name}: {len(self.inputs)} inputs but {n} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def indices(self, split: str | int) -> np.ndarray:
        """Indices (sorted) of one official split, by name or code."""
        code = SPLIT_CODES[split] if isinstance(split, str) else int(split)
        return np.flatnonzero(self.split == code)

    def group_counts(self, split: str | int) -> np.ndarray:
        """Samples per group in one split, shape (n_groups,)."""
        idx = self.indices(split)
        return np.bincount(self.groups[idx], minlength=self.n_groups)

    def subset(self, idx: np.ndarray) -> GroupedDataset:
        """A new dataset holding rows ``idx`` (inputs indexed element-wise if not an array)."""
        idx = np.asarray(idx, dtype=np.int64)
        if isinstance(self.inputs, np.ndarray):
            inputs = self.inputs[idx]
        else:
            inputs = [self.inputs[i] for i in idx]
        extra = {k: (v[idx] if isinstance(v, np.ndarray) and len(v) == len(self) else v)
                 for k, v in self.extra.items()}
        return GroupedDataset(self.name, inputs, self.labels[idx], self.attributes[idx],
                              self.groups[idx], self.split[idx], list(self.class_names),
                              list(self.attribute_names), list(self.group_names), extra)


def split_heldout(indices: np.ndarray, seed: int, fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Split validation indices into (held-out, selection) halves, seeded.

    The held-out half is what GradTune scores and fine-tunes on; the other half is
    left for model selection. Returns two sorted index arrays.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.asarray(indices))
    n_held = int(round(len(perm) * fraction))
    return np.sort(perm[:n_held]), np.sort(perm[n_held:])
