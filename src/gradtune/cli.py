"""Command-line entry point: ``gradtune <command> ...``.

Each command lives in its own module under :mod:`gradtune.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Command modules import torch, NumPy and the rest inside ``func``, so that building
the parser (``--help``, ``--version``) stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import sys

from gradtune._cli_flags import deprecated_uses, plain_parser
from gradtune._errors import GradTuneInputError, run_boundary

# Modules under gradtune.commands, in the order shown by --help.
COMMANDS: tuple[str, ...] = ("demo", "tune", "train", "embed", "experiment", "report", "inspect")


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
    plain_parser(parser)  # descriptions are docstrings: --help shows them without reST markup
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file name is printed, never refused
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logger = logging.getLogger("gradtune")
    level = logger.level
    handler = configure_logging(args.command, quiet=getattr(args, "quiet", False))
    try:
        for message in deprecated_uses(args):
            logger.warning(message)
        return run_boundary(lambda: _no_empty_paths(argv) or args.func(args), args.command, debug=debug,
                            on_error=_json_error if getattr(args, "json", False) else None)
    finally:  # a caller of main() (a script, a test) gets its logging back as it was
        logger.removeHandler(handler)
        logger.setLevel(level)


_PATH_FLAGS = ("--out", "--store", "--embeddings", "--checkpoint", "--root", "--config", "--cache-dir", "--data")


def _no_empty_paths(argv: list[str]) -> None:
    """Refuse an empty path flag (``--out ''``): it would mean the current folder, unasked."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in _PATH_FLAGS and ((eq and not value) or (not eq and i + 1 < len(argv) and argv[i + 1] == "")):
            raise GradTuneInputError(f"{flag} is empty; give a path (use . for the current folder)")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``; with ``--json`` a refusal by the parser (a mistyped name, a
    missing extra) also prints its one JSON object on stdout."""
    if "--json" not in argv:
        return parser.parse_args(argv)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit as stop:
        text = captured.getvalue()
        sys.stderr.write(text)
        if stop.code not in (0, None):
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            _json_error(int(stop.code) if isinstance(stop.code, int) else 2, lines[-1] if lines else "bad arguments")
        raise


def _json_error(code: int, message: str) -> None:
    """With ``--json`` a failure too prints one JSON object on stdout."""
    try:
        sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


class _CommandFormatter(logging.Formatter):
    """INFO lines as they are; warnings and errors prefixed with the command and the level."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"gradtune {self.command}: {record.levelname.lower()}: {text}"
        return text


def configure_logging(command: str, *, quiet: bool = False) -> logging.Handler:
    """Send the library's ``gradtune`` logger to stderr: INFO and above, WARNING with ``quiet``.

    The handler writes to the ``sys.stderr`` of the moment of each message (so a
    redirected or captured stderr receives it). Calling it again replaces the handler it
    installed before.

    Returns
    -------
    logging.Handler
        The installed handler.
    """
    logger = logging.getLogger("gradtune")
    for old in [h for h in logger.handlers if getattr(h, "_gradtune_cli", False)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler._gradtune_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_CommandFormatter(command))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    return handler


class _StderrHandler(logging.StreamHandler):
    """A stream handler bound to whatever ``sys.stderr`` is when a record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - the StreamHandler attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
