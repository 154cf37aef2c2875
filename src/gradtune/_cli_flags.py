"""The flags that several commands share, spelled once.

Light at import (no torch, NumPy or pandas): the parser is built for ``--help``.

* ``--force``: recompute or replace what an earlier run left (old spelling
  ``--overwrite``, kept hidden for one release);
* ``--no-progress``: no progress bars or per-run progress lines;
* ``--quiet``: only warnings and errors on stderr (implies ``--no-progress``);
* ``--json``: one JSON object with the results on stdout, everything else on stderr.

An old spelling still works, and the command line warns that it is deprecated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["add_force", "add_no_progress", "add_quiet", "add_json", "deprecated_uses", "progress_enabled",
           "plain_help", "plain_parser", "jsonable", "run_json_aware"]

_DEPRECATED = "_deprecated_flags"


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling of a ``store_true`` flag: sets the new flag's dest and records its use."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        used = list(getattr(namespace, _DEPRECATED, []))
        used.append((option_string or self.option_strings[0], self.new))
        setattr(namespace, _DEPRECATED, used)


def _aliases(p: argparse.ArgumentParser, dest: str, new: str, old: Sequence[str]) -> None:
    for spelling in old:
        p.add_argument(spelling, dest=dest, action=_DeprecatedAlias, new=new)


def add_force(p: argparse.ArgumentParser, help: str, *, old: Sequence[str] = ()) -> None:
    """``--force`` (dest ``force``) with hidden old spellings ``old``."""
    p.add_argument("--force", action="store_true", help=help)
    _aliases(p, "force", "--force", old)


def add_no_progress(p: argparse.ArgumentParser, help: str = "no progress bars or progress lines") -> None:
    """``--no-progress`` (dest ``no_progress``)."""
    p.add_argument("--no-progress", action="store_true", help=help)


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``--quiet`` (dest ``quiet``): log only warnings and errors (and no progress)."""
    p.add_argument("--quiet", action="store_true",
                   help="only warnings and errors on stderr (implies --no-progress where a command has one)")


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json`` (dest ``json``)."""
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with the results on stdout; every other message goes to stderr")


def progress_enabled(args: argparse.Namespace) -> bool:
    """False when ``--no-progress`` or ``--quiet`` was given."""
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False))


def deprecated_uses(args: argparse.Namespace) -> list[str]:
    """One message per old spelling used on the command line."""
    return [f"{old} is deprecated and will be removed; use {new}" for old, new in getattr(args, _DEPRECATED, [])]


_ROLE = re.compile(r":[\w:.-]+:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")
_TICK = re.compile(r"`([^`]*)`")


def _role_text(content: str) -> str:
    title, sep, _ = content.partition("<")
    if sep:
        return title.strip()
    return content[1:].rsplit(".", 1)[-1] if content.startswith("~") else content


def plain_help(text: str | None) -> str | None:
    """``text`` without reStructuredText markup, for ``--help``.

    ``:func:`~a.b.c``` becomes ``c``, ``:mod:`a.b``` becomes ``a.b``, a role with an
    explicit title (``:doc:`title <target>```) keeps the title, ````x```` and ```x``` become ``x``, and a
    paragraph-ending ``::`` (a literal block follows) becomes ``:``.
    """
    if not text:
        return text
    text = _ROLE.sub(lambda m: _role_text(m.group(1)), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _TICK.sub(lambda m: m.group(1), text)
    return re.sub(r"(\S)::(\s*)$", r"\1:\2", text, flags=re.MULTILINE)


def plain_parser(parser: argparse.ArgumentParser) -> None:
    """Strip reStructuredText markup from the description and every help string of ``parser``
    and of its subcommands (see :func:`plain_help`)."""
    parser.description = plain_help(parser.description)
    for action in parser._actions:
        if isinstance(action.help, str) and action.help is not argparse.SUPPRESS:
            action.help = plain_help(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_help(choice.help)
            for sub in dict.fromkeys(action.choices.values()):
                plain_parser(sub)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: paths and other objects as strings, NumPy scalars and arrays
    as numbers and lists, non-finite floats as ``None`` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # NumPy scalars and arrays, torch tensors
        return jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    return str(value)


def run_json_aware(args: argparse.Namespace, body: Callable[[], tuple[int, dict[str, Any]]]) -> int:
    """Run a command's ``body() -> (exit code, results)``; with ``--json``, every message it
    prints goes to stderr and stdout receives only the results, as one JSON object."""
    if not getattr(args, "json", False):
        return body()[0]
    with contextlib.redirect_stdout(sys.stderr):
        code, results = body()
    sys.stdout.write(json.dumps(jsonable(results), allow_nan=False) + "\n")
    sys.stdout.flush()
    return code
