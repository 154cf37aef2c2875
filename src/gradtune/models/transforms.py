"""Image preprocessing in torch ops on tensors, for the ResNet backbones.

:class:`ImagePreprocess`: ImageNet normalization; training = random resized crop to 224
+ horizontal flip (drawn from a per-sample ``torch.Generator``); evaluation = resize to
256 + center crop 224. Image files are decoded with Pillow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gradtune._validation import GradTuneInputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImagePreprocess", "load_image", "normalize", "resize", "center_crop",
           "random_resized_crop"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to an RGB uint8 tensor of shape (3, H, W).

    Raises
    ------
    ImportError
        If Pillow is not installed (``pip install 'gradtune[vision]'``).
    FileNotFoundError
        If the file does not exist.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "decoding image files needs Pillow: pip install 'gradtune[vision]' "
            "(or pass images as uint8/float tensors of shape (3, H, W))"
        ) from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _as_float_image(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(3, H, W) uint8 in [0, 255] or float in [0, 1] -> float32 (3, H, W) in [0, 1]."""
    t = torch.as_tensor(img)
    if t.ndim != 3 or t.shape[0] != 3:
        raise GradTuneInputError(f"an image must have shape (3, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    return t.to(torch.float32)


def resize(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of (3, H, W).

    ``size`` an int resizes the shorter side to it (aspect kept); ``(h, w)`` resizes to
    exactly that (the square ``Resize((256, 256))`` of the group_DRO/DFR code).
    """
    h, w = img.shape[-2:]
    if isinstance(size, int):
        if h <= w:
            out = (size, max(1, int(size * w / h)))
        else:
            out = (max(1, int(size * h / w)), size)
    else:
        out = (int(size[0]), int(size[1]))
    if out == (h, w):
        return img
    return F.interpolate(img[None], size=out, mode="bilinear", align_corners=False, antialias=True)[0]


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Central (3, size, size) crop; images smaller than ``size`` are zero-padded first."""
    h, w = img.shape[-2:]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = img.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img[..., top:top + size, left:left + size]


def random_resized_crop(img: torch.Tensor, size: int, generator: torch.Generator, *,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize to (size, size).

    Ten tries at a box that fits; otherwise the largest central box with a ratio in range
    (the usual Inception-style crop).

    Parameters
    ----------
    img : torch.Tensor of shape (3, H, W), float
    size : int
    generator : torch.Generator
        The only source of randomness.
    """
    h, w = img.shape[-2:]
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            break
    else:
        in_ratio = w / h
        if in_ratio < ratio[0]:
            cw, ch = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            ch, cw = h, int(round(h * ratio[1]))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = img[..., top:top + ch, left:left + cw]
    return resize(crop, (size, size))


def normalize(img: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(img - mean) / std per channel; img is float (..., 3, H, W) in [0, 1]."""
    m = torch.as_tensor(mean, dtype=img.dtype, device=img.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img - m) / s


class ImagePreprocess:
    """Turns one raw image (path or tensor) into a normalized (3, size, size) float tensor.

    Parameters
    ----------
    size : int, default=224
        Output side.
    resize_to : int, default=256
        Evaluation: resize to this before the center crop.
    eval_resize : {'square', 'shorter'}, default='square'
        ``'square'`` resizes to (resize_to, resize_to) as the group_DRO / DFR / SELF
        Waterbirds code does; ``'shorter'`` resizes the shorter side (ImageNet style).
    crop_scale : (float, float), default=(0.7, 1.0)
        Training crop area range, as in the group_DRO / DFR / SELF code
        (torchvision's default is (0.08, 1.0)).
    crop_ratio : (float, float), default=(3/4, 4/3)
    augment : bool, default=True
        Training: random resized crop + horizontal flip; False uses the evaluation path.
    root : path, optional
        Relative image paths are read below this folder.

    Notes
    -----
    ``__call__(raw, train, generator)``: ``raw`` is a file path, a PIL image, or a
    (3, H, W) uint8 (0..255) / float (0..1) tensor or array; ``generator`` drives the
    augmentation.
    """

    def __init__(self, size: int = 224, resize_to: int = 256, *, eval_resize: str = "square",
                 crop_scale: tuple[float, float] = (0.7, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), augment: bool = True,
                 root: str | os.PathLike | None = None) -> None:
        if eval_resize not in ("square", "shorter"):
            raise GradTuneInputError(f"eval_resize must be 'square' or 'shorter', got {eval_resize!r}")
        self.size, self.resize_to, self.eval_resize = int(size), int(resize_to), eval_resize
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.augment = bool(augment)
        self.root = None if root is None else Path(root)

    def load(self, raw: Any) -> torch.Tensor:
        """Raw input -> float (3, H, W) in [0, 1]."""
        if isinstance(raw, (str, os.PathLike)):
            path = Path(raw)
            if not path.is_absolute() and self.root is not None:
                path = self.root / path
            return _as_float_image(load_image(path))
        if hasattr(raw, "convert") and hasattr(raw, "size"):  # a PIL image
            arr = np.asarray(raw.convert("RGB"), dtype=np.uint8)
            return _as_float_image(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        return _as_float_image(raw)

    def __call__(self, raw: Any, train: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        img = self.load(raw)
        if train and self.augment:
            if generator is None:
                raise GradTuneInputError("training augmentation needs a torch.Generator")
            img = random_resized_crop(img, self.size, generator, scale=self.crop_scale,
                                      ratio=self.crop_ratio)
            if float(torch.rand(1, generator=generator)) < 0.5:
                img = img.flip(-1)
        else:
            target = (self.resize_to, self.resize_to) if self.eval_resize == "square" else self.resize_to
            img = center_crop(resize(img, target), self.size)
        return normalize(img.contiguous())

    def collate(self, samples: list[torch.Tensor]) -> torch.Tensor:
        """Stack (3, size, size) samples into (N, 3, size, size)."""
        return torch.stack(samples)
