"""The optimizers, step-size schedules and samplers the trainers accept, named once.

Last-layer fine-tuning (:class:`gradtune.finetune.linear.FinetuneConfig`) and full-network
training (:class:`gradtune.training.config.TrainConfig`) take the same optimizers and
schedules. Their samplers differ by one: fine-tuning draws per-row weights given with the
data (``'weighted'``), full training draws group-balanced from the dataset's groups
(``'group_balanced'``; its per-row weights come through ``train(sample_weights=...)``).
"""

from __future__ import annotations

__all__ = ["OPTIMIZERS", "SCHEDULES", "SAMPLERS", "FINETUNE_SAMPLERS", "TRAIN_SAMPLERS"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
#: Every sampler name; each trainer accepts the subset below.
SAMPLERS: tuple[str, ...] = ("class_balanced", "group_balanced", "uniform", "weighted")
FINETUNE_SAMPLERS: tuple[str, ...] = ("class_balanced", "uniform", "weighted")
TRAIN_SAMPLERS: tuple[str, ...] = ("class_balanced", "group_balanced", "uniform")
