"""Experiment configs: benchmarks x seeds x methods x hyperparameter grids, from TOML (or YAML).

A config is read once, checked field by field, and turned into the list of runs
(:class:`~gradtune.experiments.runner.RunSpec`) that :func:`gradtune.experiments.runner.run_experiment`
executes. Every error names the field, e.g.
``experiment.methods[2]: unknown method 'gradtun'; available: [...]`` or
``grid.gradtune.top_k: must be a list of integers, got 'x'``.

Layout (TOML)::

    [experiment]
    name = "offline-ablation-k"          # default: the file's stem
    description = "..."
    benchmarks = ["fmnist-spurious", "adult", "bundle:bundles/waterbirds-seed{seed}.npz"]
    seeds = [0, 1, 2]
    methods = ["erm", "gradtune"]
    cache_dir = "~/.cache/gradtune"       # optional: offline benchmarks' cache

    [params.gradtune]                    # fixed overrides of one method (nested tables or
    finetune = { epochs = 500 }          # "finetune.epochs" keys both work)

    [grid.gradtune]                      # cartesian product of lists
    top_k = [5, 50, 100]

    [[variants.gradtune]]                # explicit combinations (crossed with the grid);
    size = 20                            # an optional `label` names the row
    top_k = 16

    [labels]                             # display names (default: the registry name,
    gradtune = "GradTune"                # plus "[key=value, ...]" for grid/variant keys)

    [report]
    title = "..."
    tables = ["table6", "fig5"]          # what this experiment is for (see REPORT_ITEMS)
    notes = ["a line for the report"]

    [launcher]
    workers = 2                          # parallel worker processes (local launcher)
    kind = "local"                       # or "submitit"
    start_method = "spawn"               # local workers: spawn (default), forkserver or fork
    [launcher.submitit]                  # passed to submitit's update_parameters, plus
    cluster = "slurm"                    # `cluster` (slurm/local/debug) and `tasks_per_job`
    timeout_min = 60

Benchmarks are offline names (:data:`gradtune.experiments.offline.OFFLINE_BENCHMARKS`),
``"bundle:PATH"`` for an embedding bundle written by ``gradtune embed`` (``{seed}`` in the
path selects one bundle per seed; ``$VARS`` are expanded; relative paths are relative to
the config file), or a table ``{name = "celeba", bundle = "PATH", params = {gradtune =
{finetune = {batch_size = 100}}}}`` whose ``params`` set per-method values for that
benchmark only (the paper's per-dataset settings, Table 3). Precedence, last wins:
benchmark params, ``[params.METHOD]``, the variant, the grid point.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from gradtune._validation import GradTuneInputError

__all__ = ["ConfigError", "ExperimentConfig", "BenchmarkSpec", "Variant", "ReportOptions", "LauncherOptions",
           "load_config", "parse_config", "find_config", "packaged_configs", "REPORT_ITEMS", "CONFIG_DIR"]

#: Tables and figures a config can ask the report for (the paper's numbering).
REPORT_ITEMS: dict[str, str] = {
    "table1": "Table 1: methods x benchmarks, average and worst-group accuracy",
    "table4": "Table 4: class-balanced vs class-imbalanced (uniform) fine-tuning",
    "table5": "Table 5: fine-tuning vs retraining (reset) the last layer",
    "table6": "Table 6: sweep over top-k, with the worst group named",
    "table7": "Table 7: per-group accuracy before (ERM) and after GradTune",
    "fig2": "Figure 2: held-out gradient-norm distributions per group",
    "fig3": "Figure 3: worst-group accuracy vs fine-tuning set size M'",
    "fig4": "Figure 4: mean held-out gradient norm per group, mean +- std over seeds",
    "fig5": "Figure 5: average and worst-group accuracy vs k",
}

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "experiments"
_SECTIONS = ("experiment", "params", "grid", "variants", "labels", "report", "launcher")
_EXPERIMENT_KEYS = ("name", "description", "benchmarks", "seeds", "methods", "cache_dir")
_REPORT_KEYS = ("title", "tables", "notes", "method", "baseline")
_LAUNCHER_KEYS = ("workers", "kind", "start_method", "submitit")
_LAUNCHERS = ("local", "submitit")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ConfigError(GradTuneInputError):
    """A config file is malformed; the message starts with the offending field."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark of an experiment.

    name : str, display name (offline name, or the bundle file's stem without ``-seed{seed}``)
    kind : {'offline', 'bundle'}
    path : str or None, bundle path template (``{seed}`` allowed), absolute, vars expanded
    params : dict method -> {dotted key: value}, per-benchmark method settings
    """

    name: str
    kind: str
    path: str | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def bundle_path(self, seed: int) -> Path:
        if self.path is None:
            raise GradTuneInputError(f"benchmark {self.name!r} is not a bundle file")
        return Path(self.path.replace("{seed}", str(int(seed))))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": self.path, "params": self.params}


@dataclass(frozen=True)
class Variant:
    """One hyperparameter setting of one method: ``params`` are dotted keys -> values."""

    method: str
    label: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "label": self.label, "params": self.params}


@dataclass(frozen=True)
class ReportOptions:
    """What the report makes of this experiment.

    title : str or None
    tables : tuple of names from :data:`REPORT_ITEMS`
    notes : tuple of str, lines the report prints with the experiment
    method : str, default='gradtune', the method whose ablations are tabulated
    baseline : str, default='erm', the reference row / line
    """

    title: str | None = None
    tables: tuple[str, ...] = ("table1",)
    notes: tuple[str, ...] = ()
    method: str = "gradtune"
    baseline: str = "erm"

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "tables": list(self.tables), "notes": list(self.notes),
                "method": self.method, "baseline": self.baseline}


@dataclass(frozen=True)
class LauncherOptions:
    """How runs execute: ``workers`` local processes (started by ``start_method``), or
    submitit jobs (``submitit`` options)."""

    workers: int = 1
    kind: str = "local"
    submitit: dict[str, Any] = field(default_factory=dict)
    start_method: str = "spawn"

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "kind": self.kind, "start_method": self.start_method,
                "submitit": dict(self.submitit)}


@dataclass
class ExperimentConfig:
    """A validated experiment; :meth:`run_specs` lists its runs in order."""

    name: str
    benchmarks: list[BenchmarkSpec]
    seeds: list[int]
    methods: list[str]
    variants: list[Variant]
    description: str = ""
    report: ReportOptions = field(default_factory=ReportOptions)
    launcher: LauncherOptions = field(default_factory=LauncherOptions)
    cache_dir: Path | None = None
    path: Path | None = None

    def run_specs(self) -> list:
        """Every run: benchmark (outer) x seed x variant (inner), with merged parameters."""
        from gradtune.experiments.runner import RunSpec

        specs = []
        for b in self.benchmarks:
            for s in self.seeds:
                for v in self.variants:
                    merged = {**b.params.get(v.method, {}), **v.params}
                    specs.append(RunSpec(b.name, s, v.method, tuple(sorted(merged.items())), v.label))
        return specs

    def benchmark(self, name: str) -> BenchmarkSpec:
        for b in self.benchmarks:
            if b.name == name:
                return b
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as JSON-friendly data (stored with the results)."""
        return {"name": self.name, "description": self.description,
                "benchmarks": [b.to_dict() for b in self.benchmarks], "seeds": list(self.seeds),
                "methods": list(self.methods), "variants": [v.to_dict() for v in self.variants],
                "report": self.report.to_dict(), "launcher": self.launcher.to_dict(),
                "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
                "path": None if self.path is None else str(self.path)}


# ---------------------------------------------------------------- file handling


def packaged_configs() -> dict[str, Path]:
    """The ready-made configs shipped with gradtune: stem -> path."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.toml"))}


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file from a path, or from the name of a packaged config (``offline-table1``)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    packaged = packaged_configs()
    key = str(name_or_path)[:-5] if str(name_or_path).endswith(".toml") else str(name_or_path)
    if key in packaged:
        return packaged[key]
    raise FileNotFoundError(f"no config file {str(name_or_path)!r}; packaged configs: {sorted(packaged)}")


def _read(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or write TOML") from None
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, *, check_paths: bool = True) -> ExperimentConfig:
    """Read and validate a config file (TOML; YAML when PyYAML is installed).

    Parameters
    ----------
    path : str or PathLike
        A file, or the name of a packaged config (see :func:`packaged_configs`).
    check_paths : bool, default=True
        Require every ``bundle:`` file (each seed) to exist.

    Raises
    ------
    ConfigError
        With the offending field first, e.g. ``experiment.seeds[1]: must be an integer >= 0``.
    """
    p = find_config(path)
    try:
        return parse_config(_read(p), base_dir=p.parent, default_name=p.stem, check_paths=check_paths, path=p)
    except ConfigError as err:
        raise ConfigError(f"{p.name}: {err}") from None


# ------------------------------------------------------------------- validation


def _type_name(v: Any) -> str:
    return repr(v) if isinstance(v, (str, int, float, bool)) else type(v).__name__


def _require_table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table, got {_type_name(value)}")
    return value


def _check_keys(where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for k in table:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}: unknown key; allowed: {list(allowed)}" if where else
                              f"{k}: unknown section; allowed: {list(allowed)}")


def _flatten(where: str, table: dict[str, Any], prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Nested tables -> {dotted key: (config path, value)}."""
    out: dict[str, tuple[str, Any]] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(f"{where}.{k}", v, f"{key}."))
        else:
            out[key] = (f"{where}.{k}", v)
    return out


