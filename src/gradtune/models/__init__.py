"""Backbones with a final ``nn.Linear`` head, their preprocessing, and the full-network ERM trainer.

* :mod:`~gradtune.models.classifier`: the classifier shape (``features``, ``head``) and
  :func:`find_last_linear`;
* :mod:`~gradtune.models.resnet`: ResNet-50 with torchvision parameter names, image preprocessing;
* :mod:`~gradtune.models.text`: BERT-style classifiers via transformers, tokenization;
* :mod:`~gradtune.models.trainer`: :class:`TrainConfig` (Table 3 presets), :func:`train`,
  checkpoints and resume;
* :mod:`~gradtune.models.distributed`: torchrun / DDP helpers and sharded seeded sampling.
"""

from gradtune.models.classifier import Classifier, find_last_linear, model_from_spec, unwrap_model
from gradtune.models.resnet import ImagePreprocess, ResNet, build_resnet, build_resnet50
from gradtune.models.trainer import (
    TABLE3_PRESETS,
    TrainConfig,
    TrainResult,
    load_checkpoint,
    load_model,
    train,
)

__all__ = [
    "Classifier",
    "find_last_linear",
    "model_from_spec",
    "unwrap_model",
    "ImagePreprocess",
    "ResNet",
    "build_resnet",
    "build_resnet50",
    "TABLE3_PRESETS",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "load_model",
    "train",
]
