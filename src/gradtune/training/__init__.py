"""Full-network training: the ERM trainer and the full-network robust baselines.

* :mod:`~gradtune.training.config`: :class:`TrainConfig` (Table 3 presets from the packaged configs), the loss hook,
  :class:`EpochEnd` and :class:`TrainResult`;
* :mod:`~gradtune.training.trainer`: :func:`train` (samplers, schedules, seeded
  augmentation, checkpoints and exact resume, torchrun);
* :mod:`~gradtune.training.robust`: full-network JTT and Group DRO on the same trainer.
"""

from gradtune.training.config import TrainConfig, TrainResult, table3_preset
from gradtune.training.trainer import train

__all__ = ["TrainConfig", "TrainResult", "table3_preset", "train"]
