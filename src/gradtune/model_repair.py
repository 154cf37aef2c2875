"""Any registered last-layer method on a PyTorch model: ``gradtune.repair``.

:class:`gradtune.GradTune` is the paper's method. :func:`repair` runs any method of the
registry (by default ``"gradtune-auto"``, the recommended label-free pipeline) on a
model and held-out loader: it captures the inputs of the model's last linear layer
(and, when given, a frozen encoder's features of the same batches), builds an
:class:`~gradtune.embeddings.bundle.EmbeddingBundle` in memory (the held-out rows are
halved by ``split_seed`` into the ``heldout`` rows a method trains on and the
``selection`` rows it chooses on), fits the method and writes the new head into the
layer in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtune._validation import GradTuneInputError, check_positive_int
from gradtune.embeddings.capture import loaders_bundle, resolve_output_layer
from gradtune.embeddings.pooling import POOLINGS, Pooling
from gradtune.methods.base import LinearHead, MethodResult
from gradtune.methods.tuning import build_method

__all__ = ["repair"]


def repair(model: nn.Module, heldout_loader: Any, *, method: str = "gradtune-auto",
           params: dict[str, Any] | None = None,
           encoder: nn.Module | Callable[..., Any] | None = None, encoder_pooling: Pooling = "auto",
           train_loader: Any = None, deployment_loader: Any = None,
           layer: nn.Linear | str | None = None, device: str | torch.device | None = None,
           seed: int = 0, split_seed: int = 0) -> MethodResult:
    """Repair ``model``'s last linear layer in place with a registered method.

    Parameters
    ----------
    model : nn.Module
        A trained classifier whose output comes from a final ``nn.Linear``.
    heldout_loader : iterable of batches
        ``(inputs, labels, ...)`` or mappings (``dict``, ``BatchEncoding``) with a
        ``labels`` key; no group labels. Mapping inputs are passed as keyword
        arguments, tuple inputs as positional ones.
        Halved by ``split_seed`` into the rows the method trains on and the rows it
        chooses its settings on.
    method : str, default="gradtune-auto"
        A name of :func:`gradtune.methods.list_methods`.
    params : dict, optional
        Hyperparameters of the method (dotted keys set sub-fields, e.g.
        ``{"finetune.epochs": 20}``).
    encoder : nn.Module or callable, optional
        A general-purpose frozen encoder, called on each batch's inputs as the model is
        (e.g. the pretrained backbone the model was fine-tuned from, without a head: a
        Hugging Face ``AutoModel``). Its output is reduced to one row per sample by
        ``encoder_pooling``. Group inference reads these features (``encoder_features``).
    encoder_pooling : {"auto", "pooler", "mean", "cls"} or callable, default="auto"
        How the encoder's output becomes (B, e): "auto" takes a (B, e) tensor as is,
        else ``pooler_output`` when present, else the attention-mask-weighted mean of
        ``last_hidden_state`` (padding never counts, so dynamically padded batches of
        different widths give the same rows); a callable ``f(output, inputs) -> (B, e)``
        overrides (see :mod:`gradtune.embeddings.pooling`).
    train_loader : iterable of batches, optional
        Training rows (features and class labels only); ``gradtune-auto`` fits its
        group inference on them when given.
    deployment_loader : iterable of batches, optional
        Unlabeled rows from where the model is used: batches of inputs, ``(inputs, ...)``
        or mappings (a ``labels`` entry, if any, is never read). ``gradtune-auto`` then
        judges a repair by how these rows hold its inferred groups rather than as if
        deployment weighed them equally; without them a repair of a problem with nothing
        to repair can look as good as a real one (``deployment_split`` in its parameters).
    layer : nn.Linear or str, optional
        The layer to repair (a module or its name); default: the ``nn.Linear`` whose
        output is the model's logits, found by tracing one batch (see
        :func:`gradtune.embeddings.capture.find_output_layer`).
    device : optional
        Where to run the forward passes; default: the model's device.
    seed, split_seed : int, default=0
        The method's seed and the seed of the held-out / selection halving.

    Returns
    -------
    MethodResult
        The fitted model (a LinearHead, already written into ``layer``) and the
        method's diagnostics. A method whose model is not linear (e.g. ``dpe``)
        leaves the layer unchanged and returns its model.
    """
    seed = check_positive_int(seed, "seed", allow_zero=True)
    if not callable(encoder_pooling) and encoder_pooling not in POOLINGS:
        raise GradTuneInputError(f"encoder_pooling must be one of {', '.join(POOLINGS)} or a callable "
                                 f"f(output, inputs) -> (B, e), got {encoder_pooling!r}")
    lin, heldout_loader = resolve_output_layer(model, heldout_loader, layer, device=device)
    parts = [("heldout", heldout_loader)] + ([("train", train_loader)] if train_loader is not None else [])
    bundle = loaders_bundle(model, lin, parts, encoder=encoder, pooling=encoder_pooling, device=device,
                            split_seed=split_seed, deployment=deployment_loader)
    result = build_method(method, params or {}).fit(bundle, seed=seed)
    if isinstance(result.model, LinearHead):
        if lin.bias is None and np.any(result.model.bias != 0):
            raise GradTuneInputError(
                f"method {method!r} fitted a bias but the layer has none; the layer is unchanged "
                "(use a layer with a bias, or a method that keeps it at zero)")
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(result.model.weight).to(lin.weight))
            if lin.bias is not None:
                lin.bias.copy_(torch.as_tensor(result.model.bias).to(lin.bias))
    return result
