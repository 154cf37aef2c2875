"""A model and its held-out loader as a bundle to inspect, keeping the batches' images.

:func:`model_bundle` makes the same in-memory bundle :func:`gradtune.repair` fits on
(the inputs of the model's output layer, its head, optionally a frozen encoder's
features and training rows; the held-out rows halved by ``split_seed``) and, in the
same pass, keeps the held-out batches' inputs when they are images (B, 1 or 3, H, W),
so that ``gradtune.inspect_groups(model, loader)`` can show thumbnails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import EmbeddingBundle

__all__ = ["model_bundle"]


class _ImageRecorder:
    """Iterates ``loader`` unchanged and keeps each batch's inputs when they are image tensors."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.images: list[np.ndarray] = []
        self.all_images = True

    def __iter__(self) -> Iterator[Any]:
        from gradtune.embeddings.capture import split_batch

        for batch in self.loader:
            x, _ = split_batch(batch)
            shape = tuple(getattr(x, "shape", ()))
            if len(shape) == 4 and shape[1] in (1, 3) and hasattr(x, "detach"):
                self.images.append(x.detach().float().cpu().numpy())
            else:
                self.all_images = False
            yield batch


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float images (any normalisation) -> (N, H, W[, 3]) uint8, min-max per image."""
    x = images.transpose(0, 2, 3, 1)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    x = np.round(255 * x).astype(np.uint8)
    return x[..., 0] if x.shape[-1] == 1 else x


def model_bundle(model: Any, heldout_loader: Iterable[Any], *, encoder: Callable[[Any], Any] | None = None,
                 train_loader: Iterable[Any] | None = None, layer: Any = None, device: Any = None,
                 split_seed: int = 0) -> tuple[EmbeddingBundle, np.ndarray | None]:
    """The bundle of ``model`` on ``heldout_loader`` (and ``train_loader``), and the held-out
    images in bundle row order (N, H, W[, 3]) uint8, or None when the inputs are not images.

    The held-out rows come first in the bundle; training rows (if any) after them have
    blank images.
    """
    from gradtune.data.base import split_heldout
    from gradtune.embeddings.capture import capture_batches, resolve_output_layer

    lin, heldout_loader = resolve_output_layer(model, heldout_loader, layer, device=device)
    recorder = _ImageRecorder(heldout_loader)
    parts = [("heldout", recorder)] + ([("train", train_loader)] if train_loader is not None else [])
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    encs: list[np.ndarray] = []
    split: list[np.ndarray] = []
    for name, loader in parts:
        f, _, y, e = capture_batches(model, loader, lin, encoder=encoder, device=device)
        feats.append(f.numpy())
        labels.append(y.numpy())
        if e is not None:
            encs.append(e.numpy())
        split.append(np.full(len(y), "train" if name == "train" else "val", dtype="<U9"))
    n_held = len(labels[0])
    if n_held < 4:
        raise GradTuneInputError(f"the held-out loader gave {n_held} samples; at least 4 are needed "
                                 "(half to infer groups on, half to check them)")
    split_arr = np.concatenate(split)
    held, sel = split_heldout(np.arange(n_held), split_seed)
    split_arr[held] = "heldout"
    split_arr[sel] = "selection"
    w = lin.weight.detach().float().cpu().numpy()
    b = lin.bias.detach().float().cpu().numpy() if lin.bias is not None else np.zeros(w.shape[0], np.float32)
    bundle = EmbeddingBundle(features=np.concatenate(feats), labels=np.concatenate(labels), split=split_arr,
                             encoder_features=None if encoder is None else np.concatenate(encs),
                             head_weight=w, head_bias=b, n_classes=int(w.shape[0]), meta={"dataset": "model"})
    images = None
    if recorder.images and recorder.all_images:
        held_images = _to_uint8(np.concatenate(recorder.images))
        if len(held_images) == n_held:
            images = np.zeros((len(split_arr), *held_images.shape[1:]), dtype=np.uint8)
            images[:n_held] = held_images
    return bundle, images