def _method_defaults(method: str) -> dict[str, Any]:
    """Dotted parameter name -> default value, for a registered method (nested dataclass fields too)."""
    from gradtune.methods.base import METHODS

    cls = METHODS[method]
    out: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        if is_dataclass(default):
            for sub in fields(default):
                out[f"{f.name}.{sub.name}"] = getattr(default, sub.name)
        out[f.name] = default
    return out


_KIND_WORDS = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
               list: "a list"}
_KIND_PLURAL = {bool: "booleans (true/false)", int: "integers", float: "numbers", str: "strings", list: "lists"}


def _expected_kind(default: Any) -> type | None:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, (tuple, list)):
        return list
    return None


def _fits(value: Any, kind: type | None) -> bool:
    if kind is None:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def _check_param(where: str, method: str, key: str, value: Any, *, grid: bool = False) -> Any:
    defaults = _method_defaults(method)
    if key not in defaults:
        valid = sorted(k for k in defaults if not is_dataclass(defaults[k]))
        raise ConfigError(f"{where}: {key!r} is not a parameter of method {method!r}; valid: {valid}")
    if is_dataclass(defaults[key]):
        raise ConfigError(f"{where}: {key!r} is a group of settings; set its fields, e.g. {key}.epochs")
    kind = _expected_kind(defaults[key])
    word = _KIND_WORDS.get(kind, "a value") if kind else "a value"
    plural = _KIND_PLURAL.get(kind, "values") if kind else "values"
    if grid:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: must be a non-empty list of {plural} (one run per value), "
                              f"got {_type_name(value)}")
        for i, v in enumerate(value):
            if not _fits(v, kind):
                raise ConfigError(f"{where}: must be a list of {plural}; item [{i}] is {_type_name(v)}")
        return [tuple(v) if isinstance(v, list) else v for v in value]
    if not _fits(value, kind):
        raise ConfigError(f"{where}: must be {word}, got {_type_name(value)}")
    return tuple(value) if isinstance(value, list) else value


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "(" + ",".join(_fmt_value(x) for x in v) + ")"
    return str(v)


