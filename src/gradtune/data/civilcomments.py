"""CivilComments reader (WILDS v1.0 ``all_data_with_identities.csv``).

On disk (WILDS ``civilcomments_v1.0`` archive)::

    civilcomments_v1.0/
        all_data_with_identities.csv   unnamed 0..N-1 index, id, comment_text, split,
                                       toxicity, identity fractions, LGBTQ, other_religions, ...
        RELEASE_v1.0.txt

Label ``y = toxicity >= 0.5``. The eight WILDS identities are ``male``, ``female``,
``LGBTQ``, ``christian``, ``muslim``, ``other_religions``, ``black``, ``white``; an identity
is present when its column is ``>= 0.5``.

Groups
------
``groups="paper"`` (default; the GradTune paper, SELF, Izmailov et al.'s "coarse" groups):
    ``s`` = any of the eight identities present (not WILDS's ``identity_any``, which covers
    24 identities); ``group = 2*y + s``: (non-toxic,no identity), (non-toxic,identity),
    (toxic,no identity), (toxic,identity).
``groups="wilds"``:
    additionally the 16 WILDS evaluation groups (identity present, y) for each of the
    eight identities and y in {0, 1}. They overlap (a comment can mention several
    identities, or none), so they cannot be group ids: they are returned as a boolean
    membership matrix ``extra["group_membership"]`` of shape (N, 16) with column names
    ``extra["group_membership_names"]`` (``"<identity>,y=<0|1>"``, identity-major);
    ``groups`` stays the four paper groups. WILDS's worst-group accuracy is the minimum
    over these 16 columns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from gradtune.data.base import SPLIT_CODES, DatasetNotFoundError, GroupedDataset
from gradtune.data.registry import register_dataset

__all__ = ["CIVILCOMMENTS_IDENTITIES", "load_civilcomments"]

CIVILCOMMENTS_IDENTITIES = (
    "male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white",
)
"""The eight identities of WILDS's CivilComments groups (and of the paper's any-identity)."""
CSV_NAME = "all_data_with_identities.csv"
CLASS_NAMES = ["non-toxic", "toxic"]
ATTRIBUTE_NAMES = ["no identity", "identity"]

_SOURCE = (
    "CivilComments is published by WILDS as civilcomments_v1.0 (wilds.stanford.edu; "
    "`wilds` package: get_dataset('civilcomments', download=True) or the archive "
    "civilcomments_v1.0/ with all_data_with_identities.csv)."
)


def _find_csv(root: Path) -> Path:
    candidates = [
        base / sub / CSV_NAME if sub else base / CSV_NAME
        for base in (root, root / "civilcomments")
        for sub in ("", "civilcomments_v1.0")
    ]
    for cand in candidates:
        if cand.is_file():
            return cand
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(f"CivilComments: {CSV_NAME} not found (looked for {looked}). {_SOURCE}")


PAPER_GROUP_COUNTS: dict[str, tuple[int, ...]] = {  # (non-toxic, toxic) x (no identity, any of the 8 identities)
    "train": (148186, 90337, 12731, 17784),
    "val": (25159, 14966, 2111, 2944),
    "test": (74780, 43778, 6455, 8769),
}
"""Samples per group and split in the GradTune paper's Table 2 (group ids in order)."""


