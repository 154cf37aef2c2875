"""Command-line entry point: ``gradtune <command> ...``.

Each command lives in its own module under :mod:`gradtune.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Command modules import torch, NumPy and the rest inside ``func``, so that building
the parser (``--help``, ``--version``) stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gradtune._errors import GradTuneInputError
from gradtune._optional import MissingDependencyError

# Modules under gradtune.commands, in the order shown by --help.
COMMANDS: tuple[str, ...] = ("demo", "tune", "train", "embed", "experiment", "report")


def build_parser() -> argparse.ArgumentParser:
    from gradtune import __version__

    parser = argparse.ArgumentParser(
        prog="gradtune",
        description="Group robustness without group labels: fine-tune a classifier's last layer "
        "on its highest-gradient-norm held-out samples (GradTune).",
    )
    parser.add_argument("--version", action="version", version=f"gradtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gradtune.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (GradTuneInputError, ValueError, FileNotFoundError, MissingDependencyError) as err:
        print(f"gradtune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradtune {args.command}: interrupted; completed results are kept on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
