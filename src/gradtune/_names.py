"""The built-in names the command line offers, read from the source where they are defined.

The registries that own these names (:func:`gradtune.methods.list_methods`,
:data:`gradtune.experiments.offline.OFFLINE_BENCHMARKS`, the demo's defaults) import torch
and scikit-learn; ``--help`` must not. So this module reads the names out of the
defining modules' text instead of keeping copies: a method is the ``name = "..."`` of a
class decorated with ``@register_method`` in :mod:`gradtune.methods`, an offline
benchmark the ``name="..."`` of an ``OfflineBenchmark(...)`` entry, the demo's defaults
the tuples ``DEFAULT_BENCHMARKS`` / ``DEFAULT_METHODS``, a report item the key and title of
an ``@report_item(...)`` renderer (for the config checker). Nothing is kept by hand: a test
checks that what is read equals the registries, and that ``--help`` stays fast.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

__all__ = ["METHOD_NAMES", "OFFLINE_BENCHMARK_NAMES", "DEMO_BENCHMARKS", "DEMO_METHODS", "name_list",
           "registered_method_names", "report_items"]

_PACKAGE = Path(__file__).resolve().parent

_METHOD_CLASS = re.compile(r"^@register_method\s*$", re.M)
_CLASS_NAME = re.compile(r"^class \w+.*?^    name(?:\s*:[^=\n]*)?\s*=\s*[\"']([^\"']+)[\"']", re.M | re.S)
_BENCHMARK = re.compile(r"OfflineBenchmark\(\s*name=[\"']([^\"']+)[\"']")


def registered_method_names(folder: Path = _PACKAGE / "methods") -> tuple[str, ...]:
    """The ``name`` of every ``@register_method`` class in the modules of ``folder``, sorted."""
    names: list[str] = []
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for start in (m.end() for m in _METHOD_CLASS.finditer(text)):
            found = _CLASS_NAME.search(text, start)
            if found is not None:
                names.append(found.group(1))
    return tuple(sorted(names))


def report_items() -> dict[str, str]:
    """Key -> title of every ``@report_item(key, title, ...)`` of :mod:`gradtune.report.paper_items`,
    in the report's order (read from the source: the config checker must not import pandas)."""
    tree = ast.parse((_PACKAGE / "report" / "paper_items.py").read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for node in tree.body:
        for dec in getattr(node, "decorator_list", []):
            if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id == "report_item"
                    and len(dec.args) >= 2):
                out[ast.literal_eval(dec.args[0])] = ast.literal_eval(dec.args[1])
    return out


def _offline_benchmarks() -> tuple[str, ...]:
    return tuple(_BENCHMARK.findall((_PACKAGE / "experiments" / "offline.py").read_text(encoding="utf-8")))


def _demo_default(name: str) -> tuple[str, ...]:
    text = (_PACKAGE / "workflows" / "demo.py").read_text(encoding="utf-8")
    found = re.search(rf"^{name}(?:\s*:[^=\n]*)?\s*=\s*(\([^)]*\))", text, re.M)
    if found is None:
        raise RuntimeError(f"gradtune/workflows/demo.py defines no {name}")
    return tuple(ast.literal_eval(found.group(1)))


# the built-in last-layer methods, sorted (plug-ins registered later are not listed)
METHOD_NAMES: tuple[str, ...] = registered_method_names()
# the offline benchmarks of ``gradtune demo``, in the registry's order
OFFLINE_BENCHMARK_NAMES: tuple[str, ...] = _offline_benchmarks()
# the demo's defaults (gradtune.workflows.demo.DEFAULT_BENCHMARKS / DEFAULT_METHODS)
DEMO_BENCHMARKS: tuple[str, ...] = _demo_default("DEFAULT_BENCHMARKS")
DEMO_METHODS: tuple[str, ...] = _demo_default("DEFAULT_METHODS")


def name_list(names: tuple[str, ...]) -> str:
    """``("a", "b")`` -> ``"a, b"``; for help text (argparse's ``%`` formatting is escaped)."""
    return ", ".join(names).replace("%", "%%")
