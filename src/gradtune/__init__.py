"""gradtune: group robustness without group labels by last-layer fine-tuning on
high-gradient-norm held-out samples (GradTune).

The stable public API:

* :func:`grad_norms`, :func:`grad_norms_streaming` — per-sample last-layer gradient norms
* :func:`select_finetune_set` — top-k plus norm-proportional draw
* :func:`finetune_linear`, :class:`FinetuneConfig` — fine-tune a linear head
* :class:`GradTune` — the whole method on embeddings or on a PyTorch model
* :func:`repair` — any registered method (default ``gradtune-auto``, the recommended
  label-free pipeline) on a PyTorch model, with an optional frozen encoder
* :func:`evaluate` and friends — worst-group and other accuracies
* :class:`EmbeddingBundle`, :func:`load_bundle` — the cached-embedding format
"""

from gradtune._validation import GradTuneInputError
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
from gradtune.scores.grad_norms import grad_norms, grad_norms_streaming
from gradtune.selection.select import select_finetune_set

__version__ = "0.1.0"

__all__ = [
    "GradTune",
    "GradTuneReport",
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
    "__version__",
]


def __getattr__(name: str):
    # imported on first use: the method registry is heavier than the core API
    if name == "repair":
        from gradtune.model_repair import repair

        return repair
    raise AttributeError(f"module 'gradtune' has no attribute {name!r}")
