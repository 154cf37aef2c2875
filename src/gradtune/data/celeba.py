"""CelebA reader: label Blond_Hair, spurious attribute Male (Sagawa et al., 2020).

Three on-disk variants are understood:

``"official"``
    The CelebA site's text files: ``list_attr_celeba.txt`` (line 1 the image count,
    line 2 the 40 attribute names, then ``000001.jpg`` and 40 values of -1/1 per line,
    whitespace-separated) and ``list_eval_partition.txt`` (``000001.jpg 0`` per line,
    0/1/2 = train/val/test). Also found in the site's ``Anno/`` and ``Eval/`` folders.
``"kaggle"``
    Kaggle's CSVs: ``list_attr_celeba.csv`` (``image_id,5_o_Clock_Shadow,...``, -1/1)
    and ``list_eval_partition.csv`` (``image_id,partition``).
``"metadata"``
    A DFR/SELF-style ``celeba_metadata.csv`` (or ``metadata.csv``) with columns
    ``img_filename``, ``y`` (Blond_Hair 0/1), ``place`` (Male 0/1) and ``split`` 0/1/2,
    selected by name (other columns are ignored).

Images are ``img_align_celeba/000001.jpg`` ... (a Kaggle zip may nest them as
``img_align_celeba/img_align_celeba/``; the site's archive puts them in
``Img/img_align_celeba/``). Groups are ``2 * blond + male``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from gradtune.data.base import DatasetNotFoundError, GroupedDataset
from gradtune.data.registry import register_dataset
from gradtune.data.waterbirds import _int_column

__all__ = ["CELEBA_VARIANTS", "load_celeba"]

CELEBA_VARIANTS = ("auto", "official", "kaggle", "metadata")
LABEL_ATTRIBUTE = "Blond_Hair"
SPURIOUS_ATTRIBUTE = "Male"
CLASS_NAMES = ["not blond", "blond"]
ATTRIBUTE_NAMES = ["female", "male"]

_SOURCE = (
    "CelebA is published on the official site (mmlab.ie.cuhk.edu.hk/projects/CelebA.html: "
    "Img/img_align_celeba.zip, Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt) "
    "and mirrored on Kaggle (jessicali9530/celeba-dataset: img_align_celeba/, "
    "list_attr_celeba.csv, list_eval_partition.csv)."
)
_OFFICIAL = ("list_attr_celeba.txt", "list_eval_partition.txt")
_KAGGLE = ("list_attr_celeba.csv", "list_eval_partition.csv")
_METADATA = ("celeba_metadata.csv", "metadata.csv")
_META_COLUMNS = ("img_filename", "y", "place", "split")


def _base_dirs(root: Path) -> list[Path]:
    out: list[Path] = []
    for base in (root, root / "celeba", root / "CelebA", root / "celebA"):
        if base.is_dir() and base not in out:
            out.append(base)
    return out


def _find(bases: list[Path], name: str, subdirs: tuple[str, ...] = ("",)) -> Path | None:
    for base in bases:
        for sub in subdirs:
            path = base / sub / name if sub else base / name
            if path.is_file():
                return path
    return None


def _find_image_dir(base: Path) -> Path | None:
    for cand in (base / "img_align_celeba", base / "Img" / "img_align_celeba"):
        if cand.is_dir():
            nested = cand / "img_align_celeba"
            return nested if nested.is_dir() else cand
    return None


PAPER_GROUP_COUNTS: dict[str, tuple[int, ...]] = {  # not blond: female, male; blond: female, male
    "train": (71629, 66874, 22880, 1387),
    "val": (8535, 8276, 2874, 182),
    "test": (9767, 7535, 2480, 180),
}
"""Samples per group and split in the GradTune paper's Table 2 (group ids in order)."""


