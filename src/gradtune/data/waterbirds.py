"""Waterbirds reader (Sagawa et al., 2020): CUB birds pasted onto Places backgrounds.

On disk (the group_DRO tarball ``waterbird_complete95_forest2water2.tar.gz`` or the WILDS
``waterbirds_v1.0`` archive)::

    waterbird_complete95_forest2water2/      (or waterbirds_v1.0/)
        metadata.csv                         img_id,img_filename,y,split,place,place_filename
        001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
        ...

``y`` is 0 landbird / 1 waterbird, ``place`` 0 land / 1 water, ``split`` 0/1/2 =
train/val/test. Groups are ``2 * y + place``.

The reader only lists image paths; decoding happens elsewhere (see :func:`open_image`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from gradtune.data.base import DatasetNotFoundError, GroupedDataset
from gradtune.data.registry import register_dataset

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

__all__ = ["WATERBIRDS_FOLDERS", "find_waterbirds_dir", "load_waterbirds", "open_image"]

WATERBIRDS_FOLDERS = ("waterbird_complete95_forest2water2", "waterbirds_v1.0")
"""Top-level folder names of the group_DRO tarball and of the WILDS archive."""

_SOURCE = (
    "Waterbirds is published by Sagawa et al. (group_DRO, github.com/kohpangwei/group_DRO) as "
    "the tarball waterbird_complete95_forest2water2.tar.gz, and by WILDS as waterbirds_v1.0 "
    "(wilds.stanford.edu). Extract it and pass the extracted folder (or its parent)."
)
_COLUMNS = ("img_filename", "y", "split", "place")
CLASS_NAMES = ["landbird", "waterbird"]
ATTRIBUTE_NAMES = ["land", "water"]


def _candidate_dirs(root: Path) -> list[Path]:
    bases = [root, root / "waterbirds"]
    out: list[Path] = []
    for base in bases:
        out.append(base)
        out.extend(base / name for name in WATERBIRDS_FOLDERS)
    return out


def find_waterbirds_dir(root: str | os.PathLike[str]) -> Path:
    """Return the folder holding Waterbirds' ``metadata.csv``.

    Parameters
    ----------
    root : path
        The folder containing ``metadata.csv``, or a parent containing
        ``waterbird_complete95_forest2water2/``, ``waterbirds_v1.0/`` or ``waterbirds/``.

    Raises
    ------
    DatasetNotFoundError
        If no ``metadata.csv`` is found in any of those places.
    """
    root = Path(root).expanduser()
    candidates = _candidate_dirs(root)
    for cand in candidates:
        if (cand / "metadata.csv").is_file():
            return cand.resolve()
    looked = ", ".join(str(c / "metadata.csv") for c in candidates)
    raise DatasetNotFoundError(
        f"Waterbirds: metadata.csv not found (looked for {looked}). {_SOURCE}"
    )


PAPER_GROUP_COUNTS: dict[str, tuple[int, ...]] = {  # landbird-land, landbird-water, waterbird-land, waterbird-water
    "train": (3498, 184, 56, 1057),
    "val": (467, 466, 133, 133),
    # The paper (and DATASETS.md) print 2225/2225 here: a digit transposition. The
    # real test split has 5,794 images (2255+2255+642+642), and the three splits add
    # up to CUB's 11,788 only with 2255.
    "test": (2255, 2255, 642, 642),
}
"""Samples per group and split in the GradTune paper's Table 2 (group ids in order)."""


