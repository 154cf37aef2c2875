"""The ``experiment.benchmarks`` list of a config: names, bundle paths and how paths resolve.

Path rules (bundle paths and ``experiment.cache_dir``):

* ``$VAR`` / ``${VAR}`` are replaced by the value of the environment variable (or of a
  value given to the reader, e.g. ``gradtune run --bundles DIR`` for
  ``GRADTUNE_BUNDLES``); ``~`` is the home folder.
* A path that is still relative resolves against the **current directory** when it starts
  with a variable (the value came from the user's shell, so it means what it means
  there) or when the config is a packaged one; otherwise, a relative path written in a
  user's config file resolves against **that file's folder**.
* Errors show the path as written, the variables it used, what it was resolved against
  and the path that results.

Files are checked separately from parsing (:func:`check_bundle_files`), so a config can be
cut down to the benchmarks a user has before any file is looked for.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradtune.data.base import DATA_FAMILIES, DATASET_FAMILIES
from gradtune.experiments._config_fields import (
    NAME_RE,
    ConfigError,
    check_keys,
    check_param,
    flatten,
    require_table,
    type_name,
)

__all__ = ["BenchmarkSpec", "ResolvedPath", "resolve_path", "parse_benchmarks", "check_bundle_files",
           "CWD", "CONFIG_FOLDER"]

CWD = "the current directory"
CONFIG_FOLDER = "the config file's folder"
_VAR_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_SEED_RE = re.compile(r"[-_.]?seed\{seed\}|\{seed\}")


@dataclass(frozen=True)
class ResolvedPath:
    """A path from a config, resolved.

    written : str, the path as written in the config
    path : str, the absolute path (``{seed}`` kept), or the written path with unset variables
    anchor : str, what a relative path was resolved against (:data:`CWD`, :data:`CONFIG_FOLDER`)
        or ``'absolute'``
    base : str or None, the folder of ``anchor``
    variables : dict name -> value, the variables the path used
    unset : tuple of str, variables the path uses that have no value
    """

    written: str
    path: str
    anchor: str
    base: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def explain(self, path: str | None = None) -> str:
        """``'<written>' (VAR='value'), resolved against <anchor> <base>, is <path>``."""
        shown = self.path if path is None else path
        used = ", ".join(f"{k}={v!r}" for k, v in self.variables.items())
        text = f"{self.written!r}" + (f" ({used})" if used else "")
        if self.anchor == "absolute":
            return f"{text}, an absolute path: {shown}"
        return f"{text}, resolved against {self.anchor} {self.base}: {shown}"


def _expand(raw: str, variables: Mapping[str, str]) -> tuple[str, dict[str, str], tuple[str, ...]]:
    used: dict[str, str] = {}
    unset: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in variables:
            used[name] = variables[name]
            return variables[name]
        unset.append(name)
        return m.group(0)

    return os.path.expanduser(_VAR_RE.sub(sub, raw)), used, tuple(dict.fromkeys(unset))


def resolve_path(raw: str, *, config_dir: str | os.PathLike | None,
                 variables: Mapping[str, str] | None = None) -> ResolvedPath:
    """Expand variables and resolve a path written in a config (see the module docstring).

    Parameters
    ----------
    raw : str
        The path as written.
    config_dir : path or None
        The folder of a user's config file; None for a packaged config (or data that came
        from no file): relative paths then resolve against the current directory.
    variables : mapping name -> value, optional
        Values for ``$NAME``; default: the environment.
    """
    env = os.environ if variables is None else variables
    expanded, used, unset = _expand(raw, env)
    if Path(expanded).is_absolute():
        return ResolvedPath(raw, os.path.normpath(expanded), "absolute", None, used, unset)
    from_variable = _VAR_RE.match(raw.strip()) is not None
    if config_dir is None or from_variable:
        anchor, base = CWD, os.getcwd()
    else:
        anchor, base = CONFIG_FOLDER, os.path.abspath(config_dir)
    return ResolvedPath(raw, os.path.normpath(os.path.join(base, expanded)), anchor, base, used, unset)


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark of an experiment.

    name : str, display name (offline name, or the bundle file's stem without ``-seed{seed}``)
    kind : {'offline', 'bundle'}
    path : str or None, bundle path template (``{seed}`` allowed), absolute once resolved
    params : dict method -> {dotted key: value}, per-benchmark method settings
    family : str or None, the data family ('vision' / 'text' / 'tabular') whose method
        defaults apply (``Method.family_defaults``); from the ``family`` key, else the
        offline benchmark's, else the paper dataset's of the same name
    location : ResolvedPath or None, how ``path`` was resolved (bundles only)
    index : int, position in ``experiment.benchmarks`` (for error messages)
    """

    name: str
    kind: str
    path: str | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    location: ResolvedPath | None = field(default=None, compare=False)
    index: int = field(default=0, compare=False)
    family: str | None = None

    def bundle_path(self, seed: int) -> Path:
        """The bundle file of ``seed``."""
        if self.path is None:
            raise ConfigError(f"benchmark {self.name!r} is not a bundle file")
        return Path(self.path.replace("{seed}", str(int(seed))))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "path": self.path, "params": self.params,
                               "family": self.family}
        if self.location is not None:
            out["written"] = self.location.written
        return out