@register_dataset("celeba", paper_group_counts=PAPER_GROUP_COUNTS)
def load_celeba(
    root: str | os.PathLike[str],
    variant: Literal["auto", "official", "kaggle", "metadata"] = "auto",
    *,
    check_images: bool = True,
) -> GroupedDataset:
    """Read CelebA (Blond_Hair vs Male) into a :class:`GroupedDataset`.

    Parameters
    ----------
    root : path
        Folder holding the annotation files and ``img_align_celeba/`` (or a parent with a
        ``celeba/`` or ``CelebA/`` subfolder).
    variant : {"auto", "official", "kaggle", "metadata"}, default "auto"
        Which annotation files to read (see the module docstring). ``"auto"`` tries
        official, then Kaggle, then metadata.
    check_images : bool, default True
        Check that the image folder and its first listed image exist.

    Returns
    -------
    GroupedDataset
        ``inputs``: list of N absolute image paths (str); ``labels`` (N,) Blond_Hair 0/1;
        ``attributes`` (N,) Male 0/1; ``groups`` (N,) ``2*blond + male`` (not blond,female /
        not blond,male / blond,female / blond,male); ``split`` (N,) 0/1/2;
        ``extra["variant"]`` the variant read.

    Raises
    ------
    DatasetNotFoundError
        If the annotation files of the requested variant (or, with ``check_images``, the
        images) are missing.
    ValueError
        For an unknown ``variant`` or a malformed annotation file.
    """
    if variant not in CELEBA_VARIANTS:
        raise ValueError(f"CelebA: unknown variant {variant!r}; use one of {CELEBA_VARIANTS}.")
    root = Path(root).expanduser()
    bases = _base_dirs(root)
    official = [_find(bases, n, ("", "Anno", "Eval")) for n in _OFFICIAL]
    kaggle = [_find(bases, n) for n in _KAGGLE]
    meta = next((p for p in (_find(bases, n) for n in _METADATA) if p is not None), None)

    chosen = variant
    if variant == "auto":
        if all(p is not None for p in official):
            chosen = "official"
        elif all(p is not None for p in kaggle):
            chosen = "kaggle"
        elif meta is not None:
            chosen = "metadata"
        else:
            raise DatasetNotFoundError(
                f"CelebA: no annotation files found under {root}. Expected one of: "
                f"{' + '.join(_OFFICIAL)} (official), {' + '.join(_KAGGLE)} (Kaggle), or "
                f"{' / '.join(_METADATA)} with columns {', '.join(_META_COLUMNS)}; "
                f"plus the images in img_align_celeba/. {_SOURCE}"
            )

    if chosen == "official":
        attr_path, part_path = _require(official, _OFFICIAL, root)
        filenames, blond, male = _read_official_attrs(attr_path)
        split = _read_partition(part_path, filenames, csv=False)
        base = attr_path.parent
    elif chosen == "kaggle":
        attr_path, part_path = _require(kaggle, _KAGGLE, root)
        filenames, blond, male = _read_kaggle_attrs(attr_path)
        split = _read_partition(part_path, filenames, csv=True)
        base = attr_path.parent
    else:
        if meta is None:
            _require([None], (" or ".join(_METADATA),), root)
        assert meta is not None
        filenames, blond, male, split = _read_metadata(meta)
        base = meta.parent

    # The site's layout keeps annotations in Anno/ and Eval/ beside Img/.
    image_dir = _find_image_dir(base)
    if image_dir is None and base.name in ("Anno", "Eval"):
        image_dir = _find_image_dir(base.parent)
    if image_dir is None:
        image_dir = base / "img_align_celeba"
        if check_images:
            raise DatasetNotFoundError(
                f"CelebA: image folder img_align_celeba/ not found beside {base} "
                f"(nor Img/img_align_celeba/). {_SOURCE} "
                "(Pass check_images=False to list paths anyway.)"
            )
    prefix = str(image_dir.resolve()) + os.sep
    # CelebA file names are flat, so only the base name matters (metadata files may
    # carry an ``img_align_celeba/`` prefix).
    paths = (prefix + filenames.str.rsplit("/", n=1).str[-1]).tolist()
    if check_images and not os.path.isfile(paths[0]):
        raise DatasetNotFoundError(
            f"CelebA: image {paths[0]} not found: img_align_celeba/ is empty or incomplete. "
            f"{_SOURCE} (Pass check_images=False to list paths anyway.)"
        )
    return GroupedDataset(
        name="celeba",
        inputs=paths,
        labels=blond,
        attributes=male,
        groups=2 * blond + male,
        split=split,
        class_names=list(CLASS_NAMES),
        attribute_names=list(ATTRIBUTE_NAMES),
        group_names=[f"{c},{a}" for c in CLASS_NAMES for a in ATTRIBUTE_NAMES],
        extra={"variant": chosen},
    )


def _require(paths: list[Path | None], names: tuple[str, ...], root: Path) -> list[Path]:
    missing = [n for p, n in zip(paths, names, strict=True) if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"CelebA: {', '.join(missing)} not found under {root} "
            f"(also looked in celeba/, CelebA/, Anno/, Eval/). {_SOURCE}"
        )
    return [p for p in paths if p is not None]


def _pm1_to_01(values: pd.Series, name: str, path: Path) -> np.ndarray:
    arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    ok = (arr == 1) | (arr == -1)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"CelebA: {path}: attribute {name} must be -1 or 1; row {bad} holds "
            f"{values.iloc[bad]!r}."
        )
    return (arr > 0).astype(np.int64)


