"""The version has one source, pyproject.toml; gradtune.__version__ reads it back."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import gradtune

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_is_the_distributions_and_written_once() -> None:
    assert gradtune.__version__ == importlib.metadata.version("gradtune") == _pyproject_version()
    source = (ROOT / "src" / "gradtune" / "__init__.py").read_text()
    assert not re.search(r"""^__version__\s*=\s*["']""", source, re.MULTILINE)


def test_uninstalled_source_tree_reads_pyproject(monkeypatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert gradtune._read_version() == _pyproject_version()
