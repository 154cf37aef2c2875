"""Group-robustness metrics."""

from gradtune.metrics.accuracy import (
    GroupReport,
    evaluate,
    group_accuracies,
    groups_from_attributes,
    predictions,
    weighted_accuracy,
    worst_class_accuracy,
    worst_group_accuracy,
)

__all__ = [
    "GroupReport",
    "evaluate",
    "group_accuracies",
    "groups_from_attributes",
    "predictions",
    "weighted_accuracy",
    "worst_class_accuracy",
    "worst_group_accuracy",
]