def _parse_benchmarks(value: Any, *, methods: list[str], base_dir: Path | None, check_paths: bool,
                      seeds: list[int]) -> list[BenchmarkSpec]:
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS

    where = "experiment.benchmarks"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of benchmark names, 'bundle:PATH' strings or "
                          f"{{name, bundle, params}} tables, got {_type_name(value)}")
    out: list[BenchmarkSpec] = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        params: dict[str, dict[str, Any]] = {}
        name = None
        if isinstance(item, dict):
            _check_keys(w, item, ("name", "bundle", "offline", "params"))
            if ("bundle" in item) == ("offline" in item):
                raise ConfigError(f"{w}: give exactly one of 'bundle' (a bundle path) or 'offline' (a benchmark name)")
            name = item.get("name")
            if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
                raise ConfigError(f"{w}.name: must be a name of letters, digits, '-', '_' or '.', got {_type_name(name)}")
            spec_str = f"bundle:{item['bundle']}" if "bundle" in item else item["offline"]
            if not isinstance(item.get("bundle", item.get("offline")), str):
                raise ConfigError(f"{w}: 'bundle'/'offline' must be a string")
            raw_params = _require_table(f"{w}.params", item.get("params", {}))
            for m, table in raw_params.items():
                if m not in methods:
                    raise ConfigError(f"{w}.params.{m}: not a method of this experiment; experiment.methods = {methods}")
                flat = _flatten(f"{w}.params.{m}", _require_table(f"{w}.params.{m}", table))
                params[m] = {k: _check_param(p, m, k, v) for k, (p, v) in flat.items()}
        elif isinstance(item, str):
            spec_str = item
        else:
            raise ConfigError(f"{w}: must be a string or a table, got {_type_name(item)}")
        if spec_str.startswith("bundle:"):
            raw = spec_str[len("bundle:"):].strip()
            if not raw:
                raise ConfigError(f"{w}: 'bundle:' needs a path, e.g. 'bundle:bundles/waterbirds-seed{{seed}}.npz'")
            expanded = os.path.expanduser(os.path.expandvars(raw))
            unresolved = re.findall(r"\$\{?(\w+)\}?", expanded)
            if unresolved and check_paths:
                raise ConfigError(f"{w}: the bundle path {raw!r} uses the environment variable(s) "
                                  f"{sorted(set(unresolved))}, which are not set; export them or edit the path")
            p = Path(expanded)
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            path = str(p)
            if check_paths:
                for s in seeds:
                    f = Path(path.replace("{seed}", str(s)))
                    if not f.exists():
                        raise ConfigError(f"{w}: bundle file not found: {f} (write it with `gradtune embed "
                                          f"--checkpoint CKPT --out {f}`)")
            if name is None:
                stem = Path(raw).name
                for suf in (".npz",):
                    stem = stem[: -len(suf)] if stem.endswith(suf) else stem
                name = re.sub(r"[-_.]?seed\{seed\}|\{seed\}", "", stem).strip("-_.") or "bundle"
            out.append(BenchmarkSpec(name, "bundle", path, params))
        else:
            if spec_str not in OFFLINE_BENCHMARKS:
                raise ConfigError(f"{w}: unknown benchmark {spec_str!r}; offline benchmarks: "
                                  f"{sorted(OFFLINE_BENCHMARKS)}, or 'bundle:PATH' for an embedding bundle")
            out.append(BenchmarkSpec(name or spec_str, "offline", None, params))
    names = [b.name for b in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: benchmark name(s) {dup} appear more than once; give the tables distinct names")
    return out


def _parse_int_list(where: str, value: Any, *, minimum: int = 0) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of integers, got {_type_name(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ConfigError(f"{where}[{i}]: must be an integer >= {minimum}, got {_type_name(v)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: values must be distinct, got {value}")
    return list(value)


def _parse_methods(value: Any) -> list[str]:
    from gradtune.methods.base import list_methods

    available = list_methods()
    where = "experiment.methods"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of method names; available: {available}")
    for i, m in enumerate(value):
        if not isinstance(m, str):
            raise ConfigError(f"{where}[{i}]: must be a method name (string), got {_type_name(m)}")
        if m not in available:
            raise ConfigError(f"{where}[{i}]: unknown method {m!r}; available: {available}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: each method once (use [grid.METHOD] or [[variants.METHOD]] for several settings)")
    return list(value)


def _parse_variants(data: dict[str, Any], methods: list[str]) -> list[Variant]:
    sections = {s: _require_table(s, data.get(s, {})) for s in ("params", "grid", "variants", "labels")}
    for s, table in sections.items():
        for m in table:
            if m not in methods:
                raise ConfigError(f"{s}.{m}: not a method of this experiment; experiment.methods = {methods}")
    for m, lab in sections["labels"].items():
        if not isinstance(lab, str) or not lab.strip():
            raise ConfigError(f"labels.{m}: must be a non-empty string, got {_type_name(lab)}")
    variants: list[Variant] = []
    for m in methods:
        base = {k: _check_param(p, m, k, v)
                for k, (p, v) in _flatten(f"params.{m}", _require_table(f"params.{m}", sections["params"].get(m, {}))).items()}
        grid_flat = _flatten(f"grid.{m}", _require_table(f"grid.{m}", sections["grid"].get(m, {})))
        grid = {k: _check_param(p, m, k, v, grid=True) for k, (p, v) in grid_flat.items()}
        raw_vars = sections["variants"].get(m, [{}])
        if not isinstance(raw_vars, list) or not raw_vars:
            raise ConfigError(f"variants.{m}: must be a non-empty list of tables ([[variants.{m}]])")
        base_label = sections["labels"].get(m, m)
        for i, var in enumerate(raw_vars):
            w = f"variants.{m}[{i}]"
            var = dict(_require_table(w, var))
            explicit = var.pop("label", None)
            if explicit is not None and (not isinstance(explicit, str) or not explicit.strip()):
                raise ConfigError(f"{w}.label: must be a non-empty string")
            vparams = {k: _check_param(p, m, k, v) for k, (p, v) in _flatten(w, var).items()}
            for k in vparams:
                if k in grid:
                    raise ConfigError(f"{w}.{k}: also set in grid.{m}; set it in one place")
            points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())] or [{}]
            for point in points:
                params = {**base, **vparams, **point}
                shown = {**({} if explicit else vparams), **point}
                suffix = ", ".join(f"{k}={_fmt_value(v)}" for k, v in shown.items())
                label = (explicit or base_label) + (f" [{suffix}]" if suffix else "")
                variants.append(Variant(m, label, params))
    labels = [v.label for v in variants]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"variants: several settings share the label(s) {dup}; give each variant a distinct `label`")
    return variants


