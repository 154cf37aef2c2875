"""Argument types of the command line that check a value before any work starts.

Light at import (the parser is built without torch): names are checked against the static
lists of :mod:`gradtune._names`, optional dependencies with ``importlib.util.find_spec``
(nothing is imported). Only ``device_arg``'s check imports
torch. A refused value ends the command at parse time with argparse's one error line
(exit status 2), before a model, a data set or a heavy library is loaded.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import sys
from pathlib import Path

from gradtune._names import METHOD_NAMES, OFFLINE_BENCHMARK_NAMES

__all__ = ["device_arg", "method_arg", "demo_method_arg", "offline_benchmark_arg",
           "report_out_arg"]


def device_arg(text: str) -> str:
    """An argparse ``type`` for ``--device``: the name, checked to exist on this machine
    before anything is loaded."""
    from gradtune._errors import GradTuneInputError
    from gradtune._validation import check_device

    try:
        check_device(text, "--device")
    except GradTuneInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _unknown(kind: str, text: str, known: tuple[str, ...] | list[str]) -> argparse.ArgumentTypeError:
    close = difflib.get_close_matches(text, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return argparse.ArgumentTypeError(f"unknown {kind} {text!r}; {hint}available: {', '.join(known)}")


def _method_names() -> list[str]:
    """The built-in names, plus plug-ins already registered in this process (a script that
    registers a method and then calls ``gradtune.cli.main``); the registry is not imported."""
    names = set(METHOD_NAMES)
    registry = sys.modules.get("gradtune.methods.base")
    if registry is not None:
        names.update(getattr(registry, "METHODS", {}))
    return sorted(names)


def method_arg(text: str) -> str:
    """An argparse ``type`` for a registered last-layer method's name."""
    names = _method_names()
    if text not in names:
        raise _unknown("method", text, names)
    return text


def demo_method_arg(text: str) -> str:
    """A method name, or ``all`` for every registered method."""
    return text if text == "all" else method_arg(text)


def offline_benchmark_arg(text: str) -> str:
    """An argparse ``type`` for an offline benchmark's name (those of ``gradtune demo``)."""
    if text not in OFFLINE_BENCHMARK_NAMES:
        raise _unknown("benchmark", text, OFFLINE_BENCHMARK_NAMES)
    return text


def report_out_arg(text: str) -> Path:
    """An argparse ``type`` for the folder a report is written to: the path, once
    matplotlib (the report's figures; the ``report`` extra) is known to be installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError(
            "the report's figures need matplotlib, which is not installed: pip install 'gradtune[report]'")
    return Path(text)