def _default_name(raw: str) -> str:
    stem = Path(raw).name
    stem = stem[:-4] if stem.endswith(".npz") else stem
    return _SEED_RE.sub("", stem).strip("-_.") or "bundle"


def parse_benchmarks(value: Any, *, methods: list[str], config_dir: Path | None,
                     variables: Mapping[str, str] | None = None) -> list[BenchmarkSpec]:
    """Validate ``experiment.benchmarks``; bundle paths are resolved but not looked for.

    Parameters
    ----------
    value : list
        Offline names, ``'bundle:PATH'`` strings or ``{name, bundle | offline, params}`` tables.
    methods : list of str
        The experiment's methods (per-benchmark ``params`` may only name these).
    config_dir : Path or None
        See :func:`resolve_path`.
    variables : mapping, optional
        Values for ``$NAME`` in paths (default: the environment).
    """
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS

    where = "experiment.benchmarks"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a non-empty list of benchmark names, 'bundle:PATH' strings or "
                          f"{{name, bundle, params}} tables, got {type_name(value)}")
    out: list[BenchmarkSpec] = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        params: dict[str, dict[str, Any]] = {}
        name = None
        family = None
        if isinstance(item, dict):
            check_keys(w, item, ("name", "bundle", "offline", "params", "family"))
            family = item.get("family")
            if family is not None and family not in DATA_FAMILIES:
                raise ConfigError(f"{w}.family: must be one of {list(DATA_FAMILIES)}, got {family!r}")
            if ("bundle" in item) == ("offline" in item):
                raise ConfigError(f"{w}: give exactly one of 'bundle' (a bundle path) or 'offline' (a benchmark name)")
            name = item.get("name")
            if name is not None and (not isinstance(name, str) or not NAME_RE.match(name)):
                raise ConfigError(f"{w}.name: must be a name of letters, digits, '-', '_' or '.', got {type_name(name)}")
            if not isinstance(item.get("bundle", item.get("offline")), str):
                raise ConfigError(f"{w}: 'bundle'/'offline' must be a string")
            spec_str = f"bundle:{item['bundle']}" if "bundle" in item else item["offline"]
            raw_params = require_table(f"{w}.params", item.get("params", {}))
            for m, table in raw_params.items():
                if m not in methods:
                    raise ConfigError(f"{w}.params.{m}: not a method of this experiment; experiment.methods = {methods}")
                flat = flatten(f"{w}.params.{m}", require_table(f"{w}.params.{m}", table))
                params[m] = {k: check_param(p, m, k, v) for k, (p, v) in flat.items()}
        elif isinstance(item, str):
            spec_str = item
        else:
            raise ConfigError(f"{w}: must be a string or a table, got {type_name(item)}")
        if spec_str.startswith("bundle:"):
            raw = spec_str[len("bundle:"):].strip()
            if not raw:
                raise ConfigError(f"{w}: 'bundle:' needs a path, e.g. 'bundle:bundles/waterbirds-seed{{seed}}.npz'")
            loc = resolve_path(raw, config_dir=config_dir, variables=variables)
            bname = name or _default_name(raw)
            out.append(BenchmarkSpec(bname, "bundle", loc.path, params, loc, i,
                                     family or DATASET_FAMILIES.get(bname)))
        else:
            if spec_str not in OFFLINE_BENCHMARKS:
                raise ConfigError(f"{w}: unknown benchmark {spec_str!r}; offline benchmarks: "
                                  f"{sorted(OFFLINE_BENCHMARKS)}, or 'bundle:PATH' for an embedding bundle")
            out.append(BenchmarkSpec(name or spec_str, "offline", None, params, None, i,
                                     family or OFFLINE_BENCHMARKS[spec_str].family))
    names = [b.name for b in out]
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise ConfigError(f"{where}: benchmark name(s) {dup} appear more than once; give the tables distinct names")
    return out


def check_bundle_files(benchmarks: Sequence[BenchmarkSpec], seeds: Sequence[int]) -> None:
    """Require every bundle file of ``benchmarks`` (each seed) to exist.

    Raises
    ------
    ConfigError
        Naming the benchmark, the path as written, the variables it used, what it was
        resolved against, the resolved file and the seeds that lack one.
    """
    for b in benchmarks:
        if b.kind != "bundle" or b.location is None:
            continue
        w = f"experiment.benchmarks[{b.index}]"
        loc = b.location
        if loc.unset:
            hint = " or pass --bundles DIR" if loc.unset == ("GRADTUNE_BUNDLES",) else ""
            raise ConfigError(
                f"{w}: the bundle path {loc.written!r} of benchmark {b.name!r} uses the environment variable(s) {list(loc.unset)}, which "
                f"are not set; export them (a relative value is taken from the current directory){hint}, edit the "
                "path, or leave this benchmark out with --benchmarks NAME... (benchmarks=[...] in Python)")
        missing = [s for s in seeds if not b.bundle_path(s).exists()]
        if missing:
            first = str(b.bundle_path(missing[0]))
            raise ConfigError(
                f"{w}: bundle file not found (benchmark {b.name!r}, seed(s) {missing}): the path "
                f"{loc.explain(first)}. Write it with "
                f"`gradtune embed --checkpoint CKPT --out {first}`, or leave this benchmark out with "
                "--benchmarks NAME... (benchmarks=[...] in Python)")
