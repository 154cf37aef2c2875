"""The packaged TOML files under ``gradtune/configs`` and one way to read a TOML file.

``gradtune/configs/<dataset>.toml`` hold the paper's full-network settings of each
dataset (``[model]``, ``[preprocess]``, ``[erm]`` = Table 3, ``[jtt]``, ``[group_dro]``);
``gradtune/configs/experiments/*.toml`` are the packaged experiment configs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from gradtune._errors import GradTuneInputError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the same parser as a package
    import tomli as tomllib

__all__ = ["CONFIG_DIR", "read_toml", "run_config_path", "read_config_text", "parse_toml", "CONFIG_SIZE_LIMIT"]

CONFIG_SIZE_LIMIT = 64 << 20
"""Largest config file (bytes) read."""

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""Packaged per-dataset TOML files with the paper's hyperparameters."""


def read_config_text(path: str | Path) -> str:
    """The text of a config file: only a regular file (a FIFO is never waited on), at most
    :data:`CONFIG_SIZE_LIMIT` bytes, UTF-8; each refusal names the file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {str(path)!r} does not exist") from None
    except OSError as err:
        raise GradTuneInputError(f"cannot read config file {str(path)!r}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise GradTuneInputError(f"config file {str(path)!r} is not a regular file")
        if st.st_size > CONFIG_SIZE_LIMIT:
            raise GradTuneInputError(f"config file {str(path)!r} holds {st.st_size} bytes; at most "
                                     f"{CONFIG_SIZE_LIMIT} are read")
        raw = fh.read(CONFIG_SIZE_LIMIT + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GradTuneInputError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start}: "
                                 f"{raw[err.start:err.start + 1]!r}); save it as UTF-8") from None


def parse_toml(text: str, path: str | Path) -> dict[str, Any]:
    """Parse TOML ``text`` read from ``path`` (named in every error)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise GradTuneInputError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    except RecursionError:
        raise GradTuneInputError(f"config file {str(path)!r} is nested too deeply to read (keep tables and "
                                 "arrays under 100 levels)") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    GradTuneInputError
        If it is not valid TOML (or not UTF-8, not a regular file, too large or nested too deeply).
    """
    return parse_toml(read_config_text(path), path)


def run_config_path(dataset: str) -> Path:
    """The packaged run config of ``dataset``; FileNotFoundError listing the known ones."""
    path = CONFIG_DIR / f"{dataset.lower()}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no packaged config for dataset {dataset!r} (known: {known}); pass --config FILE")
    return path
