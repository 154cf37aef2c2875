"""ResNet-50 in plain torch, with torchvision-compatible parameter names,

The network reproduces torchvision's ``resnet50`` (v1.5: the stride sits on the 3x3
convolution of each bottleneck) module for module, so its ``state_dict`` keys are exactly
torchvision's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...,
``layer2.0.downsample.0.weight``, ``layer2.0.downsample.1.*``, ``fc.weight``,
``fc.bias``): an ImageNet weights file from torchvision (``resnet50-0676ba61.pth`` or
``resnet50-11ad3fa6.pth``) loads with ``torch.load(..., weights_only=True)`` without
torchvision being installed. Nothing here ever downloads.

:class:`ResNet` follows gradtune's classifier shape: ``features(x)`` returns the
average-pooled penultimate features (N, d) with d = 8 * width * 4 (2048 for ResNet-50),
``head`` is the final ``nn.Linear`` (``fc``), and ``forward(x) = head(features(x))``.

Its preprocessing (:class:`~gradtune.models.transforms.ImagePreprocess`) is in
:mod:`gradtune.models.transforms`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtune._validation import GradTuneInputError

__all__ = [
    "RESNET50_LAYERS",
    "TORCHVISION_RESNET50_FILES",
    "PretrainedWeightsError",
    "Bottleneck",
    "ResNet",
    "build_resnet",
    "build_resnet50",
    "load_resnet_weights",
]

RESNET50_LAYERS: tuple[int, int, int, int] = (3, 4, 6, 3)
"""Bottleneck blocks per stage of ResNet-50."""

TORCHVISION_RESNET50_FILES: tuple[str, ...] = ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth")
"""File names torchvision gives its ImageNet ResNet-50 weights (V2 first, then V1)."""



class PretrainedWeightsError(FileNotFoundError):
    """Pretrained weights are not on disk; the message says where to put them."""


# --------------------------------------------------------------------------- network
class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck with an identity or projection shortcut.

    Parameters
    ----------
    in_channels : int
        Channels of the input.
    width : int
        Channels of the two inner convolutions; the block outputs ``4 * width``.
    stride : int
        Stride of the 3x3 convolution (and of the projection shortcut).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, 4 * width, H / stride, W / stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A bottleneck ResNet with torchvision's parameter names.

    Parameters
    ----------
    layers : sequence of 4 int, default=(3, 4, 6, 3)
        Blocks per stage; (3, 4, 6, 3) is ResNet-50. Tests use (1, 1, 1, 1).
    num_classes : int, default=1000
        Outputs of the final linear layer ``fc``.
    width : int, default=64
        Channels of the stem and of the first stage's inner convolutions; stage ``i``
        uses ``width * 2**i``. The feature dimension is ``32 * width`` (2048 at 64).
    zero_init_residual : bool, default=False
        Start each block's last BatchNorm scale at zero (an identity block at init).

    Attributes
    ----------
    feature_dim : int
        d, the size of the average-pooled features fed to ``fc``.
    spec : dict
        Arguments that rebuild this architecture (see
        :func:`gradtune.models.classifier.model_from_spec`).
    """

    def __init__(self, layers: Sequence[int] = RESNET50_LAYERS, num_classes: int = 1000,
                 width: int = 64, zero_init_residual: bool = False) -> None:
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise GradTuneInputError(f"layers must be 4 positive block counts, e.g. (3, 4, 6, 3), got {layers}")
        if int(width) < 1 or int(num_classes) < 1:
            raise GradTuneInputError(f"width and num_classes must be >= 1, got width={width}, num_classes={num_classes}")
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        stages = []
        for i, n_blocks in enumerate(layers):
            stage_width = width * 2**i
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(Bottleneck(channels, stage_width, stride))
                channels = stage_width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.feature_dim = channels
        self.spec: dict[str, Any] = {"arch": "resnet", "layers": list(layers), "width": int(width),
                                     "num_classes": int(num_classes)}
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Global torch RNG: callers seed model construction through their own generator
        # scope (e.g. torch.random.fork_rng); see gradtune.training.trainer.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    @property
    def head(self) -> nn.Linear:
        """The final linear layer (``fc``), (num_classes, d)."""
        return self.fc

    def replace_head(self, num_classes: int) -> None:
        """Swap ``fc`` for a freshly initialized ``nn.Linear(d, num_classes)``."""
        self.fc = nn.Linear(self.feature_dim, int(num_classes)).to(self.fc.weight.device)
        self.spec["num_classes"] = int(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features.

        Parameters
        ----------
        x : torch.Tensor of shape (N, 3, H, W), float
            Normalized images (H, W >= 32).

        Returns
        -------
        torch.Tensor of shape (N, d)
            Average-pooled output of ``layer4`` (d = 2048 for ResNet-50).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise GradTuneInputError(f"ResNet expects images of shape (N, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images (N, 3, H, W)."""
        return self.fc(self.features(x))


def build_resnet(layers: Sequence[int] = RESNET50_LAYERS, num_classes: int = 1000, *,
                 width: int = 64, weights: str | os.PathLike | None = None) -> ResNet:
    """A ResNet of any depth/width, optionally loading a weights file (see :func:`build_resnet50`)."""
    path = _resolve_weights(weights) if weights is not None else None
    model = ResNet(layers, num_classes=num_classes, width=width)
    if path is not None:
        load_resnet_weights(model, path)
    return model


def build_resnet50(num_classes: int, weights: str | os.PathLike | None = None) -> ResNet:
    """ResNet-50 with a ``num_classes``-way head.

    Parameters
    ----------
    num_classes : int
        Outputs of the new head.
    weights : {None, 'imagenet'} or path, default=None
        ``None``: random initialization (global torch RNG; seed it in a forked scope).
        A path: a torchvision-format state dict (``resnet50-0676ba61.pth`` /
        ``resnet50-11ad3fa6.pth`` or a gradtune checkpoint of a ResNet-50); every layer
        but ``fc`` is loaded, and ``fc`` is replaced by a new ``num_classes``-way layer
        unless the file's head already has that many outputs.
        ``'imagenet'``: look for torchvision's file in ``$TORCH_HOME/hub/checkpoints``
        (default ``~/.cache/torch/hub/checkpoints``). Nothing is ever downloaded.

    Raises
    ------
    PretrainedWeightsError
        If ``'imagenet'`` weights are not in the cache or a path does not exist.
    GradTuneInputError
        If the file is not a ResNet-50 state dict (names the missing/unexpected keys).
    """
    return build_resnet(RESNET50_LAYERS, num_classes, width=64, weights=weights)


def _hub_checkpoint_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        return Path(torch_home) / "hub" / "checkpoints"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "torch" / "hub" / "checkpoints"


def _resolve_weights(weights: str | os.PathLike) -> Path:
    if isinstance(weights, str) and weights.lower() == "imagenet":
        cache = _hub_checkpoint_dir()
        for name in TORCHVISION_RESNET50_FILES:
            if (cache / name).is_file():
                return cache / name
        raise PretrainedWeightsError(
            f"ImageNet ResNet-50 weights were not found in {cache} (looked for "
            f"{', '.join(TORCHVISION_RESNET50_FILES)}). gradtune never downloads weights. "
            "On a machine with internet, fetch https://download.pytorch.org/models/resnet50-11ad3fa6.pth "
            "(or resnet50-0676ba61.pth, the V1 weights most group-robustness papers use), copy it "
            f"into {cache} (or set TORCH_HOME), or pass its path: weights='/path/to/resnet50-0676ba61.pth' "
            "(CLI/config: [model] weights = \"/path/...\")."
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(
            f"weights file {str(path)!r} does not exist; pass a torchvision-format ResNet state dict "
            "(.pth), 'imagenet' to use the torch hub cache, or None for random initialization"
        )
    return path


def load_resnet_weights(model: ResNet, path: str | os.PathLike) -> None:
    """Load a torchvision-format state dict into ``model`` (weights_only, on CPU).

    Accepts a bare state dict, or a dict holding it under ``'state_dict'``/``'model'``;
    a ``'module.'`` prefix (DataParallel/DDP) is stripped. ``fc`` is loaded only when its
    shape matches; otherwise the model keeps its own head.

    Raises
    ------
    GradTuneInputError
        If keys other than ``fc.*`` are missing or unexpected, or shapes differ.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GradTuneInputError(f"{str(path)!r} does not hold a state dict of tensors")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    own = model.state_dict()
    head_keys = {"fc.weight", "fc.bias"}
    if any(k in state and state[k].shape != own[k].shape for k in head_keys):
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing = sorted(set(own) - set(state) - head_keys)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise GradTuneInputError(
            f"{str(path)!r} does not match this ResNet (layers={model.spec['layers']}, width={model.spec['width']}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}), "
            f"shape mismatch {wrong[:5]} ({len(wrong)}); a torchvision resnet50 file is expected"
        )
    model.load_state_dict(state, strict=False)
