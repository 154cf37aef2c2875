"""``gradtune run``: run experiment configs (datasets x methods x seeds x grids) into one results store.

Examples::

    gradtune run offline-table1 --workers 2                       # a packaged config, by name
    gradtune run offline-table1 offline-ablation-k --out results  # several configs, one store
    gradtune run my-grid.toml --launcher submitit                  # SLURM through submitit
    GRADTUNE_BUNDLES=bundles gradtune run paper-table1 --benchmarks waterbirds  # the datasets you have
    gradtune run --list                                            # the packaged configs

Runs are stored in OUT/results.sqlite as they finish; a rerun skips finished runs
(``--force`` recomputes them), so an interrupted grid resumes where it stopped. Write the
paper's tables and figures with ``gradtune report OUT --out OUT/report`` (or ``--report``).

Relative paths on the command line and in environment variables (``GRADTUNE_BUNDLES``) are
taken from the current directory; a relative path written in your own config file is
taken from that file's folder. ``--benchmarks`` runs a config on some of its benchmarks:
the bundle files of the others are not needed, and the report names them as absent.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gradtune._cli_flags import (
    add_force,
    add_json,
    add_no_progress,
    add_quiet,
    progress_enabled,
    run_json_aware,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run experiment configs (grids over datasets, methods, seeds) into a results store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", metavar="CONFIG",
                   help="config files (.toml; .yaml with PyYAML) or names of packaged configs")
    p.add_argument("--out", type=Path, default=Path("gradtune-results"),
                   help="results folder: the store is OUT/results.sqlite (default: gradtune-results)")
    p.add_argument("--benchmarks", nargs="+", default=None, metavar="NAME",
                   help="run only these benchmarks of the configs (names as in the config, e.g. waterbirds; "
                        "space- or comma-separated); the others' bundles are not needed")
    p.add_argument("--bundles", type=Path, default=None, metavar="DIR",
                   help="the value of ${GRADTUNE_BUNDLES} in bundle paths (the packaged paper configs' folder of "
                        "bundles); default: the environment variable")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (default: the config's launcher.workers, else 1)")
    p.add_argument("--launcher", choices=("local", "submitit"), default=None,
                   help="local processes, or submitit jobs (SLURM); default: the config's launcher.kind")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="submitit executor (default: submitit's choice, SLURM when available)")
    add_force(p, "recompute runs that are already stored")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="offline benchmarks' feature/bundle cache (default: the config's, else ~/.cache/gradtune)")
    p.add_argument("--mlflow", action="store_true", help="also log each new run to MLflow (needs mlflow)")
    p.add_argument("--report", action="store_true", help="write the report into OUT/report afterwards")
    p.add_argument("--dry-run", action="store_true", help="validate the configs and print the runs; run nothing")
    p.add_argument("--list", action="store_true", help="list the packaged configs and exit")
    add_no_progress(p, "no per-run progress lines")
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_json_aware(args, lambda: _run(args))


def _run(args: argparse.Namespace) -> tuple[int, dict]:
    """Run (or list, or dry-run) the configs; the exit code and the --json results."""
    from gradtune._validation import GradTuneInputError
    from gradtune.experiments.config import packaged_configs
    from gradtune.results.records import store_path_for
    from gradtune.workflows.experiment import benchmark_names, load_selected, run_configs

    if args.list:
        for name, path in packaged_configs().items():
            first = next((line.strip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")),
                         "")
            print(f"{name:28s} {first}")
        return 0, {"configs": {name: path for name, path in packaged_configs().items()}}
    if not args.configs:
        hint = (f"; --benchmarks takes every name after it ({' '.join(args.benchmarks)}), so put the configs first"
                if args.benchmarks else "")
        raise GradTuneInputError(f"give at least one CONFIG (a .toml file or a packaged name; see --list){hint}")
    if args.workers is not None and args.workers < 1:
        raise GradTuneInputError(f"--workers must be >= 1, got {args.workers}")
    configs = load_selected(args.configs, benchmarks=args.benchmarks, bundles=args.bundles)
    if args.dry_run:
        for c in configs:
            specs = c.run_specs()
            for spec in specs:  # build every method, so a bad hyperparameter fails here, not at run time
                spec.build()
            print(f"{c.name}: {len(specs)} runs = {len(c.benchmarks)} benchmarks x {len(c.seeds)} seeds x "
                  f"{len(c.variants)} settings; report: {', '.join(c.report.tables)}"
                  + (f"; absent: {', '.join(c.absent)}" if c.absent else ""))
            for v in c.variants:
                print(f"    {v.label}: {v.params}")
        return 0, {"dry_run": True, "runs": {c.name: len(c.run_specs()) for c in configs}}
    n_runs = sum(len(c.run_specs()) for c in configs)
    print(f"{n_runs} planned runs from {', '.join(c.name for c in configs)} -> {store_path_for(args.out)}",
          file=sys.stderr)
    parts = ["gradtune", "run", *args.configs, "--out", str(args.out)]
    if args.benchmarks:
        parts += ["--benchmarks", *benchmark_names(args.benchmarks)]
    for flag, value in (("--bundles", args.bundles), ("--workers", args.workers), ("--launcher", args.launcher),
                        ("--cluster", args.cluster), ("--cache-dir", args.cache_dir)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [f for f, on in (("--force", args.force), ("--mlflow", args.mlflow)) if on]
    outcome = run_configs(configs, args.out, workers=args.workers, launcher=args.launcher, cluster=args.cluster,
                          force=args.force, cache_dir=args.cache_dir, mlflow=args.mlflow, progress=progress_enabled(args),
                          on_record=print_progress if progress_enabled(args) else None,
                          command=" ".join(shlex.quote(p) for p in parts), report=args.report)
    summary = outcome.summary
    print(f"{summary.new} runs computed, {summary.reused} already stored, {summary.failed} failed; "
          f"{summary.seconds:.0f} s; store: {outcome.store}")
    if summary.failed:
        for r in summary.records:
            if r.get("status") == "failed":
                last = (r.get("error") or "").strip().splitlines()[-1:] or [""]
                print(f"  FAILED {r['benchmark']} seed {r['seed']} {r['label']}: {last[0]}", file=sys.stderr)
    results = {"new": summary.new, "reused": summary.reused, "failed": summary.failed,
               "seconds": summary.seconds, "store": outcome.store, "report": None,
               "failed_runs": [{"benchmark": r["benchmark"], "seed": r["seed"], "label": r["label"]}
                               for r in summary.records if r.get("status") == "failed"]}
    if outcome.report is not None:
        res = outcome.report
        results["report"] = {"paths": res.paths, "shown": res.shown}
        print(f"report: {res.paths['markdown']} ({', '.join(res.shown) or 'no complete items'})")
    else:
        print(f"write the tables and figures with: gradtune report {args.out} --out {args.out / 'report'}")
    return (1 if summary.failed else 0), results


def print_progress(record: dict, reused: bool) -> None:
    """A one-line progress report on stderr (the CLI's ``on_record``)."""
    ev = (record.get("evaluation") or {}).get("test") or {}
    wga = ev.get("worst_group_accuracy")
    acc = ev.get("accuracy")
    if record.get("status") == "failed":
        state = "FAILED: " + (record.get("error") or "").strip().splitlines()[-1][:120]
    else:
        state = "stored" if reused else f"{record.get('fit_seconds', 0):.1f}s"
    print(f"  {record['benchmark']:>16s} seed {record['seed']} {record['label'][:44]:>44s}: "
          f"avg {100 * acc if acc is not None else float('nan'):5.1f}  "
          f"wga {100 * wga if wga is not None else float('nan'):5.1f}  ({state})", file=sys.stderr)
