"""Run methods on bundles over seeds and store every run in one SQLite results store.

The seed of a run selects the bundle (the ERM model and, for ``bundle:`` files, the
held-out / selection halves) and is passed to the method, which splits it into streams.

Flow of :func:`execute`:

1. group the runs by (benchmark, seed, bundle source); per group, load the bundle once
   (offline benchmarks are built and cached on first use), compute its fingerprint,
   describe it in the store and store the ERM head's held-out gradient norms (Fig. 2/4);
2. give each run its id (:func:`gradtune.results.store.make_run_id`) and link it to
   its experiment(s); runs already ``done`` are skipped unless ``force``;
3. hand the rest to a launcher (:mod:`gradtune.experiments.launchers`): in-process, a
   pool of worker processes, or submitit jobs. Each finished run is written in one
   transaction by this process, so a crash or kill loses at most the runs in flight,
   and rerunning resumes.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gradtune._io import jsonable
from gradtune._threads import torch_threads
from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.experiments.bundles import (
    BundleSource,
    bundle_fingerprint,
    clear_cache,
    embedding_hash,
    load_cached,
)
from gradtune.experiments.claims import run_claimed
from gradtune.experiments.inference_quality import inference_quality_record
from gradtune.experiments.launchers import Launcher, LocalLauncher, make_launcher
from gradtune.experiments.spec import RunSpec
from gradtune.methods.base import erm_head
from gradtune.metrics.accuracy import evaluate
from gradtune.results.records import store_path_for
from gradtune.results.store import ResultStore, code_version, make_run_id
from gradtune.scores.grad_norms import grad_norms

__all__ = ["RunSpec", "RunTask", "ExecutionSummary", "run_record", "run_grid", "execute", "run_experiments",
           "execute_task", "failure_record", "erm_diagnostics"]


@dataclass(frozen=True)
class RunTask:
    """What a worker needs for one run (picklable when the source is)."""

    spec: RunSpec
    source: BundleSource
    run_id: str
    fingerprint: str
    data_hash: str


# -------------------------------------------------------------------- a run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _eval_split(model: Any, bundle: EmbeddingBundle, split: str, train_counts: np.ndarray | None) -> dict:
    v = bundle.view(split)
    logits = model.logits(v.features)
    return evaluate(logits, v.labels, v.groups, n_groups=bundle.n_groups, train_group_counts=train_counts,
                    n_classes=bundle.n_classes).to_dict()


def train_group_counts(bundle: EmbeddingBundle) -> np.ndarray | None:
    """Group counts of the ``train`` rows (weights of the train-weighted accuracy), or None."""
    if bundle.groups is None or not bundle.has_split("train"):
        return None
    return np.bincount(bundle.view("train").groups, minlength=bundle.n_groups)


def run_record(spec: RunSpec, bundle: EmbeddingBundle, *, keep_diagnostics: bool = False) -> dict[str, Any]:
    """Fit one method on one bundle and evaluate it on the ``selection`` and ``test`` rows.

    Returns a JSON-friendly record: benchmark, seed, method, label, params (resolved),
    group_labels ('none' / 'val' / 'train+val'), fit_seconds, evaluation {'selection', 'test'}
    (:meth:`GroupReport.to_dict`), diagnostics (lists longer than 64 dropped unless
    ``keep_diagnostics``), group_names, class_names, bundle_fingerprint, timings.
    """
    method = spec.build()
    t = time.perf_counter()
    result = method.fit(bundle, seed=spec.seed)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    counts = train_group_counts(bundle)
    evals = {s: _eval_split(result.model, bundle, s, counts) for s in ("selection", "test") if bundle.has_split(s)}
    eval_s = time.perf_counter() - t
    quality = inference_quality_record(bundle, result.diagnostics.get("inferred_minority_rows"))
    diag = {k: v for k, v in result.diagnostics.items()
            if keep_diagnostics or not isinstance(v, list) or len(v) <= 64}
    if bundle.has_split("heldout"):
        diag.setdefault("heldout_size", int(np.sum(bundle.split == "heldout")))
    diag.update({"inference_quality": quality} if quality is not None else {})
    return {
        "benchmark": spec.benchmark, "seed": spec.seed, "method": spec.method, "label": spec.display,
        "params": method.params(), "group_labels": method.group_label_use,
        "fit_seconds": fit_s, "evaluation": evals, "diagnostics": diag,
        "group_names": bundle.group_names, "class_names": bundle.class_names,
        "bundle_fingerprint": bundle_fingerprint(bundle), "timings": {"fit_seconds": fit_s, "eval_seconds": eval_s},
    }


def failure_record(task: RunTask, error: str) -> dict[str, Any]:
    """The record of a run that raised: status 'failed' with the error text."""
    version, commit = code_version()
    return {"run_id": task.run_id, "status": "failed", "benchmark": task.spec.benchmark, "seed": task.spec.seed,
            "method": task.spec.method, "label": task.spec.display, "params": dict(task.spec.params),
            "bundle_fingerprint": task.fingerprint, "data_hash": task.data_hash, "code_version": version,
            "git_commit": commit, "error": error, "finished_at": _now(), "host": socket.gethostname(),
            "worker": str(os.getpid()), "evaluation": {}, "diagnostics": {}}


def execute_task(task: RunTask) -> dict[str, Any]:
    """Run one task (in any process) and return its record; never raises.

    Loads the bundle (kept for the next task of the same bundle), checks that its
    fingerprint still matches the plan, fits and evaluates with one torch thread (so a
    run's numbers do not depend on the launcher), and adds the run id, status, code
    version, timings, host and worker.
    """
    started = _now()
    try:
        bundle, fp, load_s = load_cached(task.source)
        if fp != task.fingerprint:
            raise BundleError(f"the bundle of {task.source.describe()} changed since the run was planned "
                              f"(fingerprint {fp} != {task.fingerprint}); rerun to plan again")
        with torch_threads(1):
            rec = run_record(task.spec, bundle)
        version, commit = code_version()
        rec.update({"run_id": task.run_id, "status": "done", "data_hash": task.data_hash, "code_version": version,
                    "git_commit": commit, "started_at": started, "finished_at": _now(),
                    "host": socket.gethostname(), "worker": str(os.getpid())})
        rec["timings"]["load_seconds"] = load_s
        return rec
    except Exception:  # noqa: BLE001 - a failed run is a result, stored with its traceback
        rec = failure_record(task, traceback.format_exc(limit=20))
        rec["started_at"] = started
        return rec


def erm_diagnostics(bundle: EmbeddingBundle) -> dict[str, Any]:
    """Held-out gradient norms of the ERM head, with labels and groups (the paper's Fig. 2/4)."""
    head = erm_head(bundle)
    held = bundle.view("heldout")
    norms = grad_norms(held.features, labels=held.labels, weight=head.weight, bias=head.bias).numpy()
    return {"norms": norms.tolist(), "groups": None if held.groups is None else held.groups.tolist(),
            "labels": held.labels.tolist()}


# ---------------------------------------------------------------- execution


@dataclass
class ExecutionSummary:
    """What :func:`execute` did: records (in plan order, done or failed), counts and seconds."""

    records: list[dict[str, Any]]
    new: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    store: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {"new": self.new, "reused": self.reused}


@dataclass(frozen=True)
class _Job:
    experiment: str
    spec: RunSpec
    source: BundleSource


def _plan_group(jobs: list[_Job], store: ResultStore, *, force: bool) -> tuple[list[RunTask], dict[str, list[_Job]]]:
    """Load the group's bundle, describe it, store its norms, and give each job its task."""
    source = jobs[0].source
    bundle, fp, _ = load_cached(source)
    data_hash = embedding_hash(bundle)
    sizes = {s: int(np.sum(bundle.split == s)) for s in sorted(set(bundle.split.tolist()))}
    store.put_bundle(fp, benchmark=source.benchmark, seed=source.seed, source=source.describe(), data_hash=data_hash,
                     split_sizes=sizes, n_features=bundle.features.shape[1], n_classes=int(bundle.n_classes or
                     bundle.labels.max() + 1), group_names=bundle.group_names, meta=bundle.meta)
    if bundle.has_split("heldout") and bundle.head_weight is not None and (
            force or not store.has_norms(source.benchmark, source.seed, fp)):
        d = erm_diagnostics(bundle)
        store.put_norms(source.benchmark, source.seed, fp, norms=d["norms"], labels=d["labels"], groups=d["groups"],
                        group_names=bundle.group_names)
    tasks: dict[str, RunTask] = {}
    by_id: dict[str, list[_Job]] = {}
    for job in jobs:
        method = job.spec.build()
        rid = make_run_id(job.spec.benchmark, job.spec.seed, job.spec.method, method.params(), fp)
        tasks.setdefault(rid, RunTask(job.spec, source, rid, fp, data_hash))
        by_id.setdefault(rid, []).append(job)
    return list(tasks.values()), by_id


def _check_picklable(tasks: Sequence[RunTask]) -> None:
    for t in tasks[:1]:
        try:
            pickle.dumps(t)
        except Exception as err:
            raise GradTuneInputError(f"runs of {t.source.describe()} cannot be sent to worker processes ({err}); "
                                     "use workers=1, a bundle file, or a module-level build function") from None


def _config_key(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k != "n_planned"}, sort_keys=True, default=jsonable)


def _warn_if_replaced(old: dict | None, cfg: dict, store: ResultStore) -> None:
    """Warn when ``store`` holds an experiment of this name planned by another config: its
    plan is replaced, so its runs (kept in the store) leave the experiment's report."""
    if old is None or not old["runs"] or _config_key(old["config"]) == _config_key(json.loads(_config_key(cfg))):
        return
    warnings.warn(f"experiment {cfg.get('name')!r} in {store.path} was planned by another config "
                  f"({len(old['runs'])} runs); this config's plan replaces it, so those runs stay in the store "
                  "but leave the report; give this config its own experiment.name to keep both", stacklevel=3)


def execute(jobs: Sequence[tuple[str, RunSpec, BundleSource]], store: ResultStore | str | Path, *,
            experiments: dict[str, dict[str, Any]] | None = None, launcher: Launcher | None = None, force: bool = False,
            on_record: Callable[[dict, bool], None] | None = None, command: str | None = None) -> ExecutionSummary:
    """Plan and run ``(experiment, spec, source)`` jobs, skipping runs already done.

    Parameters
    ----------
    jobs : sequence of (experiment name, RunSpec, BundleSource)
    store : ResultStore or path
        A store, a ``.sqlite`` file, or a folder (``folder/results.sqlite``).
    experiments : dict name -> resolved config (JSON-friendly), optional
        Registered in the store with their planned runs (so the report knows what is missing).
    launcher : Launcher, default: in-process
    force : bool, default=False
        Recompute runs (and held-out norms) that are already stored.
    on_record : callable (record, reused) -> None, optional
        Called in this process after each run is stored (or found done).
    command : str, optional
        The command line, kept in the store's run log with the counts and wall time.

    Returns
    -------
    ExecutionSummary
        ``records`` holds one record per job (same order), labelled with the job's label.
    """
    t0 = time.perf_counter()
    store = store if isinstance(store, ResultStore) else ResultStore(store_path_for(store))
    launcher = launcher or LocalLauncher(1)
    jobs = [_Job(*j) for j in jobs]
    groups: dict[tuple, list[_Job]] = {}
    for j in jobs:
        groups.setdefault((j.spec.benchmark, j.spec.seed, j.source), []).append(j)
    experiments = dict(experiments or {})
    previous = {e["name"]: e for e in store.experiments()}
    for name in dict.fromkeys(j.experiment for j in jobs):
        cfg = dict(experiments.get(name, {"name": name}))
        cfg["n_planned"] = sum(1 for j in jobs if j.experiment == name)
        _warn_if_replaced(previous.get(name), cfg, store)
        store.register_experiment(name, cfg, [])
    links: dict[str, list[dict]] = {}
    job_run: dict[int, str] = {}
    summary = ExecutionSummary(records=[], store=store.path)
    results: dict[str, dict] = {}
    sequential = not launcher.remote
    all_tasks: list[RunTask] = []

    def handle(record: dict, reused: bool, run_jobs: list[_Job]) -> None:
        if not reused:
            store.save_record(record)
            if record.get("status") == "failed":
                summary.failed += 1
            else:
                summary.new += 1
        results[record["run_id"]] = record
        if on_record:
            for job in run_jobs[:1]:
                on_record({**record, "label": job.spec.display}, reused)

    def dispatch(tasks: list[RunTask], worker: str) -> None:
        store.mark_running([_running_row(t, force) for t in tasks], worker=worker)
        launcher.run(tasks, execute_task, lambda r: handle(r, False, by_id_all[r["run_id"]]), failure_record)

    def stored_elsewhere(record: dict) -> None:  # computed by another process on this store
        summary.reused += 1
        handle(record, True, by_id_all[record["run_id"]])

    by_id_all: dict[str, list[_Job]] = {}
    for group in groups.values():
        tasks, by_id = _plan_group(group, store, force=force)
        by_id_all.update({k: by_id_all.get(k, []) + v for k, v in by_id.items()})
        for rid, rjobs in by_id.items():
            for j in rjobs:
                job_run[id(j)] = rid
                links.setdefault(j.experiment, []).append(
                    {"run_id": rid, "benchmark": j.spec.benchmark, "seed": j.spec.seed, "method": j.spec.method,
                     "label": j.spec.display})
        stored = {} if force else {r["run_id"]: r for r in store.records(run_ids=[t.run_id for t in tasks])}
        pending = []
        for t in tasks:
            if t.run_id in stored:
                summary.reused += 1
                handle(stored[t.run_id], True, by_id[t.run_id])
            else:
                pending.append(t)
        if sequential:
            run_claimed(store, pending, lambda ts: dispatch(ts, str(os.getpid())), stored_elsewhere, force=force)
        else:
            all_tasks += pending
        for name, planned in links.items():  # link as we go: an interrupted run still shows its plan
            store.register_experiment(name, {**experiments.get(name, {"name": name}),
                                             "n_planned": sum(1 for j in jobs if j.experiment == name)}, planned)
    if not sequential and all_tasks:
        _check_picklable(all_tasks)
        clear_cache()  # workers load their own copies
        run_claimed(store, all_tasks, lambda ts: dispatch(ts, launcher.describe()), stored_elsewhere, force=force)
    for j in jobs:
        rec = results.get(job_run[id(j)])
        if rec is not None:
            summary.records.append({**rec, "label": j.spec.display})
    summary.seconds = time.perf_counter() - t0
    store.log_invocation({"command": command, "experiments": list(dict.fromkeys(j.experiment for j in jobs)),
                          "launcher": launcher.describe(), "planned": len(jobs), "new": summary.new,
                          "reused": summary.reused, "failed": summary.failed,
                          "seconds": round(summary.seconds, 1)})
    return summary


def _running_row(t: RunTask, force: bool) -> dict[str, Any]:
    return {"run_id": t.run_id, "benchmark": t.spec.benchmark, "seed": t.spec.seed, "method": t.spec.method,
            "label": t.spec.display, "params": dict(t.spec.params), "bundle_fingerprint": t.fingerprint,
            "force": force}


def run_experiments(configs: Sequence[Any], store: ResultStore | str | Path, *, workers: int | None = None,
                    launcher: str | None = None, launcher_folder: str | Path | None = None, force: bool = False,
                    cache_dir: str | Path | None = None, progress: bool = True,
                    on_record: Callable[[dict, bool], None] | None = None,
                    start_method: str | None = None, command: str | None = None,
                    benchmarks: Sequence[str] | None = None) -> ExecutionSummary:
    """Run one or more :class:`~gradtune.experiments.config.ExperimentConfig` into one store.

    Runs shared between configs (same benchmark, seed, method, resolved parameters and
    bundle) are computed once and linked to every experiment that plans them.
    ``workers``/``launcher``/``start_method`` override the configs' ``[launcher]`` tables
    (the first config's table is used otherwise). ``benchmarks`` runs only those of the
    configs' benchmarks (:func:`~gradtune.experiments.config.select_benchmarks`: each name
    must be in some config, a config with none is left out, and only the kept benchmarks'
    bundle files must exist); the stored experiments name the ones left out.
    """
    from gradtune.experiments.config import select_benchmarks

    if benchmarks is not None:
        configs, _ = select_benchmarks(configs, benchmarks)
        for cfg in configs:
            cfg.check_paths()
    if not configs:
        raise GradTuneInputError("no experiment configs given")
    names = [c.name for c in configs]
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise GradTuneInputError(f"experiment name(s) {dup} given twice; each config needs its own experiment.name")
    first = configs[0].launcher
    kind = launcher or first.kind
    store = store if isinstance(store, ResultStore) else ResultStore(store_path_for(store))
    folder = launcher_folder or store.path.parent / "submitit"
    options = dict(first.submitit) if kind == "submitit" else {"start_method": start_method or first.start_method}
    lau = make_launcher(kind, workers=workers or first.workers, folder=folder, options=options)
    jobs = []
    for cfg in configs:
        for spec in cfg.run_specs():
            b = cfg.benchmark(spec.benchmark)
            cdir = cache_dir if cache_dir is not None else cfg.cache_dir
            if b.kind == "offline":
                src = BundleSource(b.name, spec.seed, "offline", cache_dir=None if cdir is None else str(cdir),
                                   progress=progress)
            else:
                src = BundleSource(b.name, spec.seed, "file", path=b.path)
            jobs.append((cfg.name, spec, src))
    return execute(jobs, store, experiments={c.name: c.to_dict() for c in configs}, launcher=lau, force=force,
                   on_record=on_record, command=command)


# ---------------------------------------------------------- the demo's entry


def run_grid(specs: Iterable[RunSpec], get_bundle: Callable[[str, int], EmbeddingBundle], root: str | Path,
             *, force: bool = False, on_record: Callable[[dict, bool], None] | None = None,
             experiment: str = "demo", workers: int = 1,
             report_tables: Sequence[str] = ("table1", "table7", "fig2", "fig4")) -> list[dict]:
    """Run every spec into the store ``root/results.sqlite`` (or ``root`` if it is a
    ``.sqlite`` file), skipping stored runs; return each run's record in spec order.

    ``get_bundle(benchmark, seed)`` builds (or loads from a cache) the bundle; it is called
    once per (benchmark, seed) while planning. ``on_record(record, reused)`` is called
    after each run. The runs form the experiment ``experiment`` in the store.
    """
    specs = list(specs)
    jobs = [(experiment, s, BundleSource(s.benchmark, s.seed, "callable", build=get_bundle)) for s in specs]
    cfg = {"name": experiment, "benchmarks": list(dict.fromkeys(s.benchmark for s in specs)),
           "seeds": list(dict.fromkeys(s.seed for s in specs)), "methods": list(dict.fromkeys(s.display for s in specs)),
           "report": {"tables": list(report_tables), "method": "gradtune", "baseline": "erm", "notes": [],
                      "title": None}}
    summary = execute(jobs, store_path_for(root), experiments={experiment: cfg}, launcher=LocalLauncher(workers),
                      force=force, on_record=on_record)
    return summary.records
