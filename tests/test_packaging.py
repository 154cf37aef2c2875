"""Packaging: declared dependencies and extras, what the sdist carries, and the one-line
message for a missing optional dependency. (.ci/wheel-smoke installs the built wheel in a
fresh venv and runs every command; these tests need no network.)"""

from __future__ import annotations

import ast
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from gradtune._optional import MissingDependencyError, require

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _require_calls() -> list[tuple[str, str, str]]:
    """(file, module, extra) of every ``require(...)`` call in the package, read with ast."""
    out = []
    for path in (ROOT / "src" / "gradtune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                kw = {k.arg: k.value for k in node.keywords}
                out.append((path.name, node.args[0].value, kw["extra"].value))
    return out


def test_tomli_is_declared_for_python_310() -> None:
    deps = _pyproject()["project"]["dependencies"]
    assert any(d.startswith("tomli") and "python_version < '3.11'" in d for d in deps)


def test_every_required_extra_is_declared_and_brings_the_module() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    calls = _require_calls()
    assert {(m, e) for _, m, e in calls} >= {("matplotlib", "report"), ("transformers", "text")}
    for file, module, extra in calls:
        assert extra in extras, f"{file}: require({module!r}) names undeclared extra {extra!r}"
        dist = module.split(".")[0]
        assert any(req.lower().startswith(dist) for req in extras[extra]), (file, module, extra)
    # the demo extra is a superset of what report needs
    assert set(extras["report"]) <= set(extras["demo"])


def test_require_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingDependencyError, match=r"^matplotlib is not installed; .*pip install 'gradtune\[report\]'$"):
        require("matplotlib", extra="report", purpose="the report's figures")
    from gradtune.report import figures

    with pytest.raises(MissingDependencyError, match=r"gradtune\[report\]"):
        figures._plt()
    assert require("json", extra="none", purpose="x").dumps([1]) == "[1]"


def test_cli_prints_a_missing_extra_as_one_line(monkeypatch, capsys) -> None:
    from gradtune import cli
    from gradtune.commands import report

    def needs_matplotlib(_args):
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        require("matplotlib", extra="report", purpose="the report's figures")

    monkeypatch.setattr(report, "run", needs_matplotlib)
    assert cli.main(["report", "somewhere", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gradtune report: error:" in err and "gradtune[report]" in err


def test_sdist_carries_the_tests_and_the_docs(tmp_path, monkeypatch) -> None:
    """Build the sdist in-process (no isolation, no network) from a copy of the tree."""
    build_meta = pytest.importorskip("setuptools.build_meta", reason="setuptools builds the sdist")
    src = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".venv", "build", "dist",
                                    ".git", "*.nbi", "*.nbc", ".ruff_cache", ".pytest_cache")
    shutil.copytree(ROOT, src, ignore=ignore)
    monkeypatch.chdir(src)
    name = build_meta.build_sdist(str(tmp_path / "dist"))
    with tarfile.open(tmp_path / "dist" / name) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
             if "__pycache__" not in p.parts}
    assert tests and tests <= names
    docs = {"README.md", "LICENSE", "Makefile", "docs/label-free.md", "docs/gradtune-select.md",
            "benchmarks/cli_startup.py", ".ci/run", ".ci/wheel-smoke"}
    assert docs <= names
    assert not any(n.endswith((".pyc", ".nbi", ".nbc")) for n in names)
    # every doc the README links to is in the sdist
    import re

    links = set(re.findall(r"\]\(((?:docs|benchmarks|scripts)/[^)#]+)\)", (ROOT / "README.md").read_text()))
    assert links and links <= names, links - names
    # and the wheel installs the docs the demo's report and the README name
    data_files = _pyproject()["tool"]["setuptools"]["data-files"]["share/doc/gradtune"]
    assert "docs/label-free.md" in data_files
