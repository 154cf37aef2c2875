"""The packaged TOML files under ``gradtune/configs`` and one way to read a TOML file.

``gradtune/configs/<dataset>.toml`` hold the paper's full-network settings of each
dataset (``[model]``, ``[preprocess]``, ``[erm]`` = Table 3, ``[jtt]``, ``[group_dro]``);
``gradtune/configs/experiments/*.toml`` are the packaged experiment configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradtune._errors import GradTuneInputError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the same parser as a package
    import tomli as tomllib

__all__ = ["CONFIG_DIR", "read_toml", "run_config_path"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""Packaged per-dataset TOML files with the paper's hyperparameters."""


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    GradTuneInputError
        If it is not valid TOML.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise GradTuneInputError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def run_config_path(dataset: str) -> Path:
    """The packaged run config of ``dataset``; FileNotFoundError listing the known ones."""
    path = CONFIG_DIR / f"{dataset.lower()}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no packaged config for dataset {dataset!r} (known: {known}); pass --config FILE")
    return path
