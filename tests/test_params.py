"""The method contract: every hyperparameter declared once, as data, and checked at every door.

The invalid values are generated from the declarations (as scikit-learn's common tests
generate them from ``_parameter_constraints``): a wrong type, each bound crossed, a value
outside the choices, an empty list where one is required, and each ``at_most`` relation
broken. Every one must be refused by the Python constructor, by ``gradtune run --dry-run``
and by ``gradtune tune``, with exit code 2, one line naming the field, and nothing written.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gradtune
from gradtune import cli
from gradtune._errors import GradTuneInputError
from gradtune._params import NOTHING, Param, declarations, flat_declarations, invalid_values
from gradtune.commands.tune import EXAMPLE
from gradtune.finetune.linear import FinetuneConfig
from gradtune.groups.xrm import XRMConfig
from gradtune.methods import METHODS, get_method, list_methods
from gradtune.methods.tuning import build_method
from gradtune.training.config import TrainConfig
from gradtune.workflows.network_methods import NETWORK_METHODS, get_network_method

SRC = Path(gradtune.__file__).resolve().parent

#: The paper's defaults (M'=500, k=400, vision lr 3e-3, text lr 1e-5, 500 epochs) and the
#: XRM twins' 2000 steps: each must be written once in src/gradtune, in its declaration.
PAPER_LITERALS = (400, 500, 3e-3, 1e-5, 2000)


def _declared_classes() -> list[type]:
    return ([METHODS[m] for m in list_methods()] + [FinetuneConfig, XRMConfig, TrainConfig]
            + list(NETWORK_METHODS.values()))


def _bad_cases(method: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every value the method's declarations forbid, relations included."""
    specs = flat_declarations(METHODS[method])
    for key, spec in specs.items():
        for value in invalid_values(spec):
            yield key, value
        if spec.at_most is not None:
            prefix = key.rpartition(".")[0]
            other = specs[f"{prefix}.{spec.at_most}" if prefix else spec.at_most]
            yield key, other.default + 1


def test_every_field_of_every_method_is_declared_with_a_doc_line():
    for cls in _declared_classes():
        specs = declarations(cls)
        loose = [f.name for f in dataclasses.fields(cls) if f.name not in specs]
        assert not loose, f"{cls.__name__}: undeclared fields {loose}"
        for name, p in flat_declarations(cls).items():
            assert p.doc.strip() and "\n" not in p.doc, f"{cls.__name__}.{name}: give a one-line doc"
            assert p.problem(p.default) is None, f"{cls.__name__}.{name}: the default breaks its declaration"
            if p.text is not NOTHING:
                assert p.problem(p.text) is None, f"{cls.__name__}.{name}: the text default breaks its declaration"
            for v in p.space or ():
                assert p.problem(v) is None, f"{cls.__name__}.{name}: search-space value {v!r} is forbidden"


def test_each_methods_docstring_lists_its_declared_parameters():
    for method in list_methods():
        doc = METHODS[method].__doc__ or ""
        for key, p in flat_declarations(METHODS[method]).items():
            assert f"    {key} : " in doc and f"default={p.default!r}" in doc and p.doc in doc, (method, key)


def test_the_generator_finds_invalid_values_for_every_declared_parameter():
    # the door tests below are only as strong as the generated values: each declared value
    # must get at least one, and none of them may be allowed by its own declaration
    for method in list_methods():
        specs = flat_declarations(METHODS[method])
        for key, spec in specs.items():
            values = list(invalid_values(spec))
            assert values, f"{method}.{key}: no invalid value generated"
            assert all(spec.problem(v) is not None for v in values), f"{method}.{key}: {values}"


def _paper_names() -> dict[str, set[float]]:
    """Parameter name -> the paper literals its declarations hold (as default or text value)."""
    out: dict[str, set[float]] = {}
    for cls in _declared_classes():
        for key, p in flat_declarations(cls).items():
            for v in (p.default, p.text):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v in PAPER_LITERALS:
                    out.setdefault(key.rpartition(".")[2], set()).add(v)
    # gradtune-auto's xrm_steps is XRMConfig.n_steps under another name
    return out


def _named_literals(tree: ast.AST) -> Iterator[tuple[str, Any, int]]:
    """``(name, literal, line)`` for every number written beside a name in code: ``name = 5``,
    ``name: int = 5``, ``f(name=5)``, ``def f(name=5)``, ``{"name": 5}`` (docstrings are not code)."""
    def const(node: ast.AST | None) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id, const(node.value), node.lineno
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, (ast.Name, ast.Attribute)):
                    yield (t.id if isinstance(t, ast.Name) else t.attr), const(node.value), node.lineno
        elif isinstance(node, ast.keyword) and node.arg:
            yield node.arg, const(node.value), node.value.lineno
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            for arg, default in zip(positional[len(positional) - len(a.defaults):], a.defaults, strict=True):
                yield arg.arg, const(default), node.lineno
            for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                yield arg.arg, const(default), node.lineno
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    yield k.value, const(v), k.lineno


def _stray(names: dict[str, set[float]], tree: ast.AST) -> Iterator[tuple[str, Any, int]]:
    """The named literals of ``tree`` that copy a paper default: the name is a declared
    parameter's (``size``), or a module constant ending with it (``PAPER_SIZE``), the value
    one of its literals."""
    for name, value, line in _named_literals(tree):
        low = name.lower()
        hits = [p for p in names if low == p or (name.isupper() and low.endswith("_" + p))]
        if value is not None and any(value in names[p] for p in hits):
            yield name, value, line


