"""``gradtune demo``: the offline end-to-end comparison on real data (the README's main job)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gradtune._cli_flags import (
    add_force,
    add_json,
    add_no_progress,
    add_quiet,
    progress_enabled,
    run_json_aware,
)
from gradtune._cli_types import demo_method_arg, offline_benchmark_arg, report_out_arg
from gradtune._names import (
    DEMO_BENCHMARKS,
    DEMO_METHODS,
    METHOD_NAMES,
    OFFLINE_BENCHMARK_NAMES,
    name_list,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: GradTune vs ERM and baselines on three real-data benchmarks",
        description="Train ERM on three offline benchmarks (Fashion-MNIST with an injected background, "
        "Amazon reviews x negation, Adult income x sex), run ERM / random fine-tuning / loss-top-k / "
        "GradTune / gradtune-auto / DFR over seeds, print a paper-style table and write a report folder. "
        "Finished runs are cached: a second run only reads them.",
    )
    p.add_argument("--benchmarks", nargs="+", default=None, metavar="NAME", type=offline_benchmark_arg,
                   help=f"offline benchmarks, some of: {name_list(OFFLINE_BENCHMARK_NAMES)} "
                   f"(default: {name_list(DEMO_BENCHMARKS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD", type=demo_method_arg,
                   help=f"registered last-layer methods, some of: {name_list(METHOD_NAMES)}; or 'all' for every "
                   f"registered one (default: {name_list(DEMO_METHODS)})")
    # a str default goes through type= at parse time too: matplotlib is checked before any work
    p.add_argument("--out", type=report_out_arg, default="gradtune-demo-report", help="report folder")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature/bundle cache (default $GRADTUNE_CACHE_DIR, else $XDG_CACHE_HOME/gradtune, "
                        "else ~/.cache/gradtune)")
    add_force(p, "recompute bundles and runs")
    add_no_progress(p, "no per-run progress lines")
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_json_aware(args, lambda: _run(args))


def _run(args: argparse.Namespace) -> tuple[int, dict]:
    """Run the demo and print its table; the exit code and the --json results."""
    from gradtune._validation import GradTuneInputError
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS
    from gradtune.workflows.demo import DEFAULT_BENCHMARKS, DEFAULT_METHODS, DemoConfig, run_demo

    args.benchmarks = list(DEFAULT_BENCHMARKS) if args.benchmarks is None else args.benchmarks
    args.methods = list(DEFAULT_METHODS) if args.methods is None else args.methods

    unknown = [b for b in args.benchmarks if b not in OFFLINE_BENCHMARKS]
    if unknown:
        raise GradTuneInputError(f"unknown benchmark(s) {unknown}; available: {sorted(OFFLINE_BENCHMARKS)}")
    cfg = DemoConfig(benchmarks=args.benchmarks, seeds=args.seeds, methods=args.methods, out=args.out,
                     cache_dir=args.cache_dir, force=args.force, progress=progress_enabled(args))
    res = run_demo(cfg)
    table = res["table"]
    print()
    print(res["compact_header"])
    print(res["compact"].to_string(index=False))
    print()
    print(f"{res['counts']['new']} runs computed, {res['counts']['reused']} reused from {args.out / 'runs'}; "
          f"{res['seconds']:.0f} s")
    print(f"report: {res['paths']['markdown']}  {res['paths']['html']}  {res['paths']['csv']}")
    return 0, {"table": table.to_dict(orient="records"), "counts": res["counts"], "seconds": res["seconds"],
               "runs": args.out / "runs", "paths": res["paths"]}