@register_dataset("waterbirds", paper_group_counts=PAPER_GROUP_COUNTS)
def load_waterbirds(root: str | os.PathLike[str], *, check_images: bool = True) -> GroupedDataset:
    """Read Waterbirds' ``metadata.csv`` into a :class:`GroupedDataset`.

    Parameters
    ----------
    root : path
        Folder containing ``metadata.csv`` or its parent (see :func:`find_waterbirds_dir`).
    check_images : bool, default True
        Check that the first listed image exists (catches a metadata file whose images
        were not extracted). Other images are not checked, to keep loading fast.

    Returns
    -------
    GroupedDataset
        ``inputs``: list of N absolute image paths (str); ``labels`` (N,) 0 landbird /
        1 waterbird; ``attributes`` (N,) 0 land / 1 water; ``groups`` (N,) ``2*y + place``
        (landbird,land / landbird,water / waterbird,land / waterbird,water);
        ``split`` (N,) 0/1/2; ``extra["img_id"]`` (N,) the 1-based CUB-style image id
        when the column is present.

    Raises
    ------
    DatasetNotFoundError
        If ``metadata.csv`` (or, with ``check_images``, the first image) is missing.
    ValueError
        If ``metadata.csv`` lacks a required column or holds out-of-range values.
    """
    folder = find_waterbirds_dir(root)
    meta_path = folder / "metadata.csv"
    try:
        df = pd.read_csv(meta_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"Waterbirds: cannot parse {meta_path} as CSV: {exc}") from exc
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"Waterbirds: {meta_path} lacks column(s) {missing}; found {list(df.columns)}. "
            "Expected the group_DRO/WILDS header img_id,img_filename,y,split,place,place_filename."
        )
    if len(df) == 0:
        raise ValueError(f"Waterbirds: {meta_path} has a header but no rows.")
    y = _int_column(df, "y", {0, 1}, meta_path)
    place = _int_column(df, "place", {0, 1}, meta_path)
    split = _int_column(df, "split", {0, 1, 2}, meta_path)
    names = df["img_filename"]
    if names.isna().any():
        bad = int(np.flatnonzero(names.isna().to_numpy())[0])
        raise ValueError(f"Waterbirds: {meta_path} row {bad} has an empty img_filename.")
    prefix = str(folder) + os.sep
    rel = names.astype(str).str.lstrip("/").str.replace("/", os.sep, regex=False)
    paths = (prefix + rel).tolist()
    if check_images and not os.path.isfile(paths[0]):
        raise DatasetNotFoundError(
            f"Waterbirds: {meta_path} lists {names.iloc[0]!r} but {paths[0]} does not exist: "
            f"the images were not extracted next to metadata.csv. {_SOURCE} "
            "(Pass check_images=False to list paths anyway.)"
        )
    extra: dict[str, object] = {}
    if "img_id" in df.columns:
        extra["img_id"] = pd.to_numeric(df["img_id"], errors="coerce").to_numpy()
    groups = 2 * y + place
    group_names = [f"{c},{a}" for c in CLASS_NAMES for a in ATTRIBUTE_NAMES]
    return GroupedDataset(
        name="waterbirds",
        inputs=paths,
        labels=y,
        attributes=place,
        groups=groups,
        split=split,
        class_names=list(CLASS_NAMES),
        attribute_names=list(ATTRIBUTE_NAMES),
        group_names=group_names,
        extra=extra,
    )


def _int_column(df: pd.DataFrame, col: str, allowed: set[int], path: Path) -> np.ndarray:
    """Column ``col`` as int64, checking every value is one of ``allowed``."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isin(values, sorted(allowed))
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"{path}: column {col!r} must hold only {sorted(allowed)}; "
            f"row {bad} holds {df[col].iloc[bad]!r}."
        )
    return values.astype(np.int64)


def open_image(path: str | os.PathLike[str]) -> Image:
    """Open one image file as an RGB ``PIL.Image.Image`` (needs Pillow).

    Waterbirds images are JPEGs of varying sizes; some CUB originals are grayscale or
    CMYK, hence the conversion to RGB.

    Raises
    ------
    ImportError
        If Pillow is not installed.
    FileNotFoundError
        If ``path`` does not exist.
    """
    try:
        from PIL import Image as PILImage
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "open_image needs Pillow to decode images: install it with `pip install 'gradtune[vision]'`."
        ) from exc
    with PILImage.open(path) as img:
        return img.convert("RGB")
