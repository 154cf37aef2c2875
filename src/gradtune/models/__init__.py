"""Backbones with a final ``nn.Linear`` head, their input pipelines and checkpoints.

* :mod:`~gradtune.models.classifier`: the classifier shape (``features``, ``head``) and
  :func:`find_last_linear`;
* :mod:`~gradtune.models.resnet`: ResNet-50 with torchvision parameter names;
* :mod:`~gradtune.models.transforms`: image loading and preprocessing;
* :mod:`~gradtune.models.text`: BERT-style classifiers via transformers, tokenization;
* :mod:`~gradtune.models.preprocess`: matching a model to its input pipeline, the sample dataset;
* :mod:`~gradtune.models.checkpoint`: atomic checkpoints, weights-only loading;
* :mod:`~gradtune.models.mlp`: the ERM MLP on precomputed features;
* :mod:`~gradtune.models.distributed`: torchrun / DDP helpers and sharded seeded sampling.

Training whole networks lives in :mod:`gradtune.training`.
"""

from gradtune.models.checkpoint import load_checkpoint, load_model
from gradtune.models.classifier import Classifier, find_last_linear, model_from_spec, unwrap_model
from gradtune.models.resnet import ResNet, build_resnet, build_resnet50
from gradtune.models.transforms import ImagePreprocess

__all__ = [
    "Classifier",
    "find_last_linear",
    "model_from_spec",
    "unwrap_model",
    "ImagePreprocess",
    "ResNet",
    "build_resnet",
    "build_resnet50",
    "load_checkpoint",
    "load_model",
]
