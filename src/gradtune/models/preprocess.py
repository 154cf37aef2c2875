"""Feeding a GroupedDataset to a model: the preprocessing protocol and the sample dataset.

:func:`make_preprocess` picks the input pipeline that matches a model (images for
ResNets, tokens for text models, tensors otherwise); :class:`SampleDataset` yields
``(x, label, group, index)`` items of chosen rows, with per-(seed, epoch, row)
augmentation generators when training. Training and feature extraction both read
data through these.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from gradtune.data.base import GroupedDataset
from gradtune.models import distributed as gdist
from gradtune.models.classifier import unwrap_model

__all__ = ["Preprocess", "TensorPreprocess", "make_preprocess", "SampleDataset"]


class Preprocess(Protocol):
    """Turns one raw input into a model-ready sample, and a list of samples into a batch."""

    def __call__(self, raw: Any, train: bool = False, generator: torch.Generator | None = None) -> Any: ...

    def collate(self, samples: list[Any]) -> Any: ...


class TensorPreprocess:
    """Raw rows already model-ready (arrays/tensors): converted to tensors and stacked."""

    def __call__(self, raw: Any, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))

    def collate(self, samples: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(samples)


def make_preprocess(model: nn.Module, data: GroupedDataset | None = None, *,
                    image_root: str | os.PathLike | None = None) -> Preprocess:
    """The input pipeline matching a model: images for ResNets, tokens for text models, else tensors.

    For a text model whose dataset holds strings, the model's tokenizer is loaded (from
    local files) here.
    """
    from gradtune.models.resnet import ResNet
    from gradtune.models.text import TextClassifier, TextPreprocess
    from gradtune.models.transforms import ImagePreprocess

    inner = unwrap_model(model)
    if isinstance(inner, ResNet):
        return ImagePreprocess(root=image_root)
    if isinstance(inner, TextClassifier):
        needs_tokenizer = data is not None and len(data) > 0 and isinstance(data.inputs[0], str)
        return TextPreprocess(inner.tokenizer if needs_tokenizer else None, inner.max_length)
    return TensorPreprocess()


class SampleDataset(Dataset):
    """Items ``(x, label, group, index)`` of selected rows of a GroupedDataset.

    Parameters
    ----------
    data : GroupedDataset
    indices : np.ndarray of shape (n,)
        Rows of ``data``; item ``j`` is row ``indices[j]`` and carries ``index = indices[j]``.
    preprocess : Preprocess
    train : bool
        Passes ``train=True`` and a generator seeded by (seed, epoch, row) to ``preprocess``.
    seed : int
    """

    def __init__(self, data: GroupedDataset, indices: np.ndarray, preprocess: Preprocess, *,
                 train: bool, seed: int = 0) -> None:
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.preprocess = preprocess
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Any, int, int, int]:
        row = int(self.indices[j])
        gen = None
        if self.train:
            gen = torch.Generator()
            gen.manual_seed(gdist.mix_seed(self.seed, self.epoch, row, 0xA06))
        x = self.preprocess(self.data.inputs[row], self.train, gen)
        return x, int(self.data.labels[row]), int(self.data.groups[row]), row

    def collate(self, items: list[tuple[Any, int, int, int]]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, ys, gs, idx = zip(*items, strict=True)
        return (self.preprocess.collate(list(xs)), torch.tensor(ys, dtype=torch.int64),
                torch.tensor(gs, dtype=torch.int64), torch.tensor(idx, dtype=torch.int64))
