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

from gradtune._errors import run_boundary

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
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gradtune.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file name is printed, never refused
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_boundary(lambda: args.func(args), args.command, debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