def test_the_papers_defaults_are_written_once_in_their_declarations():
    names = _paper_names()
    assert {"size", "top_k", "lr", "epochs", "n_steps"} <= set(names), names
    stray = [f"{path.relative_to(SRC.parent)}:{line}: {name} = {value}"
             for path in sorted(SRC.rglob("*.py"))
             for name, value, line in _stray(names, ast.parse(path.read_text(), filename=str(path)))]
    assert not stray, "the paper's defaults copied beside their names (read them from the declaration):\n" + \
        "\n".join(stray)


def test_the_literal_search_finds_a_copy():
    # the search above must see each form it claims to look for, and nothing else
    code = ("size = 500\ntop_k: int = 400\nf(lr=3e-3)\ndef g(epochs=500): pass\n"
            "d = {'lr': 1e-5}\nclass A:\n    n_steps: int = 2000\nPAPER_SIZE = 500\n"
            "size = 20\nmax_size = 500\nx = param(500, 'doc')\n'size=500 in a docstring'\n")
    found = {(n, v) for n, v, _ in _stray(_paper_names(), ast.parse(code))}
    assert found == {("size", 500), ("top_k", 400), ("lr", 3e-3), ("epochs", 500), ("lr", 1e-5),
                     ("n_steps", 2000), ("PAPER_SIZE", 500)}


def test_shared_blocks_are_declared_once():
    auto = flat_declarations(METHODS["gradtune-auto"])
    xrm_steps = auto["xrm_steps"]
    assert isinstance(xrm_steps, Param) and xrm_steps.default == XRMConfig().n_steps
    # size / top_k are one declaration for every method and entry point that has them
    from gradtune.selection.select import SIZE, TOP_K
    for m in ("gradtune", "gradtune-select", "gradtune-auto", "loss-topk"):
        specs = flat_declarations(METHODS[m])
        assert specs["size"] == SIZE and specs["top_k"] == TOP_K
    assert flat_declarations(METHODS["random"])["size"].default == SIZE.default
    # the fine-tuning optimizer is one block, nested
    for m in ("gradtune", "jtt", "suby", "gradtune-auto", "gradtune-select"):
        specs = flat_declarations(METHODS[m])
        assert {f"finetune.{k}" for k in flat_declarations(FinetuneConfig)} <= set(specs)


@pytest.mark.parametrize("method", list_methods())
def test_the_python_door_refuses_every_forbidden_value(method):
    for key, value in _bad_cases(method):
        with pytest.raises(GradTuneInputError) as err:
            build_method(method, {key: value})
        assert key in str(err.value), (key, value, str(err.value))
        if "." not in key:
            with pytest.raises(GradTuneInputError):
                get_method(method, **{key: value})


def _toml_value(v: Any) -> str:
    return json.dumps(list(v) if isinstance(v, tuple) else v)


@pytest.mark.parametrize("method", list_methods())
def test_run_dry_run_refuses_every_forbidden_value_with_one_line(method, tmp_path, capsys):
    out = tmp_path / "results"
    for i, (key, value) in enumerate(_bad_cases(method)):
        config = tmp_path / f"c{i}.toml"
        config.write_text(f'[experiment]\nbenchmarks = ["bundle:{EXAMPLE.as_posix()}"]\nseeds = [0]\n'
                          f'methods = ["{method}"]\n[params.{method}]\n"{key}" = {_toml_value(value)}\n')
        code = cli.main(["run", str(config), "--out", str(out), "--dry-run"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("gradtune run: error:")]
        assert code == 2 and len(lines) == 1, (key, value, err)
        assert key.rpartition(".")[2] in lines[0], (key, value, lines[0])
        assert not out.exists()


@pytest.mark.parametrize("method", list_methods())
def test_tune_refuses_every_forbidden_value_before_writing(method, tmp_path, capsys):
    out = tmp_path / "out"
    for key, value in _bad_cases(method):
        code = cli.main(["tune", "--embeddings", "example", "--out", str(out), "--method", method,
                         "--param", f"{key}={value!r}"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("gradtune tune: error:")]
        assert code == 2 and len(lines) == 1, (key, value, err)
        assert key in lines[0], (key, value, lines[0])
        assert not out.exists()


@pytest.mark.parametrize("method", list(NETWORK_METHODS))
def test_gradtune_train_refuses_every_forbidden_value_before_loading(method, tmp_path, capsys):
    out = tmp_path / "out"
    specs = flat_declarations(NETWORK_METHODS[method])
    cases = [(key, value) for key, spec in specs.items() for value in invalid_values(spec)]
    assert bool(cases) == bool(specs)
    for key, value in cases:
        with pytest.raises(GradTuneInputError, match=key):
            get_network_method(method, {key: value})
        code = cli.main(["train", "--dataset", "waterbirds", "--root", str(tmp_path / "no-data"), "--out", str(out),
                         "--method", method, "--param", f"{key}={value!r}"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("gradtune train: error:")]
        assert code == 2 and len(lines) == 1 and key in lines[0], (key, value, err)
        assert not out.exists()


def test_gradtune_train_refuses_another_methods_flag(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "waterbirds", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--method", "jtt", "--dro-adj", "2"])
    assert code == 2 and "--dro-adj sets adj of method 'group-dro'; --method is 'jtt'" in capsys.readouterr().err
    code = cli.main(["train", "--dataset", "waterbirds", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--method", "jtt", "--jtt-lambda", "0"])
    assert code == 2 and "--jtt-lambda: upweight must be > 0, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
