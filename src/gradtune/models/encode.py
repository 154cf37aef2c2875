"""One eval-mode forward pass over rows of a dataset: the final linear layer's inputs and outputs.

A forward hook on the model's final ``nn.Linear`` (see
:func:`gradtune.models.classifier.find_last_linear`) records the layer's input, the
features h (N, d), and its output, the logits z = W h + b (N, C). The model runs in eval
mode on the evaluation preprocessing (no augmentation). Under ``torchrun`` each rank
encodes a strided shard of the rows and rank 0 reassembles them in the original order.

Full-network training (JTT's error set) and embedding extraction
(:mod:`gradtune.embeddings.extract`) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from gradtune._validation import GradTuneInputError
from gradtune.data.base import GroupedDataset
from gradtune.models import distributed as gdist
from gradtune.models.classifier import find_last_linear, unwrap_model
from gradtune.models.preprocess import Preprocess, SampleDataset, make_preprocess

__all__ = ["Encoded", "encode"]


@dataclass
class Encoded:
    """Features and logits of a set of rows, in the order the rows were given.

    Attributes
    ----------
    features : np.ndarray of shape (N, d), float32
        Inputs of the final linear layer.
    logits : np.ndarray of shape (N, C), float32
        Outputs of the final linear layer.
    indices : np.ndarray of shape (N,), int64
        Rows of the dataset.
    """

    features: np.ndarray
    logits: np.ndarray
    indices: np.ndarray


class _HeadRecorder:
    """Forward hook storing the head's input and output of the latest call."""

    def __init__(self) -> None:
        self.inputs: torch.Tensor | None = None
        self.outputs: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.inputs = args[0].detach()
        self.outputs = output.detach()


@torch.inference_mode()
def encode(model: nn.Module, data: GroupedDataset, indices: np.ndarray | None = None, *,
           preprocess: Preprocess | None = None, batch_size: int = 256, num_workers: int = 0,
           device: str | torch.device | None = None, precision: str = "fp32",
           progress: bool = False) -> Encoded | None:
    """Features (N, d) and logits (N, C) of rows of ``data`` in one eval-mode pass.

    Parameters
    ----------
    model : nn.Module
        A classifier whose final layer is an ``nn.Linear`` (DDP wrappers are looked through).
    data : GroupedDataset
    indices : np.ndarray of shape (N,), optional
        Rows to encode, in output order; default all rows.
    preprocess : Preprocess, optional
        Default :func:`gradtune.models.preprocess.make_preprocess` (eval transforms).
    batch_size : int, default=256
        Per-process batch size.
    num_workers : int, default=0
    device : str or torch.device, optional
        Default ``cuda:LOCAL_RANK`` if available, else CPU.
    precision : {'fp32', 'bf16'}, default='fp32'
        ``'bf16'`` uses CUDA autocast; features and logits are returned as float32.
    progress : bool, default=False
        Progress on rank 0: a tqdm bar on a terminal, else a log line every 10 s or 10%.

    Returns
    -------
    Encoded on rank 0 (and in single-process runs); None on other ranks.

    Notes
    -----
    The model's training mode is restored afterwards.
    """
    if batch_size < 1:
        raise GradTuneInputError(f"batch_size must be >= 1, got {batch_size}")
    if precision not in ("fp32", "bf16"):
        raise GradTuneInputError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    info = gdist.get_dist_info()
    inner = unwrap_model(model)
    dev = torch.device(device) if device is not None else info.device
    rows = np.arange(len(data), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0:
        raise GradTuneInputError(f"indices must be a non-empty 1-d array of rows, got shape {rows.shape}")
    if rows.min() < 0 or rows.max() >= len(data):
        raise GradTuneInputError(f"indices must be in [0, {len(data)}), found {rows.min()}..{rows.max()}")
    preprocess = preprocess or make_preprocess(inner, data)
    n_total = rows.size
    local_rows = rows[gdist.shard_positions(n_total, info.rank, info.world_size)]
    dataset = SampleDataset(data, local_rows, preprocess, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=dataset.collate, pin_memory=dev.type == "cuda")
    head = find_last_linear(inner)
    recorder = _HeadRecorder()
    handle = head.register_forward_hook(recorder)
    was_training = inner.training
    inner.to(dev).eval()
    feats: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    use_bf16 = precision == "bf16" and dev.type == "cuda"
    try:
        it: Any = loader
        if progress and info.is_main:
            from gradtune._progress import progress as progress_bar

            it = progress_bar(loader, desc="embedding", unit="batch")
        for x, _, _, _ in it:
            x = x.to(dev, non_blocking=True) if isinstance(x, torch.Tensor) else x
            recorder.inputs = recorder.outputs = None
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                inner(x)
            if recorder.inputs is None:
                raise GradTuneInputError(
                    f"the final nn.Linear found in {type(inner).__name__} was not called in forward(); "
                    "give the model a `head` attribute that holds its last layer"
                )
            feats.append(recorder.inputs.float().reshape(recorder.inputs.shape[0], -1))
            logits.append(recorder.outputs.float().reshape(recorder.outputs.shape[0], -1))
    finally:
        handle.remove()
        inner.train(was_training)
    local = torch.cat([torch.cat(feats), torch.cat(logits)], dim=1)
    d = feats[0].shape[1]
    full = gdist.gather_rows(local, n_total)
    if full is None:
        return None
    full_np = full.numpy()
    return Encoded(np.ascontiguousarray(full_np[:, :d], dtype=np.float32),
                   np.ascontiguousarray(full_np[:, d:], dtype=np.float32), rows)