@register_dataset("civilcomments", paper_group_counts=PAPER_GROUP_COUNTS, aliases=("civil_comments", "civil-comments"))
def load_civilcomments(
    root: str | os.PathLike[str],
    groups: Literal["paper", "wilds"] = "paper",
) -> GroupedDataset:
    """Read WILDS CivilComments into a :class:`GroupedDataset`.

    Parameters
    ----------
    root : path
        Folder holding ``all_data_with_identities.csv``, or a parent holding
        ``civilcomments_v1.0/`` or ``civilcomments/``.
    groups : {"paper", "wilds"}, default "paper"
        ``"paper"``: the four label x any-identity groups. ``"wilds"``: the same four
        groups plus the 16 overlapping WILDS groups as a membership matrix (see the module
        docstring).

    Returns
    -------
    GroupedDataset
        ``inputs``: list of N comment strings (missing text becomes ``""``); ``labels``
        (N,) ``toxicity >= 0.5``; ``attributes`` (N,) any of the eight identities;
        ``groups`` (N,) ``2*y + s``; ``split`` (N,) 0 train / 1 val / 2 test;
        ``extra["identities"]`` (N, 8) bool and ``extra["identity_names"]``;
        ``extra["toxicity"]`` (N,) float. With ``groups="wilds"`` also
        ``extra["group_membership"]`` (N, 16) bool and ``extra["group_membership_names"]``.

    Raises
    ------
    DatasetNotFoundError
        If ``all_data_with_identities.csv`` is missing.
    ValueError
        For an unknown ``groups`` option, a missing column or an unknown split value.
    """
    if groups not in ("paper", "wilds"):
        raise ValueError(f"CivilComments: groups must be 'paper' or 'wilds', got {groups!r}.")
    path = _find_csv(Path(root).expanduser())
    header = pd.read_csv(path, nrows=0).columns
    needed = ["comment_text", "split", "toxicity", *CIVILCOMMENTS_IDENTITIES]
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(
            f"CivilComments: {path} lacks column(s) {missing}; expected WILDS v1.0's "
            f"{CSV_NAME} (with the appended LGBTQ and other_religions columns)."
        )
    # Positions, not names: the unnamed index column's name is pandas' invention.
    positions = [0, *(header.get_loc(c) for c in needed)]
    df = pd.read_csv(
        path,
        usecols=positions,
        index_col=0,
        dtype={"comment_text": str, "split": str},
        keep_default_na=False,
        na_values={c: ["", "NA", "NaN", "nan"] for c in ["toxicity", *CIVILCOMMENTS_IDENTITIES]},
    )
    split_str = df["split"].astype(str).str.strip()
    split = split_str.map(SPLIT_CODES)
    if split.isna().any():
        bad = sorted(set(split_str[split.isna()].unique()))[:5]
        raise ValueError(
            f"CivilComments: {path}: split must be one of {list(SPLIT_CODES)}; found {bad}."
        )
    toxicity = pd.to_numeric(df["toxicity"], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(toxicity).any():
        row = int(np.flatnonzero(np.isnan(toxicity))[0])
        raise ValueError(f"CivilComments: {path}: toxicity is missing or not a number at row {row}.")
    ident = np.stack(
        [
            pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64) >= 0.5
            for c in CIVILCOMMENTS_IDENTITIES
        ],
        axis=1,
    )  # NaN compares False: an unannotated identity counts as absent (as in WILDS)
    y = (toxicity >= 0.5).astype(np.int64)
    s = ident.any(axis=1).astype(np.int64)
    texts = df["comment_text"].fillna("").astype(str).tolist()
    extra: dict[str, object] = {
        "identities": ident,
        "identity_names": list(CIVILCOMMENTS_IDENTITIES),
        "toxicity": toxicity,
    }
    if groups == "wilds":
        member = np.empty((len(df), 2 * len(CIVILCOMMENTS_IDENTITIES)), dtype=bool)
        names: list[str] = []
        for k, identity in enumerate(CIVILCOMMENTS_IDENTITIES):
            for label in (0, 1):
                member[:, 2 * k + label] = ident[:, k] & (y == label)
                names.append(f"{identity},y={label}")
        extra["group_membership"] = member
        extra["group_membership_names"] = names
    return GroupedDataset(
        name="civilcomments",
        inputs=texts,
        labels=y,
        attributes=s,
        groups=2 * y + s,
        split=split.to_numpy(dtype=np.int64),
        class_names=list(CLASS_NAMES),
        attribute_names=list(ATTRIBUTE_NAMES),
        group_names=[f"{c},{a}" for c in CLASS_NAMES for a in ATTRIBUTE_NAMES],
        extra=extra,
    )
