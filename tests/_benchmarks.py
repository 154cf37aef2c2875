"""Load a script of benchmarks/ as a module for its tests (the folder is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def benchmark_module(name: str) -> Iterator[ModuleType]:
    """Yield ``benchmarks/<name>.py`` loaded under the name ``<name>_bench``, with benchmarks/
    on the import path while it is used (the scripts import each other)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
