"""gradtune: group robustness without group labels by last-layer fine-tuning on
high-gradient-norm held-out samples (GradTune).

The stable public API:

* :func:`grad_norms`, :func:`grad_norms_streaming` — per-sample last-layer gradient norms
* :func:`select_finetune_set` — top-k plus norm-proportional draw
* :func:`finetune_linear`, :class:`FinetuneConfig` — fine-tune a linear head
* :class:`GradTune` — the whole method on embeddings or on a PyTorch model
* :class:`GradTuneClassifier` — GradTune as a scikit-learn classifier on embeddings
  (:class:`AccuracyDropWarning` when fine-tuning lowers accuracy on its set-aside rows)
* :func:`repair` — any registered method (default ``gradtune-auto``, the recommended
  label-free pipeline) on a PyTorch model, with an optional frozen encoder
* :func:`inspect_groups` — the label-free groups of a bundle and the rows that show
  what each inferred minority is (``gradtune inspect`` writes them as a gallery)
* :func:`evaluate` and friends — worst-group and other accuracies
* :class:`EmbeddingBundle`, :func:`load_bundle` — the cached-embedding format

Each name is imported on first use, so that ``import gradtune`` (and the command
line's ``--help``) does not load torch or scikit-learn.

Progress and notices go to the ``gradtune`` logger (and its children), which has only
a ``NullHandler`` until the application configures logging, e.g.
``logging.basicConfig(level=logging.INFO)``; the command line logs them to stderr.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import TYPE_CHECKING, Any

from gradtune._errors import GradTuneInputError


def _read_version() -> str:
    """The installed distribution's version (pyproject.toml is its one source).

    A source tree run without installing (``PYTHONPATH=src``) reads pyproject.toml beside
    ``src/``; anything else gives ``"0+unknown"``.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradtune")
    except PackageNotFoundError:
        pass
    import re
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    # the [project] table's version line; tomllib is not needed for one key
    match = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else "0+unknown"

# The library reports progress and notices on the "gradtune" logger; it stays silent until
# the application (or the command line) configures logging.
logging.getLogger("gradtune").addHandler(logging.NullHandler())

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "GradTune": "gradtune.estimator",
    "GradTuneReport": "gradtune.estimator",
    "GradTuneClassifier": "gradtune.sklearn_api",
    "AccuracyDropWarning": "gradtune.sklearn_api",
    "BundleError": "gradtune.embeddings.bundle",
    "EmbeddingBundle": "gradtune.embeddings.bundle",
    "load_bundle": "gradtune.embeddings.bundle",
    "FinetuneConfig": "gradtune.finetune.linear",
    "FinetuneResult": "gradtune.finetune.linear",
    "finetune_linear": "gradtune.finetune.linear",
    "grad_norms": "gradtune.scores.grad_norms",
    "grad_norms_streaming": "gradtune.scores.streaming",
    "select_finetune_set": "gradtune.selection.select",
    "evaluate": "gradtune.metrics.accuracy",
    "group_accuracies": "gradtune.metrics.accuracy",
    "groups_from_attributes": "gradtune.metrics.accuracy",
    "worst_group_accuracy": "gradtune.metrics.accuracy",
    "worst_class_accuracy": "gradtune.metrics.accuracy",
    "repair": "gradtune.model_repair",
    "inspect_groups": "gradtune.report.inspect",
}

__all__ = [
    "GradTune",
    "GradTuneReport",
    "GradTuneClassifier",
    "AccuracyDropWarning",
    "GradTuneInputError",
    "BundleError",
    "EmbeddingBundle",
    "load_bundle",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune_linear",
    "grad_norms",
    "grad_norms_streaming",
    "select_finetune_set",
    "evaluate",
    "group_accuracies",
    "groups_from_attributes",
    "worst_group_accuracy",
    "worst_class_accuracy",
    "repair",
    "inspect_groups",
    "__version__",
]

if TYPE_CHECKING:  # static analysers see the eager imports
    __version__: str
    from gradtune.embeddings.bundle import BundleError, EmbeddingBundle, load_bundle
    from gradtune.estimator import GradTune, GradTuneReport
    from gradtune.finetune.linear import FinetuneConfig, FinetuneResult, finetune_linear
    from gradtune.metrics.accuracy import (
        evaluate,
        group_accuracies,
        groups_from_attributes,
        worst_class_accuracy,
        worst_group_accuracy,
    )
    from gradtune.model_repair import repair
    from gradtune.report.inspect import inspect_groups
    from gradtune.scores.grad_norms import grad_norms
    from gradtune.scores.streaming import grad_norms_streaming
    from gradtune.selection.select import select_finetune_set
    from gradtune.sklearn_api import AccuracyDropWarning, GradTuneClassifier


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: importlib.metadata scans the path
        value = globals()["__version__"] = _read_version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradtune' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})
