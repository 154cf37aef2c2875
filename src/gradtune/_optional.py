"""Optional dependencies: import one, or fail with a one-line message naming the pip extra.

The extras are declared in ``pyproject.toml``: ``report`` (matplotlib: figures of
``gradtune report`` and the demo), ``text`` (transformers: text models for ``train`` /
``embed``), ``vision`` (Pillow: image files), ``demo`` (everything the offline demo
reads), ``fast`` (numba), ``cluster`` (submitit), ``tracking`` (mlflow).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require", "install_hint"]


class MissingDependencyError(ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    """The pip line that installs gradtune's ``extra``."""
    return f"pip install 'gradtune[{extra}]'"


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError`.

    Parameters
    ----------
    module : the module to import (e.g. ``"matplotlib.pyplot"``)
    extra : the gradtune extra that provides it (e.g. ``"report"``)
    purpose : what needs it, a plural noun phrase for the message (e.g. ``"the report's figures"``)
    package : the distribution's name when it differs from the top-level module
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{name} is not installed; {purpose} need it: {install_hint(extra)}") from exc
