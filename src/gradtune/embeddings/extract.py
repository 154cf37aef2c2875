"""One forward pass over a dataset: penultimate features and logits into an EmbeddingBundle.

A forward hook on the model's final ``nn.Linear`` (see
:func:`gradtune.models.classifier.find_last_linear`) records the layer's input, the
features h (N, d), and its output, the logits z = W h + b (N, C). The model runs in eval
mode (BatchNorm running statistics, no dropout) on the evaluation preprocessing (no
augmentation), so the features are exactly what the head sees at test time.

Under ``torchrun`` each rank encodes a strided shard of the rows and rank 0 reassembles
them in the original order (:func:`gradtune.models.distributed.gather_rows`) and writes
the bundle; the result is identical to a single-process pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtune._validation import GradTuneInputError
from gradtune.data.base import SPLIT_CODES, GroupedDataset
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.models import distributed as gdist
from gradtune.models.classifier import find_last_linear
from gradtune.models.encode import Encoded, encode
from gradtune.models.preprocess import Preprocess

__all__ = ["Encoded", "encode", "extract_embeddings", "save_embeddings"]

_SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}


def extract_embeddings(model: nn.Module, data: GroupedDataset, indices: np.ndarray | None = None, *,
                       preprocess: Preprocess | None = None, batch_size: int = 256, num_workers: int = 0,
                       device: str | torch.device | None = None, precision: str = "fp32",
                       progress: bool = False, meta: dict[str, Any] | None = None,
                       encoder: nn.Module | None = None) -> EmbeddingBundle | None:
    """An :class:`EmbeddingBundle` of ``data``'s rows: features, logits, the head, labels, splits, groups.

    Parameters
    ----------
    model, data, indices, preprocess, batch_size, num_workers, device, precision, progress
        See :func:`gradtune.models.encode.encode`.
    meta : dict, optional
        Stored in the bundle's ``meta`` (written for directory bundles).
    encoder : nn.Module, optional
        A second network, typically the pretrained backbone the model was fine-tuned
        from (with any final ``nn.Linear``): the inputs of its final linear layer on the
        same rows, with the same preprocessing, become the bundle's
        ``encoder_features`` (N, e), which label-free group inference reads.

    Returns
    -------
    EmbeddingBundle on rank 0 (and single-process runs), None on other ranks. Splits
    are the official ones as strings (``train`` / ``val`` / ``test``); the bundle splits
    ``val`` into held-out / selection halves at load time
    (:meth:`EmbeddingBundle.resolve_heldout`).
    """
    enc = encode(model, data, indices, preprocess=preprocess, batch_size=batch_size,
                 num_workers=num_workers, device=device, precision=precision, progress=progress)
    if enc is None:
        return None
    encoder_features = None
    if encoder is not None:
        enc2 = encode(encoder, data, enc.indices, preprocess=preprocess, batch_size=batch_size,
                      num_workers=num_workers, device=device, precision=precision, progress=progress)
        encoder_features = None if enc2 is None else enc2.features
    head = find_last_linear(model)
    rows = enc.indices
    codes = data.split[rows]
    unknown = sorted(set(np.unique(codes).tolist()) - set(_SPLIT_NAMES))
    if unknown:
        raise GradTuneInputError(f"{data.name}: unknown split code(s) {unknown}; expected {dict(SPLIT_CODES)}")
    split = np.array([_SPLIT_NAMES[int(c)] for c in codes], dtype="<U9")
    n_classes = int(head.out_features)
    return EmbeddingBundle(
        features=enc.features,
        labels=data.labels[rows],
        split=split,
        logits=enc.logits,
        encoder_features=encoder_features,
        head_weight=head.weight.detach().float().cpu().numpy(),
        head_bias=(head.bias.detach().float().cpu().numpy() if head.bias is not None
                   else np.zeros(n_classes, dtype=np.float32)),
        groups=data.groups[rows],
        attributes=data.attributes[rows],
        n_classes=n_classes,
        class_names=list(data.class_names) if len(data.class_names) == n_classes else None,
        group_names=list(data.group_names) if data.group_names else None,
        meta={"dataset": data.name, **(meta or {})},
    )


def save_embeddings(model: nn.Module, data: GroupedDataset, path: str | os.PathLike,
                    indices: np.ndarray | None = None, **kwargs: Any) -> Path | None:
    """Extract (see :func:`extract_embeddings`) and write the bundle atomically on rank 0.

    Returns the path on rank 0 and None on other ranks; all ranks return after the
    file is in place.
    """
    bundle = extract_embeddings(model, data, indices, **kwargs)
    out = None
    if bundle is not None:
        out = bundle.save(path)
    gdist.barrier()
    return out
