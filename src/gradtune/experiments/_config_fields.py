"""Field checks shared by the experiment-config readers: every error names its field.

Each helper takes ``where``, the dotted config path of the value it checks (for example
``grid.gradtune.top_k``), and raises :class:`ConfigError` with that path first.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gradtune._errors import GradTuneInputError
from gradtune._params import Param, declarations, flat_declarations

MAX_RUNS = 100_000
"""Most runs (benchmarks x seeds x variants) one config may plan; a larger grid is refused
before it is expanded, so every later check stays bounded."""


def duplicates(values: list) -> list:
    """The values that occur more than once, sorted (linear in ``len(values)``)."""
    return sorted(v for v, n in Counter(values).items() if n > 1)


def check_run_count(where: str, n: int, what: str) -> None:
    """Refuse a grid of more than :data:`MAX_RUNS` runs, naming what multiplied up."""
    if n > MAX_RUNS:
        raise ConfigError(f"{where}: the grid expands to {n} runs ({what}); at most {MAX_RUNS} are supported "
                          "per config: split it into several configs run into one --out")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
"""Experiment and benchmark names: letters, digits, '-', '_' and '.'."""


class ConfigError(GradTuneInputError):
    """A config file is malformed; the message starts with the offending field."""


@dataclass(frozen=True)
class Variant:
    """One hyperparameter setting of one method: ``params`` are dotted keys -> values."""

    method: str
    label: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "label": self.label, "params": self.params}


def type_name(v: Any) -> str:
    return repr(v) if isinstance(v, (str, int, float, bool)) else type(v).__name__


def require_table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table, got {type_name(value)}")
    return value


def check_keys(where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for k in table:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}: unknown key; allowed: {list(allowed)}" if where else
                              f"{k}: unknown section; allowed: {list(allowed)}")


def flatten(where: str, table: dict[str, Any], prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Nested tables -> {dotted key: (config path, value)}."""
    out: dict[str, tuple[str, Any]] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(f"{where}.{k}", v, f"{key}."))
        else:
            out[key] = (f"{where}.{k}", v)
    return out


def method_declarations(method: str) -> tuple[dict[str, Param], set[str]]:
    """Dotted parameter name -> declaration of a registered method (blocks expanded, e.g.
    ``finetune.lr``), and the names of its blocks (``finetune``)."""
    from gradtune.methods.base import METHODS

    cls = METHODS[method]
    blocks = {name for name, d in declarations(cls).items() if not isinstance(d, Param)}
    return flat_declarations(cls), blocks


def check_param(where: str, method: str, key: str, value: Any, *, grid: bool = False) -> Any:
    """``value`` (a list of values when ``grid``) checked against the declaration of
    ``method``'s parameter ``key``; a :class:`ConfigError` starting with ``where`` otherwise.
    A list becomes a tuple."""
    specs, blocks = method_declarations(method)
    if key in blocks:
        raise ConfigError(f"{where}: {key!r} is a group of settings; set its fields, e.g. {key}.epochs")
    if key not in specs:
        raise ConfigError(f"{where}: {key!r} is not a parameter of method {method!r}; valid: {sorted(specs)}")
    spec = specs[key]
    if grid:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: must be a non-empty list of values (one run per value), "
                              f"got {type_name(value)}")
        for i, v in enumerate(value):
            why = spec.problem(v)
            if why is not None:
                raise ConfigError(f"{where}[{i}]: {why}")
        return [tuple(v) if isinstance(v, list) else v for v in value]
    why = spec.problem(value)
    if why is not None:
        raise ConfigError(f"{where}: {why}")
    return tuple(value) if isinstance(value, list) else value


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "(" + ",".join(fmt_value(x) for x in v) + ")"
    return str(v)


# ------------------------------------------------------- seeds, methods, settings


