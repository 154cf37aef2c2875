"""Capture the inputs of a model's last linear layer with a forward hook.

One pass in eval mode over a loader gives the features ``h`` (N, d) that the
last ``nn.Linear`` sees, its logits (N, C), and the labels (N,).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradtune._validation import GradTuneInputError
from gradtune.models.classifier import find_last_linear

__all__ = ["capture_features", "split_batch"]


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, labels) from a batch: a tuple/list ``(x, y, ...)`` or a dict with 'labels'/'label'/'y'."""
    if isinstance(batch, dict):
        for key in ("labels", "label", "y"):
            if key in batch:
                inputs = {k: v for k, v in batch.items() if k not in ("labels", "label", "y", "groups", "group")}
                return inputs, torch.as_tensor(batch[key])
        raise GradTuneInputError("dict batches must have a 'labels' (or 'label'/'y') entry")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise GradTuneInputError("each batch must be (inputs, labels, ...) or a dict with a 'labels' key")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


@torch.no_grad()
def capture_features(model: nn.Module, loader: Any, layer: nn.Linear | None = None, *,
                     device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``; return (features (N, d), logits (N, C), labels (N,)).

    Features are the inputs of ``layer`` and logits its outputs, both on the CPU.
    The model's train/eval mode is restored afterwards.
    """
    lin = find_last_linear(model, layer)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    feats: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        feats.append(inp[0].detach().reshape(inp[0].shape[0], -1).float().cpu())
        outs.append(out.detach().reshape(out.shape[0], -1).float().cpu())

    was_training = model.training
    handle = lin.register_forward_hook(hook)
    model.eval()
    try:
        for batch in loader:
            x, y = split_batch(batch)
            before = len(feats)
            if isinstance(x, dict):
                model(**_to(x, device))
            else:
                model(_to(x, device))
            if len(feats) != before + 1:
                raise GradTuneInputError(
                    f"the chosen layer ran {len(feats) - before} times in one forward pass; expected once. "
                    "Pass the final classification layer explicitly with layer="
                )
            labels.append(y.reshape(-1).cpu())
    finally:
        handle.remove()
        model.train(was_training)
    if not feats:
        raise GradTuneInputError("the held-out loader yielded no batches")
    f, z, y = torch.cat(feats), torch.cat(outs), torch.cat(labels).long()
    if y.shape[0] != f.shape[0]:
        raise GradTuneInputError(f"the loader gave {y.shape[0]} labels for {f.shape[0]} samples")
    return f, z, y
