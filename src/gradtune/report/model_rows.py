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
    from gradtune.embeddings.capture import loaders_bundle, resolve_output_layer

    lin, heldout_loader = resolve_output_layer(model, heldout_loader, layer, device=device)
    recorder = _ImageRecorder(heldout_loader)
    parts = [("heldout", recorder)] + ([("train", train_loader)] if train_loader is not None else [])
    bundle = loaders_bundle(model, lin, parts, encoder=encoder, device=device, split_seed=split_seed)
    bundle.meta = {"dataset": "model"}
    n_held = int((bundle.split != "train").sum())
    images = None
    if recorder.images and recorder.all_images:
        held_images = _to_uint8(np.concatenate(recorder.images))
        if len(held_images) == n_held:
            images = np.zeros((len(bundle.labels), *held_images.shape[1:]), dtype=np.uint8)
            images[:n_held] = held_images
    return bundle, images