def _validate_variant(v: Variant, where: str) -> None:
    from gradtune.methods.selection import build_method

    try:
        method = build_method(v.method, v.params)
    except (GradTuneInputError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
    size, top_k = getattr(method, "size", None), getattr(method, "top_k", None)
    if isinstance(size, int) and isinstance(top_k, int) and top_k > size:
        raise ConfigError(f"{where}: top_k={top_k} exceeds size={size} (k must be at most M')")


def parse_config(data: dict[str, Any], *, base_dir: str | os.PathLike | None = None, default_name: str = "experiment",
                 check_paths: bool = True, path: str | os.PathLike | None = None) -> ExperimentConfig:
    """Validate config data (as read from TOML/YAML) into an :class:`ExperimentConfig`."""
    _check_keys("", data, _SECTIONS)
    exp = _require_table("experiment", data.get("experiment", {}))
    _check_keys("experiment", exp, _EXPERIMENT_KEYS)
    for key in ("benchmarks", "seeds", "methods"):
        if key not in exp:
            raise ConfigError(f"experiment.{key}: missing (required)")
    name = exp.get("name", default_name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"experiment.name: must be letters, digits, '-', '_' or '.', got {_type_name(name)}")
    description = exp.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"experiment.description: must be a string, got {_type_name(description)}")
    seeds = _parse_int_list("experiment.seeds", exp["seeds"])
    methods = _parse_methods(exp["methods"])
    base = Path(base_dir) if base_dir is not None else None
    benchmarks = _parse_benchmarks(exp["benchmarks"], methods=methods, base_dir=base, check_paths=check_paths,
                                   seeds=seeds)
    variants = _parse_variants(data, methods)
    for v in variants:
        _validate_variant(v, f"method {v.label!r}")
        for b in benchmarks:
            if b.params.get(v.method):
                _validate_variant(Variant(v.method, v.label, {**b.params[v.method], **v.params}),
                                  f"method {v.label!r} on benchmark {b.name!r}")
    cache_dir = exp.get("cache_dir")
    if cache_dir is not None:
        if not isinstance(cache_dir, str):
            raise ConfigError(f"experiment.cache_dir: must be a path string, got {_type_name(cache_dir)}")
        cache_dir = Path(os.path.expanduser(os.path.expandvars(cache_dir)))
        if not cache_dir.is_absolute() and base is not None:
            cache_dir = base / cache_dir

    rep = _require_table("report", data.get("report", {}))
    _check_keys("report", rep, _REPORT_KEYS)
    tables = rep.get("tables", ["table1"])
    if not isinstance(tables, list):
        raise ConfigError(f"report.tables: must be a list of names from {list(REPORT_ITEMS)}")
    for i, t in enumerate(tables):
        if t not in REPORT_ITEMS:
            raise ConfigError(f"report.tables[{i}]: unknown item {_type_name(t)}; available: {list(REPORT_ITEMS)}")
    notes = rep.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ConfigError("report.notes: must be a list of strings")
    title = rep.get("title")
    if title is not None and not isinstance(title, str):
        raise ConfigError(f"report.title: must be a string, got {_type_name(title)}")
    for key in ("method", "baseline"):
        if key in rep and rep[key] not in methods:
            raise ConfigError(f"report.{key}: {rep[key]!r} is not one of experiment.methods {methods}")
    report = ReportOptions(title, tuple(tables), tuple(notes), rep.get("method", "gradtune"),
                           rep.get("baseline", "erm"))

    lau = _require_table("launcher", data.get("launcher", {}))
    _check_keys("launcher", lau, _LAUNCHER_KEYS)
    workers = lau.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"launcher.workers: must be an integer >= 1, got {_type_name(workers)}")
    kind = lau.get("kind", "local")
    if kind not in _LAUNCHERS:
        raise ConfigError(f"launcher.kind: must be one of {list(_LAUNCHERS)}, got {_type_name(kind)}")
    start_method = lau.get("start_method", "spawn")
    if start_method not in ("spawn", "forkserver", "fork"):
        raise ConfigError(f"launcher.start_method: must be 'spawn', 'forkserver' or 'fork', got {_type_name(start_method)}")
    sub = dict(_require_table("launcher.submitit", lau.get("submitit", {})))
    for k, v in sub.items():
        if isinstance(v, (dict, list)) and k != "slurm_additional_parameters":
            raise ConfigError(f"launcher.submitit.{k}: must be a single value, got {_type_name(v)}")
    launcher = LauncherOptions(workers, kind, sub, start_method)
    return ExperimentConfig(name=name, benchmarks=benchmarks, seeds=seeds, methods=methods, variants=variants,
                            description=description, report=report, launcher=launcher, cache_dir=cache_dir,
                            path=None if path is None else Path(path))