def _read_official_attrs(path: Path) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Parse ``list_attr_celeba.txt``: count line, names line, then filename + 40 values."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        count_line = fh.readline().strip()
        names = fh.readline().split()
    try:
        expected = int(count_line)
    except ValueError:
        raise ValueError(
            f"CelebA: {path}: line 1 should be the image count, found {count_line[:60]!r}. "
            "Is this the official list_attr_celeba.txt (the Kaggle CSV is list_attr_celeba.csv)?"
        ) from None
    for attr in (LABEL_ATTRIBUTE, SPURIOUS_ATTRIBUTE):
        if attr not in names:
            raise ValueError(
                f"CelebA: {path}: line 2 should name the 40 attributes including {attr}; "
                f"found {names[:5]}..."
            )
    # Line 2 has no filename column: data column k+1 holds attribute names[k].
    cols = [0, names.index(LABEL_ATTRIBUTE) + 1, names.index(SPURIOUS_ATTRIBUTE) + 1]
    df = pd.read_csv(
        path, sep=r"\s+", skiprows=2, header=None, usecols=cols, dtype={0: str},
        engine="c",
    )
    if len(df) != expected:
        raise ValueError(
            f"CelebA: {path}: line 1 announces {expected} images but {len(df)} rows were read; "
            "the file is truncated or malformed."
        )
    filenames = df[0].astype(str)
    blond = _pm1_to_01(df[cols[1]], LABEL_ATTRIBUTE, path)
    male = _pm1_to_01(df[cols[2]], SPURIOUS_ATTRIBUTE, path)
    return filenames, blond, male


def _read_kaggle_attrs(path: Path) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Parse Kaggle's ``list_attr_celeba.csv`` (header ``image_id,5_o_Clock_Shadow,...``)."""
    header = pd.read_csv(path, nrows=0).columns
    needed = ["image_id", LABEL_ATTRIBUTE, SPURIOUS_ATTRIBUTE]
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(
            f"CelebA: {path} lacks column(s) {missing}; expected Kaggle's header "
            "image_id,5_o_Clock_Shadow,...,Young."
        )
    df = pd.read_csv(path, usecols=needed, dtype={"image_id": str})
    return (
        df["image_id"].astype(str),
        _pm1_to_01(df[LABEL_ATTRIBUTE], LABEL_ATTRIBUTE, path),
        _pm1_to_01(df[SPURIOUS_ATTRIBUTE], SPURIOUS_ATTRIBUTE, path),
    )


def _read_partition(path: Path, filenames: pd.Series, *, csv: bool) -> np.ndarray:
    """Split codes (0/1/2) for ``filenames``, read from the partition file."""
    if csv:
        part = pd.read_csv(path, dtype={"image_id": str})
        if list(part.columns[:2]) != ["image_id", "partition"]:
            raise ValueError(
                f"CelebA: {path}: expected header image_id,partition, found {list(part.columns)}."
            )
    else:
        part = pd.read_csv(path, sep=r"\s+", header=None, names=["image_id", "partition"],
                           dtype={"image_id": str})
    codes = _int_column(part, "partition", {0, 1, 2}, path)
    ids = part["image_id"].astype(str)
    if len(ids) == len(filenames) and (ids.to_numpy() == filenames.to_numpy()).all():
        return codes  # the usual case: both files in the same order
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise ValueError(f"CelebA: {path} lists {dup!r} more than once.")
    lookup = pd.Series(codes, index=ids.to_numpy())
    aligned = lookup.reindex(filenames.to_numpy())
    if aligned.isna().any():
        miss = filenames.iloc[int(np.flatnonzero(aligned.isna().to_numpy())[0])]
        n_miss = int(aligned.isna().sum())
        raise ValueError(
            f"CelebA: {path} gives no split for {n_miss} image(s) of the attribute file, "
            f"e.g. {miss!r}; the two files do not belong together."
        )
    return aligned.to_numpy(dtype=np.int64)


def _read_metadata(path: Path) -> tuple[pd.Series, np.ndarray, np.ndarray, np.ndarray]:
    """Parse a DFR/SELF-style metadata CSV, selecting columns by name."""
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in _META_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"CelebA: {path} lacks column(s) {missing}; a CelebA metadata CSV needs "
            f"{', '.join(_META_COLUMNS)} (y = Blond_Hair 0/1, place = Male 0/1, split 0/1/2). "
            f"Found {list(header)}."
        )
    df = pd.read_csv(path, usecols=list(_META_COLUMNS), dtype={"img_filename": str})
    if df["img_filename"].isna().any():
        raise ValueError(f"CelebA: {path} has an empty img_filename.")
    return (
        df["img_filename"].astype(str),
        _int_column(df, "y", {0, 1}, path),
        _int_column(df, "place", {0, 1}, path),
        _int_column(df, "split", {0, 1, 2}, path),
    )
