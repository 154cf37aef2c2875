"""The one model shape every last-layer method relies on: a backbone and a final ``nn.Linear``.

A gradtune classifier is any ``nn.Module`` with

* ``features(x) -> (N, d)``: the penultimate representation,
* ``head``: the final ``nn.Linear(d, C)``,
* ``forward(x) = head(features(x))`` (up to dropout in training mode) -> (N, C) logits.

:class:`Classifier` builds that shape from any backbone; :class:`~gradtune.models.resnet.ResNet`
and :class:`~gradtune.models.text.TextClassifier` implement it directly.
:func:`find_last_linear` locates the final linear layer of any model (a classifier's
``head``, else the last ``nn.Linear`` registered), which is where feature extraction hooks
and where last-layer fine-tuning acts.

Every builder attaches ``model.spec``, a dict of plain values that
:func:`model_from_spec` turns back into the same architecture (weights aside), so a
checkpoint can be reloaded without knowing how it was made.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradtune._validation import GradTuneInputError

__all__ = ["Classifier", "MLP", "build_mlp_classifier", "find_last_linear", "named_linear", "linear_names", "unwrap_model",
           "model_from_spec", "model_spec"]


class Classifier(nn.Module):
    """A backbone followed by a final linear layer.

    Parameters
    ----------
    backbone : nn.Module
        Maps a batch of inputs to features of shape (N, d).
    head : nn.Linear
        Maps features to logits, ``nn.Linear(d, C)``.
    spec : dict, optional
        How to rebuild this model (see :func:`model_from_spec`); stored in checkpoints.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, *, spec: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise GradTuneInputError(f"head must be a torch.nn.Linear, got {type(head).__name__}")
        self.backbone = backbone
        self.head = head
        self.spec: dict[str, Any] | None = spec

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: Any) -> torch.Tensor:
        """Backbone features (N, d) of a batch ``x``."""
        return self.backbone(x)

    def forward(self, x: Any) -> torch.Tensor:
        """Logits (N, C) of a batch ``x``."""
        return self.head(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network on (N, in_dim) inputs -> (N, hidden[-1]) features.

    Small and deterministic: used for tabular inputs and for fast tests.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (64,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = int(in_dim)
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            d = int(h)
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.net(x.flatten(1).float())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def named_linear(model: nn.Module, layer: nn.Linear | str) -> nn.Linear:
    """``layer`` itself, or the submodule of ``model`` it names (checked to be an ``nn.Linear``).

    Names are looked up in the model and, through wrappers (DDP, DataParallel, compile), in
    the wrapped model.
    """
    if isinstance(layer, nn.Linear):
        return layer
    if isinstance(layer, str):
        modules = dict(unwrap_model(model).named_modules())
        modules.update(model.named_modules())
        if layer not in modules:
            raise GradTuneInputError(f"model has no submodule named {layer!r}; the nn.Linear layers are: "
                                     f"{', '.join(map(repr, linear_names(model))) or 'none'}")
        if not isinstance(modules[layer], nn.Linear):
            raise GradTuneInputError(f"submodule {layer!r} is a {type(modules[layer]).__name__}, not nn.Linear")
        return modules[layer]
    raise GradTuneInputError(f"layer must be an nn.Linear, a module name or None, got {type(layer).__name__}")


def linear_names(model: nn.Module) -> list[str]:
    """Dotted names of the model's ``nn.Linear`` layers, in registration order."""
    return [name for name, m in unwrap_model(model).named_modules() if isinstance(m, nn.Linear)]


def find_last_linear(model: nn.Module, layer: nn.Linear | str | None = None) -> nn.Linear:
    """The model's classification layer chosen without running the model.

    ``layer`` may be the module itself or its dotted name (:func:`named_linear`); with None,
    a classifier's ``head`` attribute wins, otherwise the last ``nn.Linear`` in
    registration order (``model.modules()``). Wrappers (DDP, DataParallel, compile) are
    looked through. This is a registration-order guess;
    :func:`gradtune.embeddings.capture.find_output_layer` checks it against a forward pass.

    Raises
    ------
    GradTuneInputError
        If the model has no ``nn.Linear``, or ``layer`` names no ``nn.Linear``.
    """
    if layer is not None:
        return named_linear(model, layer)
    model = unwrap_model(model)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise GradTuneInputError(
            f"{type(model).__name__} has no torch.nn.Linear layer; gradtune's last-layer methods need "
            "a model whose final layer is an nn.Linear (wrap it: Classifier(backbone, nn.Linear(d, C)))"
        )
    return last


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """The rebuild spec of a model (``model.spec``), or None if it has none."""
    spec = getattr(unwrap_model(model), "spec", None)
    return dict(spec) if isinstance(spec, dict) else None


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an architecture (randomly initialized) from its ``spec``.

    Known ``spec['arch']`` values: ``'resnet'`` (layers, width, num_classes), ``'text'``
    (a transformers config dict and head options, see
    :func:`gradtune.models.text.text_classifier_from_spec`), ``'mlp'`` (in_dim, hidden,
    num_classes). Load the weights afterwards with ``load_state_dict``.

    Raises
    ------
    GradTuneInputError
        If the spec is not a dict or names an unknown architecture.
    """
    if not isinstance(spec, dict) or "arch" not in spec:
        raise GradTuneInputError(f"a model spec must be a dict with an 'arch' key, got {spec!r}")
    arch = spec["arch"]
    if arch == "resnet":
        from gradtune.models.resnet import ResNet

        return ResNet(tuple(spec["layers"]), num_classes=int(spec["num_classes"]), width=int(spec["width"]))
    if arch == "text":
        from gradtune.models.text import text_classifier_from_spec

        return text_classifier_from_spec(spec)
    if arch == "mlp":
        return build_mlp_classifier(int(spec["in_dim"]), int(spec["num_classes"]),
                                    tuple(int(h) for h in spec.get("hidden", (64,))))
    raise GradTuneInputError(f"unknown model arch {arch!r} in spec; known: 'resnet', 'text', 'mlp'")


def build_mlp_classifier(in_dim: int, num_classes: int, hidden: tuple[int, ...] = (64,)) -> Classifier:
    """``Classifier(MLP(in_dim, hidden), nn.Linear(hidden[-1], num_classes))`` with a spec."""
    body = MLP(in_dim, hidden)
    spec = {"arch": "mlp", "in_dim": int(in_dim), "hidden": [int(h) for h in hidden],
            "num_classes": int(num_classes)}
    return Classifier(body, nn.Linear(body.out_dim, int(num_classes)), spec=spec)

