"""Per-sample scores: last-layer gradient norms and output-based scores."""

from gradtune.scores.grad_norms import grad_norms, residual_norms
from gradtune.scores.output_scores import (
    correct_mask,
    cross_entropy_scores,
    disagreement_scores,
    true_class_probability,
)
from gradtune.scores.streaming import grad_norms_streaming

__all__ = [
    "grad_norms",
    "grad_norms_streaming",
    "residual_norms",
    "cross_entropy_scores",
    "disagreement_scores",
    "correct_mask",
    "true_class_probability",
]
