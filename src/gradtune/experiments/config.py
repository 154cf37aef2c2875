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
path selects one bundle per seed), or a table ``{name = "celeba", bundle = "PATH", params =
{gradtune = {finetune = {batch_size = 100}}}}`` whose ``params`` set per-method values for
that benchmark only (the paper's per-dataset settings, Table 3). Precedence, last wins:
benchmark params, ``[params.METHOD]``, the variant, the grid point.

Paths: ``$VARS`` are expanded; a relative path written in a user's config file is relative
to that file's folder, one that starts with a variable (``${GRADTUNE_BUNDLES}/...``) or
comes from a packaged config is relative to the current directory
(:mod:`gradtune.experiments.config_benchmarks`). ``load_config(..., benchmarks=[...])`` (or
:meth:`ExperimentConfig.select`) keeps some of the benchmarks; the files of the others are
never looked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gradtune._config_files import read_config_text
from gradtune._errors import GradTuneInputError
from gradtune._names import report_items
from gradtune.experiments._config_fields import (
    NAME_RE,
    ConfigError,
    Variant,
    check_keys,
    check_run_count,
    parse_int_list,
    parse_methods,
    parse_variants,
    require_table,
    type_name,
    validate_variant,
)
from gradtune.experiments.config_benchmarks import (
    BenchmarkSpec,
    check_bundle_files,
    parse_benchmarks,
    resolve_path,
)
from gradtune.experiments.spec import RunSpec

__all__ = ["ConfigError", "ExperimentConfig", "BenchmarkSpec", "Variant", "ReportOptions", "LauncherOptions",
           "load_config", "parse_config", "find_config", "packaged_configs", "is_packaged", "select_benchmarks",
           "REPORT_ITEMS", "CONFIG_DIR"]

#: Tables and figures a config can ask the report for (the paper's numbering): key -> title,
#: read from the renderers registered in :mod:`gradtune.report.paper_items`.
REPORT_ITEMS: dict[str, str] = report_items()

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "experiments"
_SECTIONS = ("experiment", "params", "grid", "variants", "labels", "report", "launcher")
_EXPERIMENT_KEYS = ("name", "description", "benchmarks", "seeds", "methods", "cache_dir")
_REPORT_KEYS = ("title", "tables", "notes", "method", "baseline")
_LAUNCHER_KEYS = ("workers", "kind", "start_method", "submitit")
_LAUNCHERS = ("local", "submitit")


# --------------------------------------------------------------------------- data


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
    """A validated experiment; :meth:`run_specs` lists its runs in order.

    ``absent`` names the benchmarks of the config file that this experiment leaves out
    (see :meth:`select`); the report says so.
    """

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
    absent: tuple[str, ...] = ()

    def run_specs(self) -> list[RunSpec]:
        """Every run: benchmark (outer) x seed x variant (inner), with merged parameters: the
        method's defaults for the benchmark's data family, then the benchmark's params,
        then the variant's."""
        from gradtune.methods.tuning import family_defaults

        specs = []
        for b in self.benchmarks:
            for s in self.seeds:
                for v in self.variants:
                    merged = {**family_defaults(v.method, b.family), **b.params.get(v.method, {}),
                              **v.params}
                    specs.append(RunSpec(b.name, s, v.method, tuple(sorted(merged.items())), v.label))
        return specs

    def benchmark(self, name: str) -> BenchmarkSpec:
        for b in self.benchmarks:
            if b.name == name:
                return b
        raise KeyError(name)

    def select(self, names: Sequence[str]) -> ExperimentConfig:
        """This experiment on the benchmarks ``names`` only (in the config's order).

        The others become :attr:`absent`; no file of theirs is looked for. A proper subset
        is named ``NAME[b1,b2]``, so that runs on different subsets kept in one store do
        not replace each other's plan (their runs are shared all the same).

        Raises
        ------
        ConfigError
            If a name is not a benchmark of this config, or no name is given.
        """
        names = list(dict.fromkeys(str(n) for n in names))
        have = [b.name for b in self.benchmarks]
        if not names:
            raise ConfigError(f"{self.name}: give at least one benchmark name; this config's benchmarks: {have}")
        unknown = [n for n in names if n not in have]
        if unknown:
            raise ConfigError(f"asked for benchmark(s) {unknown}, which {'is' if len(unknown) == 1 else 'are'} not "
                              f"in experiment {self.name!r}; its benchmarks: {have}")
        kept = [b for b in self.benchmarks if b.name in names]
        if len(kept) == len(self.benchmarks):
            return self
        base = self.name.split("[", 1)[0]
        return replace(self, name=f"{base}[{','.join(b.name for b in kept)}]", benchmarks=kept,
                       absent=(*self.absent, *(b.name for b in self.benchmarks if b.name not in names)))

    def check_paths(self) -> None:
        """Require every bundle file of this experiment's benchmarks (each seed) to exist.

        Raises
        ------
        ConfigError
            Starting with the config file's name and the benchmark, showing the path as
            written and as resolved.
        """
        try:
            check_bundle_files(self.benchmarks, self.seeds)
        except ConfigError as err:
            raise ConfigError(f"{self.path.name if self.path else self.name}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as JSON-friendly data (stored with the results)."""
        report = self.report.to_dict()
        if self.absent:
            report["notes"] = [*report["notes"], f"Benchmarks absent from this experiment: {', '.join(self.absent)} "
                               f"(it was run on {', '.join(b.name for b in self.benchmarks)} only)."]
        return {"name": self.name, "description": self.description,
                "benchmarks": [b.to_dict() for b in self.benchmarks], "seeds": list(self.seeds),
                "methods": list(self.methods), "variants": [v.to_dict() for v in self.variants],
                "report": report, "launcher": self.launcher.to_dict(),
                "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
                "path": None if self.path is None else str(self.path), "absent_benchmarks": list(self.absent)}


def select_benchmarks(configs: Sequence[ExperimentConfig], names: Sequence[str] | None
                      ) -> tuple[list[ExperimentConfig], list[ExperimentConfig]]:
    """Cut several experiments down to the benchmarks ``names``.

    Each name must be a benchmark of at least one config; a config that has none of them
    is left out.

    Returns
    -------
    kept : list of ExperimentConfig
        The configs that have some of ``names``, each :meth:`~ExperimentConfig.select`-ed.
    skipped : list of ExperimentConfig
        The configs that have none of them, unchanged.

    Raises
    ------
    ConfigError
        If a name is in no config (the message lists each config's benchmarks).
    """
    if names is None:
        return list(configs), []
    names = list(dict.fromkeys(str(n) for n in names))
    if not names:
        raise ConfigError("--benchmarks: give at least one benchmark name")
    have = {c.name: [b.name for b in c.benchmarks] for c in configs}
    unknown = [n for n in names if not any(n in h for h in have.values())]
    if unknown:
        listing = "; ".join(f"{c}: {', '.join(h)}" for c, h in have.items())
        raise ConfigError(f"--benchmarks: {unknown} {'is' if len(unknown) == 1 else 'are'} not a benchmark of "
                          f"{'this config' if len(configs) == 1 else 'any of these configs'} ({listing})")
    kept, skipped = [], []
    for c in configs:
        mine = [n for n in names if n in have[c.name]]
        (kept if mine else skipped).append(c.select(mine) if mine else c)
    return kept, skipped


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
    try:
        text = read_config_text(path)
    except ConfigError:
        raise
    except GradTuneInputError as err:
        raise ConfigError(str(err)) from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or write TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to read (keep tables under 100 levels)") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to read (keep tables and arrays under 100 levels)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections, got {type(data).__name__}")
    return data


def is_packaged(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the configs shipped with gradtune."""
    return Path(path).resolve().parent == CONFIG_DIR


def load_config(path: str | os.PathLike, *, check_paths: bool = True, benchmarks: Sequence[str] | None = None,
                variables: Mapping[str, str] | None = None) -> ExperimentConfig:
    """Read and validate a config file (TOML; YAML when PyYAML is installed).

    Parameters
    ----------
    path : str or PathLike
        A file (a relative path is taken from the current directory), or the name of a
        packaged config (see :func:`packaged_configs`).
    check_paths : bool, default=True
        Require every ``bundle:`` file (each seed) of the selected benchmarks to exist.
    benchmarks : sequence of str, optional
        Run only these of the config's benchmarks (:meth:`ExperimentConfig.select`); the
        files of the others are not looked for.
    variables : mapping name -> value, optional
        Values for ``$NAME`` in paths, over the environment's.

    Notes
    -----
    Relative paths written in a user's config file resolve against that file's folder;
    those that start with a variable, and every path of a packaged config, resolve
    against the current directory (:func:`~gradtune.experiments.config_benchmarks.resolve_path`).

    Raises
    ------
    ConfigError
        With the file and the offending field first, e.g.
        ``my.toml: experiment.seeds[1]: must be an integer >= 0``.
    """
    p = find_config(path)
    try:
        return parse_config(_read(p), base_dir=None if is_packaged(p) else p.parent, default_name=p.stem,
                            check_paths=check_paths, path=p, benchmarks=benchmarks, variables=variables)
    except ConfigError as err:
        raise ConfigError(f"{p.name}: {err}") from None


def parse_config(data: dict[str, Any], *, base_dir: str | os.PathLike | None = None, default_name: str = "experiment",
                 check_paths: bool = True, path: str | os.PathLike | None = None,
                 benchmarks: Sequence[str] | None = None,
                 variables: Mapping[str, str] | None = None) -> ExperimentConfig:
    """Validate config data (as read from TOML/YAML) into an :class:`ExperimentConfig`.

    ``base_dir`` is the folder relative paths written in the data resolve against (a user's
    config file's folder); None resolves them against the current directory. ``benchmarks``,
    ``variables`` and ``check_paths`` are as in :func:`load_config`.
    """
    env: Mapping[str, str] = dict(os.environ) if variables is None else {**os.environ, **variables}
    check_keys("", data, _SECTIONS)
    exp = require_table("experiment", data.get("experiment", {}))
    check_keys("experiment", exp, _EXPERIMENT_KEYS)
    for key in ("benchmarks", "seeds", "methods"):
        if key not in exp:
            raise ConfigError(f"experiment.{key}: missing (required)")
    name = exp.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"experiment.name: must be letters, digits, '-', '_' or '.', got {type_name(name)}")
    description = exp.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"experiment.description: must be a string, got {type_name(description)}")
    seeds = parse_int_list("experiment.seeds", exp["seeds"])
    methods = parse_methods(exp["methods"])
    base = Path(base_dir) if base_dir is not None else None
    specs = parse_benchmarks(exp["benchmarks"], methods=methods, config_dir=base, variables=env)
    variants = parse_variants(data, methods)
    check_run_count("experiment", len(specs) * len(seeds) * len(variants),
                    f"{len(specs)} benchmark(s) x {len(seeds)} seed(s) x {len(variants)} variant(s)")
    for v in variants:
        validate_variant(v, f"method {v.label!r}")
        for b in specs:
            if b.params.get(v.method):
                validate_variant(Variant(v.method, v.label, {**b.params[v.method], **v.params}),
                                  f"method {v.label!r} on benchmark {b.name!r}")
    cache_dir = exp.get("cache_dir")
    if cache_dir is not None:
        if not isinstance(cache_dir, str):
            raise ConfigError(f"experiment.cache_dir: must be a path string, got {type_name(cache_dir)}")
        loc = resolve_path(cache_dir, config_dir=base, variables=env)
        if loc.unset:
            raise ConfigError(f"experiment.cache_dir: {cache_dir!r} uses the environment variable(s) "
                              f"{list(loc.unset)}, which are not set; export them or edit the path")
        cache_dir = Path(loc.path)

    rep = require_table("report", data.get("report", {}))
    check_keys("report", rep, _REPORT_KEYS)
    tables = rep.get("tables", ["table1"])
    if not isinstance(tables, list):
        raise ConfigError(f"report.tables: must be a list of names from {list(REPORT_ITEMS)}")
    for i, t in enumerate(tables):
        if t not in REPORT_ITEMS:
            raise ConfigError(f"report.tables[{i}]: unknown item {type_name(t)}; available: {list(REPORT_ITEMS)}")
    notes = rep.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ConfigError("report.notes: must be a list of strings")
    title = rep.get("title")
    if title is not None and not isinstance(title, str):
        raise ConfigError(f"report.title: must be a string, got {type_name(title)}")
    for key in ("method", "baseline"):
        if key in rep and rep[key] not in methods:
            raise ConfigError(f"report.{key}: {rep[key]!r} is not one of experiment.methods {methods}")
    report = ReportOptions(title, tuple(tables), tuple(notes), rep.get("method", "gradtune"),
                           rep.get("baseline", "erm"))

    lau = require_table("launcher", data.get("launcher", {}))
    check_keys("launcher", lau, _LAUNCHER_KEYS)
    workers = lau.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"launcher.workers: must be an integer >= 1, got {type_name(workers)}")
    kind = lau.get("kind", "local")
    if kind not in _LAUNCHERS:
        raise ConfigError(f"launcher.kind: must be one of {list(_LAUNCHERS)}, got {type_name(kind)}")
    start_method = lau.get("start_method", "spawn")
    if start_method not in ("spawn", "forkserver", "fork"):
        raise ConfigError(f"launcher.start_method: must be 'spawn', 'forkserver' or 'fork', got {type_name(start_method)}")
    sub = dict(require_table("launcher.submitit", lau.get("submitit", {})))
    for k, v in sub.items():
        if isinstance(v, (dict, list)) and k != "slurm_additional_parameters":
            raise ConfigError(f"launcher.submitit.{k}: must be a single value, got {type_name(v)}")
    launcher = LauncherOptions(workers, kind, sub, start_method)
    cfg = ExperimentConfig(name=name, benchmarks=specs, seeds=seeds, methods=methods, variants=variants,
                           description=description, report=report, launcher=launcher, cache_dir=cache_dir,
                           path=None if path is None else Path(path))
    if benchmarks is not None:
        cfg = cfg.select(benchmarks)
    if check_paths:
        check_bundle_files(cfg.benchmarks, cfg.seeds)
    return cfg
