"""Model checkpoints: atomic writes, weights-only reads, and rebuilding a model from one.

A checkpoint is a dict of plain values and tensors (``format``, ``epoch``, ``model``,
``spec``, ``optimizer``, ``scheduler``, ``loss_fn``, ``config``, ``history``,
``sampler``, ``meta``), written to a temporary file and moved into place, and read back
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtune._io import atomic_write
from gradtune._validation import GradTuneInputError, load_state_checked
from gradtune.models.classifier import model_from_spec, model_spec, unwrap_model

__all__ = ["CHECKPOINT_FORMAT", "LAST_CHECKPOINT", "save_checkpoint", "load_checkpoint", "load_model"]

CHECKPOINT_FORMAT = "gradtune-checkpoint-v1"
LAST_CHECKPOINT = "last.pt"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _cpu_state(state: Any) -> Any:
    """Tensors to CPU, numpy values to tensors / Python scalars (weights-only loadable)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, np.ndarray):
        return torch.from_numpy(np.array(state))
    if isinstance(state, np.generic):
        return state.item()
    if isinstance(state, dict):
        return {k: _cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_state(v) for v in state)
    return state


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, epoch: int, config: Any = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    loss_state: dict | None = None, history: list[dict] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then ``os.replace``).

    The file is a dict of plain values and tensors, readable with
    ``torch.load(path, weights_only=True)``: ``format``, ``epoch``, ``model`` (state dict),
    ``spec`` (rebuild spec or None), ``optimizer``, ``scheduler``, ``loss_fn``,
    ``config``, ``history``, ``sampler`` ({seed, epoch}: the sampling/augmentation
    generators are re-derived from these), ``meta``.
    """
    path = Path(path)
    inner = unwrap_model(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": _cpu_state(inner.state_dict()),
        "spec": model_spec(inner),
        "optimizer": _cpu_state(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loss_fn": _cpu_state(loss_state) if loss_state is not None else None,
        "config": config.to_dict() if config is not None else None,
        "history": list(history or []),
        "sampler": {"seed": config.seed if config is not None else None, "epoch": int(epoch)},
        "meta": dict(meta or {}),
    }
    _atomic_torch_save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a gradtune checkpoint with ``weights_only=True`` (on CPU).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    GradTuneInputError
        If it is not a gradtune checkpoint or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise GradTuneInputError(f"could not read checkpoint {str(path)!r} (truncated or not a "
                                 f"weights-only torch file): {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise GradTuneInputError(f"{str(path)!r} is not a gradtune checkpoint (format {CHECKPOINT_FORMAT}); "
                                 "write one with gradtune.training.trainer.train or save_checkpoint")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a checkpoint's model from its spec and load its weights; returns it in eval mode.

    Raises
    ------
    GradTuneInputError
        If the checkpoint has no model spec (build the model yourself and
        ``load_state_dict(load_checkpoint(path)['model'])``).
    """
    ckpt = load_checkpoint(path)
    if not ckpt.get("spec"):
        raise GradTuneInputError(
            f"checkpoint {str(path)!r} has no model spec; rebuild the architecture yourself and call "
            "model.load_state_dict(load_checkpoint(path)['model'])"
        )
    try:
        model = model_from_spec(ckpt["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise GradTuneInputError(f"checkpoint {str(path)!r} has an unusable model spec: {err}") from None
    load_state_checked(model, ckpt["model"], f"checkpoint {str(path)!r}")
    return model.to(device).eval()
