"""Find a model's output layer and capture its inputs with a forward hook.

One pass in eval mode over a loader gives the features ``h`` (N, d) that the output
``nn.Linear`` sees, its logits (N, C), and the labels (N,).

The output layer is found by tracing, not by registration order
(:func:`gradtune.models.classifier.find_last_linear` is the registration-order guess): one forward pass
records the output of every ``nn.Linear``, and the layer whose output *is* the logits
the model returns (a tensor, ``ModelOutput.logits``, a ``{"logits": ...}`` mapping or
the first tensor of a tuple) is the one GradTune fine-tunes. When no layer, or more
than one, matches, the model is refused with the candidates named, and ``layer=``
settles it.

Batches are ``(inputs, labels, ...)`` sequences or mappings (``dict``, Hugging Face
``BatchEncoding``) with a ``labels`` / ``label`` / ``y`` entry. Inputs that are a
mapping are passed as keyword arguments, a tuple or list as positional arguments,
anything else as the single argument.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from gradtune._validation import GradTuneInputError, as_label_tensor, check_device
from gradtune.embeddings.pooling import Pooling, pool_encoder_output
from gradtune.models.classifier import find_last_linear, named_linear, unwrap_model

__all__ = ["find_last_linear", "find_output_layer", "resolve_output_layer", "capture_features", "loaders_bundle",
           "split_batch", "batch_inputs", "call_model", "logits_of", "capture_batches"]

LABEL_KEYS = ("labels", "label", "y")
_NON_INPUT_KEYS = (*LABEL_KEYS, "groups", "group")


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, labels) from one batch.

    Parameters
    ----------
    batch : sequence or mapping
        ``(inputs, labels, ...)`` (later entries, e.g. group ids, are ignored) or a
        mapping (``dict``, ``BatchEncoding``) with a ``labels`` / ``label`` / ``y``
        entry; its other entries except ``groups`` / ``group`` are the inputs.

    Returns
    -------
    inputs : the model's inputs (a dict for mapping batches)
    labels : Tensor (B,)
    """
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            if key in batch:
                inputs = {k: v for k, v in batch.items() if k not in _NON_INPUT_KEYS}
                return inputs, torch.as_tensor(batch[key])
        raise GradTuneInputError(
            f"mapping batches must have a 'labels' (or 'label'/'y') entry; this one has keys "
            f"{sorted(map(str, batch.keys()))}")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise GradTuneInputError(
        "each batch must be (inputs, labels, ...) or a mapping with a 'labels' key; got "
        f"{type(batch).__name__}")


def batch_inputs(batch: Any) -> Any:
    """The model's inputs from one batch of unlabeled rows: a mapping's entries but labels and
    groups (present or not, never read), a sequence's first entry, or the batch itself."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in _NON_INPUT_KEYS}
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise GradTuneInputError("an unlabeled batch is an empty sequence; give (inputs, ...) or the inputs")
        return batch[0]
    return batch


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def call_model(model: Any, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple/list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def logits_of(output: Any) -> torch.Tensor | None:
    """The logits in a model's output, or None if there is no tensor to take.

    A tensor is the logits; otherwise a ``logits`` attribute (Hugging Face
    ``ModelOutput``) or key, else the first tensor of a tuple/list.
    """
    if isinstance(output, torch.Tensor):
        return output
    value = getattr(output, "logits", None)
    if value is None and isinstance(output, Mapping):
        value = output.get("logits")
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run ``model`` on, checked to exist; a model on the meta device is refused."""
    if any(q.is_meta for q in model.parameters()):
        raise GradTuneInputError("the model's parameters are on the meta device (no data); load its weights first")
    if device is None:
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    return check_device(device)


def _same_values(out: torch.Tensor, logits: torch.Tensor) -> bool:
    if out.shape[0] != logits.shape[0] or out.numel() != logits.numel():
        return False
    a = out.detach().reshape(out.shape[0], -1).float()
    b = logits.detach().reshape(logits.shape[0], -1).float()
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))


