"""``gradtune report``: the paper's tables and figures from a results store, and nothing else.

Example::

    gradtune report gradtune-results --out gradtune-results/report

Reads RESULTS (a results.sqlite file, or a folder holding one) and writes report.md,
a self-contained report.html, results.csv, tables.csv, one CSV per table and
figures/*.png. An item (Table 1, 4, 5, 6, 7; Figures 2-5) appears only when the store
holds every run its experiments planned; the report names what is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradtune._cli_flags import add_quiet
from gradtune._cli_types import report_out_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the paper's tables and figures from a results store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, metavar="RESULTS_DB_OR_DIR",
                   help="a results.sqlite file or a folder with one (e.g. the --out of `gradtune run`)")
    p.add_argument("--out", type=report_out_arg, required=True, help="report folder")
    p.add_argument("--partial", action="store_true",
                   help="also show items whose runs are not all done (marked INCOMPLETE)")
    p.add_argument("--title", default=None, help="report title (default: the first experiment's report.title)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradtune.report.paper_report import write_paper_report

    res = write_paper_report(args.results, args.out, partial=args.partial, title=args.title)
    print(f"shown: {', '.join(res.shown) or 'nothing'}")
    for item, why in res.missing.items():
        print(f"not shown: {item}: {why}")
    print(f"report: {res.paths['markdown']}  {res.paths['html']}  {res.paths['results_csv']}")
    return 0