def parse_int_list(where: str, value: Any, *, minimum: int = 0) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of integers, got {type_name(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ConfigError(f"{where}[{i}]: must be an integer >= {minimum}, got {type_name(v)}")
    dup = duplicates(value)
    if dup:
        raise ConfigError(f"{where}: values must be distinct; repeated: {dup[:10]}{' ...' if len(dup) > 10 else ''}")
    return list(value)


def parse_methods(value: Any) -> list[str]:
    from gradtune.methods.base import list_methods

    available = list_methods()
    where = "experiment.methods"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of method names; available: {available}")
    for i, m in enumerate(value):
        if not isinstance(m, str):
            raise ConfigError(f"{where}[{i}]: must be a method name (string), got {type_name(m)}")
        if m not in available:
            raise ConfigError(f"{where}[{i}]: unknown method {m!r}; available: {available}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: each method once (use [grid.METHOD] or [[variants.METHOD]] for several settings)")
    return list(value)


def parse_variants(data: dict[str, Any], methods: list[str]) -> list[Variant]:
    sections = {s: require_table(s, data.get(s, {})) for s in ("params", "grid", "variants", "labels")}
    for s, table in sections.items():
        for m in table:
            if m not in methods:
                raise ConfigError(f"{s}.{m}: not a method of this experiment; experiment.methods = {methods}")
    for m, lab in sections["labels"].items():
        if not isinstance(lab, str) or not lab.strip():
            raise ConfigError(f"labels.{m}: must be a non-empty string, got {type_name(lab)}")
    variants: list[Variant] = []
    for m in methods:
        base = {k: check_param(p, m, k, v)
                for k, (p, v) in flatten(f"params.{m}", require_table(f"params.{m}", sections["params"].get(m, {}))).items()}
        grid_flat = flatten(f"grid.{m}", require_table(f"grid.{m}", sections["grid"].get(m, {})))
        grid = {k: check_param(p, m, k, v, grid=True) for k, (p, v) in grid_flat.items()}
        raw_vars = sections["variants"].get(m, [{}])
        if not isinstance(raw_vars, list) or not raw_vars:
            raise ConfigError(f"variants.{m}: must be a non-empty list of tables ([[variants.{m}]])")
        check_run_count(f"grid.{m}", len(raw_vars) * math.prod(len(g) for g in grid.values()),
                        f"{len(raw_vars)} variant(s) x " + " x ".join(f"{len(g)} {k}" for k, g in grid.items()))
        base_label = sections["labels"].get(m, m)
        for i, var in enumerate(raw_vars):
            w = f"variants.{m}[{i}]"
            var = dict(require_table(w, var))
            explicit = var.pop("label", None)
            if explicit is not None and (not isinstance(explicit, str) or not explicit.strip()):
                raise ConfigError(f"{w}.label: must be a non-empty string")
            vparams = {k: check_param(p, m, k, v) for k, (p, v) in flatten(w, var).items()}
            for k in vparams:
                if k in grid:
                    raise ConfigError(f"{w}.{k}: also set in grid.{m}; set it in one place")
            points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())] or [{}]
            for point in points:
                params = {**base, **vparams, **point}
                shown = {**({} if explicit else vparams), **point}
                suffix = ", ".join(f"{k}={fmt_value(v)}" for k, v in shown.items())
                label = (explicit or base_label) + (f" [{suffix}]" if suffix else "")
                variants.append(Variant(m, label, params))
    check_run_count("variants", len(variants), f"{len(variants)} variants over all methods")
    dup = duplicates([v.label for v in variants])
    if dup:
        raise ConfigError(f"variants: several settings share the label(s) {dup[:10]}; give each variant a distinct "
                          "`label`")
    return variants


def validate_variant(v: Variant, where: str) -> None:
    """Check one method's merged parameters: the relations between them (``top_k <= size``)
    and whatever else its constructor refuses; a :class:`ConfigError` naming the field."""
    from gradtune.methods.tuning import build_method

    try:
        build_method(v.method, v.params)
    except (GradTuneInputError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