@torch.no_grad()
def find_output_layer(model: nn.Module, inputs: Any, *, device: str | torch.device | None = None
                      ) -> nn.Linear:
    """The ``nn.Linear`` whose output is the logits ``model(inputs)`` returns.

    One eval-mode forward pass with a hook on every ``nn.Linear``; the model's
    train/eval mode is restored afterwards.

    Parameters
    ----------
    model : nn.Module
    inputs : the inputs of one batch (see :func:`split_batch` and :func:`call_model`)
    device : optional
        Where to run the pass; default: the model's device.

    Raises
    ------
    GradTuneInputError
        If the model has no ``nn.Linear``, returns no tensor, or if no layer (or more
        than one) produces its logits; the message names the candidate layers and
        says to pass ``layer=``.
    """
    inner = unwrap_model(model)
    linears = [(name, m) for name, m in inner.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise GradTuneInputError(
            f"{type(inner).__name__} has no torch.nn.Linear layer; gradtune's last-layer methods need "
            "a model whose output comes from an nn.Linear (wrap it: Classifier(backbone, nn.Linear(d, C)))")
    seen: dict[int, list[torch.Tensor]] = {}

    def hook(m: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            seen.setdefault(id(m), []).append(out)

    handles = [m.register_forward_hook(hook) for _, m in linears]
    was_training = model.training
    model.eval()
    try:
        output = call_model(model, _to(inputs, _device_of(model, device)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    logits = logits_of(output)
    if logits is None:
        raise GradTuneInputError(
            f"the model returned a {type(output).__name__} with no logits tensor; return the logits "
            "(or an object with a .logits tensor), or pass the output layer explicitly with layer=")
    exact = [(n, m) for n, m in linears if any(o is logits for o in seen.get(id(m), ()))]
    close = [(n, m) for n, m in linears if any(_same_values(o, logits) for o in seen.get(id(m), ()))]
    matches = exact or close
    if len(matches) == 1:
        return matches[0][1]
    width = logits.reshape(logits.shape[0], -1).shape[1] if logits.ndim else 1
    if matches:
        candidates = [n for n, _ in matches]
        why = "several nn.Linear layers produce the model's logits"
    else:
        candidates = [n for n, m in linears if m.out_features == width] or [n for n, _ in linears]
        why = (f"no nn.Linear produces the logits the model returns (shape {tuple(logits.shape)}): "
               "they are changed after the last linear layer, or computed from several layers")
    raise GradTuneInputError(
        f"cannot tell which layer is the classifier: {why}. Candidates: "
        f"{', '.join(repr(c) for c in candidates)}. Pass the layer to fine-tune with layer= "
        "(the module or its name)")


def _peek(loader: Iterable[Any]) -> tuple[Any, Iterable[Any]]:
    """The first batch, and an iterable that still yields every batch (one-shot iterators too)."""
    it = iter(loader)
    try:
        first = next(it)
    except StopIteration:
        raise GradTuneInputError("the loader yielded no batches") from None
    if it is loader:
        return first, itertools.chain([first], it)
    return first, loader


def resolve_output_layer(model: nn.Module, loader: Iterable[Any], layer: nn.Linear | str | None = None,
                         *, device: str | torch.device | None = None
                         ) -> tuple[nn.Linear, Iterable[Any]]:
    """The layer to fine-tune and a loader to iterate in its place.

    With ``layer`` given (a module or its name) it is used as is; otherwise the first
    batch is traced with :func:`find_output_layer`. The returned iterable yields all
    of ``loader``'s batches, including the one traced when ``loader`` is a one-shot
    iterator.
    """
    if layer is not None:
        return named_linear(model, layer), loader
    first, loader = _peek(loader)
    inputs, _ = split_batch(first)
    return find_output_layer(model, inputs, device=device), loader


@torch.no_grad()
def capture_features(model: nn.Module, loader: Any, layer: nn.Linear | str | None = None, *,
                     device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``; return (features (N, d), logits (N, C), labels (N,)).

    Features are the inputs of ``layer`` (default: the traced output layer, see
    :func:`resolve_output_layer`) and logits its outputs, both on the CPU. The model's
    train/eval mode is restored afterwards.
    """
    lin, loader = resolve_output_layer(model, loader, layer, device=device)
    f, z, y, _ = capture_batches(model, loader, lin, device=device)
    return f, z, y


@torch.no_grad()
def capture_batches(model: nn.Module, loader: Any, layer: nn.Linear, *, device: str | torch.device | None = None,
                    encoder: Any = None, pooling: Pooling = "auto", labeled: bool = True,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One eval-mode pass of ``model`` (and ``encoder``) over ``loader``, hooking ``layer``.
    ``labeled=False``: the batches are unlabeled rows (:func:`batch_inputs`), no label is read.

    Returns
    -------
    features : (N, d) float32, the inputs of ``layer``; logits : (N, C), its outputs;
    labels : (N,) int64 (empty when unlabeled); encoder_features : (N, e) float32,
    ``encoder(inputs)`` (a module or callable) reduced to one row per sample by ``pooling`` (see
    :func:`gradtune.embeddings.pooling.pool_encoder_output`: a (B, e) tensor as is, else
    ``pooler_output``, else the attention-mask-weighted mean of ``last_hidden_state``),
    or None without an encoder. All on the CPU; train/eval modes are restored.
    """
    device = _device_of(model, device)
    feats: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    enc: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        feats.append(inp[0].detach().reshape(inp[0].shape[0], -1).float().cpu())
        outs.append(out.detach().reshape(out.shape[0], -1).float().cpu())

    modes = [(m, m.training) for m in (model, encoder) if isinstance(m, nn.Module)]
    handle = layer.register_forward_hook(hook)
    for m, _ in modes:
        m.eval()
    try:
        for batch in loader:
            x, y = split_batch(batch) if labeled else (batch_inputs(batch), None)
            xd = _to(x, device)
            before = len(feats)
            call_model(model, xd)
            if len(feats) != before + 1:
                raise GradTuneInputError(
                    f"the chosen layer ran {len(feats) - before} times in one forward pass; expected once. "
                    "Pass the final classification layer explicitly with layer="
                )
            if encoder is not None:
                e = pool_encoder_output(call_model(encoder, xd), xd, pooling).float().cpu()
                if enc and e.shape[1] != enc[0].shape[1]:
                    raise GradTuneInputError(
                        f"the encoder gave {enc[0].shape[1]} features per row on the first batch and "
                        f"{e.shape[1]} on a later one; pass pooling= a callable that returns a fixed width")
                enc.append(e)
            if y is not None:
                labels.append(torch.as_tensor(y).reshape(-1).cpu())
    finally:
        handle.remove()
        for m, mode in modes:
            m.train(mode)
    if not feats:
        raise GradTuneInputError("the loader yielded no batches")
    f, z = torch.cat(feats), torch.cat(outs)
    y = as_label_tensor(torch.cat(labels), "the loader's labels") if labeled else torch.zeros(0, dtype=torch.int64)
    if labeled and y.shape[0] != f.shape[0]:
        raise GradTuneInputError(f"the loader gave {y.shape[0]} labels for {f.shape[0]} samples")
    e_all = torch.cat(enc) if encoder is not None else None
    if e_all is not None and e_all.shape[0] != f.shape[0]:
        raise GradTuneInputError(f"the encoder gave {e_all.shape[0]} rows for {f.shape[0]} samples")
    return f, z, y, e_all


def loaders_bundle(model: nn.Module, layer: nn.Linear, parts: list[tuple[str, Iterable[Any]]], *,
                   encoder: Any = None, pooling: Pooling = "auto", device: str | torch.device | None = None,
                   split_seed: int = 0, deployment: Iterable[Any] | None = None) -> Any:
    """An :class:`~gradtune.embeddings.bundle.EmbeddingBundle` of ``model`` on named loaders.

    ``parts`` is ``[("heldout", loader), ("train", loader)?]``: the held-out rows come first
    and are halved by ``split_seed`` into ``heldout`` / ``selection``; training rows follow.
    ``features`` (N, d) are ``layer``'s inputs, the head is ``layer``'s weight (C, d) and bias
    (C,) (zeros without one), ``encoder_features`` (N, e) the pooled ``encoder`` output.
    ``deployment``: a loader of unlabeled rows from deployment, whose ``layer`` inputs become
    ``deployment_features`` (M, d) (a label in its batches is never read).
    """
    import numpy as np

    from gradtune.data.base import split_heldout
    from gradtune.embeddings.bundle import EmbeddingBundle

    feats, labels, encs, split = [], [], [], []
    for name, loader in parts:
        f, _, y, e = capture_batches(model, loader, layer, encoder=encoder, pooling=pooling, device=device)
        feats.append(f.numpy())
        labels.append(y.numpy())
        if e is not None:
            encs.append(e.numpy())
        split.append(np.full(len(y), "train" if name == "train" else "val", dtype="<U9"))
    n_held = len(labels[0])
    if n_held < 4:
        raise GradTuneInputError(f"the held-out loader gave {n_held} samples; at least 4 are needed "
                                 "(half to fit on, half to check on)")
    split_arr = np.concatenate(split)
    held, sel = split_heldout(np.arange(n_held), split_seed)
    split_arr[held] = "heldout"
    split_arr[sel] = "selection"
    w = layer.weight.detach().float().cpu().numpy()
    b = (layer.bias.detach().float().cpu().numpy() if layer.bias is not None
         else np.zeros(w.shape[0], dtype=np.float32))
    dep = None if deployment is None else capture_batches(model, deployment, layer, device=device,
                                                          labeled=False)[0].numpy()
    return EmbeddingBundle(features=np.concatenate(feats), labels=np.concatenate(labels), split=split_arr,
                           encoder_features=np.concatenate(encs) if encs else None, deployment_features=dep,
                           head_weight=w, head_bias=b, n_classes=int(w.shape[0]))
