"""Start-up time of the command line: ``gradtune --help``, ``--version`` and each
command's ``--help``, each in a fresh interpreter. Target: under 1 s on 2 cores.

Runs the installed ``gradtune`` script when it is on PATH (``--module`` forces
``python -m gradtune.cli`` with this interpreter instead) and prints the median and
the worst of ``--repeat`` runs per command line. Exits 1 when a median exceeds
``--limit`` seconds.

    python benchmarks/cli_startup.py [--repeat 5] [--limit 1.0] [--module]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def command_names() -> list[str]:
    """The sub-command names, read from the parser itself."""
    from gradtune.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def time_once(argv: list[str]) -> float:
    """Wall-clock seconds of one run of ``argv`` (stdout discarded; a failure raises)."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--limit", type=float, default=1.0)
    ap.add_argument("--module", action="store_true", help="run python -m gradtune.cli")
    args = ap.parse_args()
    script = shutil.which("gradtune")
    base = [sys.executable, "-m", "gradtune.cli"] if args.module or script is None else [script]
    lines = [["--help"], ["--version"]] + [[c, "--help"] for c in command_names()]
    time_once(base + ["--version"])  # warm the file cache once
    worst = 0.0
    print(f"{' '.join(base)}  ({args.repeat} runs each)")
    print(f"{'command line':<26} {'median s':>9} {'max s':>7}")
    for extra in lines:
        runs = [time_once(base + extra) for _ in range(args.repeat)]
        med = statistics.median(runs)
        worst = max(worst, med)
        print(f"{'gradtune ' + ' '.join(extra):<26} {med:>9.3f} {max(runs):>7.3f}")
    ok = worst <= args.limit
    print(f"slowest median {worst:.3f} s: {'within' if ok else 'OVER'} the {args.limit:.1f} s target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
