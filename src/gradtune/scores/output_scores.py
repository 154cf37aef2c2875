"""Per-sample scores computed from a model's outputs (logits), not its gradients.

These are the selection signals of GradTune's closest relatives: the
cross-entropy loss (SELF's misclassification variant, JTT's error set) and the
disagreement between an early-stopped and the final model (SELF).

Shapes: N samples, C classes.
"""

from __future__ import annotations

from typing import Any

import torch

from gradtune._validation import GradTuneInputError, check_features, check_labels

__all__ = ["cross_entropy_scores", "disagreement_scores", "correct_mask", "true_class_probability"]


def _logits_labels(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    z = check_features(logits, "logits")
    if z.shape[1] < 2:
        raise GradTuneInputError(f"logits must have at least 2 columns (classes), got {z.shape[1]}")
    y = check_labels(labels, z.shape[1], n=z.shape[0]).to(z.device)
    return z, y


@torch.no_grad()
def cross_entropy_scores(logits: Any, labels: Any) -> torch.Tensor:
    """Per-sample cross-entropy loss, shape (N,): ``logsumexp(z) - z_y``."""
    z, y = _logits_labels(logits, labels)
    return torch.logsumexp(z, dim=1) - z.gather(1, y[:, None]).squeeze(1)


@torch.no_grad()
def true_class_probability(logits: Any, labels: Any) -> torch.Tensor:
    """Softmax probability of the true class ``p_y``, shape (N,)."""
    z, y = _logits_labels(logits, labels)
    return torch.softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)


@torch.no_grad()
def correct_mask(logits: Any, labels: Any) -> torch.Tensor:
    """Boolean (N,): the argmax prediction equals the label."""
    z, y = _logits_labels(logits, labels)
    return z.argmax(dim=1) == y


@torch.no_grad()
def disagreement_scores(early_logits: Any, final_logits: Any) -> torch.Tensor:
    """KL(p_early || p_final) per sample, shape (N,) (SELF's early-stop disagreement)."""
    a = check_features(early_logits, "early_logits")
    b = check_features(final_logits, "final_logits")
    if a.shape != b.shape:
        raise GradTuneInputError(f"early_logits {tuple(a.shape)} and final_logits {tuple(b.shape)} must have the same shape")
    la = torch.log_softmax(a, dim=1)
    lb = torch.log_softmax(b, dim=1)
    return (la.exp() * (la - lb)).sum(dim=1).clamp_min_(0.0)
