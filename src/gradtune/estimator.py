"""The GradTune estimator: score, select and fine-tune, on embeddings or on a model.

>>> from gradtune import GradTune
>>> tuner = GradTune(size=500, top_k=400, seed=0).fit(model, heldout_loader)  # doctest: +SKIP
>>> tuner.report_.selected  # doctest: +SKIP

repairs ``model``'s output ``nn.Linear`` in place. With cached embeddings::

    tuner = GradTune(seed=0).fit_embeddings(features, labels, weight=W, bias=b)
    tuner.weight_, tuner.bias_   # the fine-tuned head
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtune._seeding import GRADTUNE_STREAMS, seed_streams
from gradtune._validation import (
    GradTuneInputError,
    check_choice,
    check_features,
    check_labels,
    check_positive_int,
)
from gradtune.embeddings.capture import capture_features, resolve_output_layer
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.scores.grad_norms import grad_norms
from gradtune.selection.select import SIZE, TOP_K, select_finetune_set

__all__ = ["GradTune", "GradTuneReport", "resolve_set_size"]

SIZE_RULES = ("scale", "error")
SELECTION_SCORES = ("grad_norm", "loss", "residual")


def resolve_set_size(n: int, size: int, top_k: int, rule: str = "scale") -> tuple[int, int]:
    """The (M', k) used on a held-out set of ``n`` samples.

    The paper fixes M'=500, k=400 on held-out sets of 600 to 41k samples. When
    ``n < size``, rule ``'scale'`` uses all ``n`` samples and keeps the paper's
    ratio ``k / M'`` (so k = round(0.8 n) by default); ``'error'`` refuses.
    """
    if size <= n:
        return size, top_k
    if rule == "error":
        raise GradTuneInputError(f"size={size} exceeds the held-out set's {n} samples; lower size or use size_rule='scale'")
    return n, int(round(top_k * n / size))


@dataclass
class GradTuneReport:
    """What a GradTune fit did.

    selected : (M',) indices into the held-out set (top-k first)
    norms : (N,) gradient norms of every held-out sample under the ERM head
    losses : (epochs,) training loss per epoch (see FinetuneResult); ``extra`` holds
        the fine-tuning set's loss before and after (initial_loss, final_loss)
    size, top_k : the M' and k actually used
    """

    selected: np.ndarray
    norms: np.ndarray
    losses: np.ndarray
    size: int
    top_k: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"selected": self.selected.tolist(), "norms": self.norms.tolist(),
                "losses": self.losses.tolist(), "size": self.size, "top_k": self.top_k, **self.extra}


class GradTune:
    """Fine-tune a last linear layer on the held-out samples with the largest gradient norms.

    Parameters
    ----------
    size : int, default=500
        M', the size of the fine-tuning set.
    top_k : int, default=400
        k, how many highest-norm samples enter deterministically; the other
        ``size - top_k`` are drawn in proportion to their norm.
    finetune : FinetuneConfig, optional
        Fine-tuning hyperparameters (default: the paper's vision setting, 500 epochs,
        SGD lr 3e-3 cosine, batch 32, wd 1e-4, class-balanced sampler, no reset).
    include_bias : bool, default=True
        Count the bias in the gradient norm.
    selection_score : {'grad_norm', 'loss', 'residual'}, default='grad_norm'
        The selection score: GradTune's gradient norm; the cross-entropy loss
        (SELF's misclassification score); or ``||p - e_y||`` alone (the gradient
        norm without its feature-norm factor) for ablations. The keyword ``score=``
        is still accepted for it, with a DeprecationWarning: as an attribute it would
        hide the ``score()`` method that scikit-learn tools call.
    replace : bool, default=False
        Draw the proportional part with replacement.
    size_rule : {'scale', 'error'}, default='scale'
        What to do when the held-out set is smaller than ``size`` (see
        :func:`resolve_set_size`).
    seed : int, default=0
        Seeds the proportional draw and the sampler (two independent streams).

    Attributes
    ----------
    weight_ : Tensor (C, d) ; bias_ : Tensor (C,)   the fine-tuned head
    layer_ : nn.Linear   the module :meth:`fit` fine-tuned (only after ``fit(model, ...)``)
    report_ : GradTuneReport
    finetune_result_ : FinetuneResult (includes snapshots if requested)
    """

    def __init__(self, size: int = SIZE.default, top_k: int = TOP_K.default, *, finetune: FinetuneConfig | None = None,
                 include_bias: bool = True, selection_score: str = "grad_norm", replace: bool = False,
                 size_rule: str = "scale", seed: int = 0, score: str | None = None) -> None:
        self.size = check_positive_int(size, "size")
        self.top_k = check_positive_int(top_k, "top_k", allow_zero=True)
        if self.top_k > self.size:
            raise GradTuneInputError(f"top_k={top_k} must not exceed size={size}")
        self.finetune = finetune or FinetuneConfig()
        self.include_bias = bool(include_bias)
        if score is not None:
            warnings.warn("GradTune(score=...) is deprecated; use selection_score=...",
                          DeprecationWarning, stacklevel=2)
            selection_score = score
        self.selection_score = check_choice(selection_score, "selection_score", SELECTION_SCORES)
        self.replace = bool(replace)
        self.size_rule = check_choice(size_rule, "size_rule", SIZE_RULES)
        self.seed = check_positive_int(seed, "seed", allow_zero=True)

    # ----------------------------------------------------------------- scoring
    def scores(self, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        """Per-sample selection scores (N,) under the head (weight, bias)."""
        if self.selection_score == "grad_norm":
            return grad_norms(features, labels=labels, weight=weight, bias=bias,
                              include_bias=self.include_bias and bias is not None)
        from gradtune.scores.grad_norms import residual_norms
        from gradtune.scores.output_scores import cross_entropy_scores

        logits = features @ weight.T + (0 if bias is None else bias)
        if self.selection_score == "loss":
            return cross_entropy_scores(logits, labels)
        return residual_norms(logits, labels)

    # ----------------------------------------------------------- on embeddings
    def fit_embeddings(self, features: Any, labels: Any, *, weight: Any, bias: Any = None) -> GradTune:
        """Score, select and fine-tune a head on held-out embeddings.

        Parameters
        ----------
        features : array-like (N, d)   held-out features (inputs of the last layer)
        labels : array-like (N,)       held-out labels
        weight : array-like (C, d)     the ERM head's weight (not modified)
        bias : array-like (C,), optional

        Returns
        -------
        self, with ``weight_``, ``bias_`` and ``report_`` set.
        """
        h = check_features(features, "features")
        w = check_features(weight, "weight").to(h)
        if w.shape[1] != h.shape[1]:
            raise GradTuneInputError(f"weight has shape {tuple(w.shape)} but features have {h.shape[1]} columns")
        b = None if bias is None else check_features(bias, "bias", ndim=1).to(h)
        y = check_labels(labels, w.shape[0], n=h.shape[0]).to(h.device)
        if h.shape[0] == 0:
            raise GradTuneInputError("the held-out set is empty")
        size, top_k = resolve_set_size(h.shape[0], self.size, self.top_k, self.size_rule)
        streams = seed_streams(self.seed, *GRADTUNE_STREAMS)
        norms = self.scores(h, y, w, b)
        idx = select_finetune_set(norms.cpu().numpy(), size, top_k,
                                  seed=streams.rng("subset"), replace=self.replace)
        ft_seed = streams.integer("finetune")
        idx_t = torch.as_tensor(idx, device=h.device)
        res = finetune_linear(h[idx_t], y[idx_t], w, b, self.finetune, seed=ft_seed)
        self.weight_, self.bias_ = res.weight, res.bias
        self.finetune_result_ = res
        self.report_ = GradTuneReport(idx, norms.cpu().numpy(), res.losses, size, top_k,
                                      {"initial_loss": res.initial_loss, "final_loss": res.final_loss})
        return self

    # --------------------------------------------------------- on a torch model
    def fit(self, model: nn.Module, heldout_loader: Any, *, layer: nn.Linear | str | None = None,
            device: str | torch.device | None = None) -> GradTune:
        """Repair ``model``'s output linear layer in place using an unlabeled-group held-out loader.

        Parameters
        ----------
        model : nn.Module
            A trained classifier whose output (a logits tensor, ``ModelOutput.logits``
            or the first tensor of a tuple) is produced by an ``nn.Linear``.
        heldout_loader : iterable of batches
            Batches ``(inputs, labels, ...)`` or mappings (``dict``, Hugging Face
            ``BatchEncoding``) with a ``labels`` key. Mapping inputs are passed to the
            model as keyword arguments, tuple/list inputs as positional arguments.
            Group labels are never needed.
        layer : nn.Linear or str, optional
            The layer to fine-tune (a module or its name in ``model.named_modules()``);
            default: the ``nn.Linear`` whose output is the model's logits, found by
            tracing the first batch. A model where that is ambiguous is refused with
            the candidates named.
        device : optional
            Where to run the forward pass; default: the model's device.

        Returns
        -------
        self, with ``report_`` (a GradTuneReport), ``layer_`` (the fine-tuned module),
        ``weight_`` and ``bias_`` set.
        """
        heldout_loader = _non_empty_batches(heldout_loader)
        lin, heldout_loader = resolve_output_layer(model, heldout_loader, layer, device=device)
        feats, _, labels = capture_features(model, heldout_loader, lin, device=device)
        self.fit_embeddings(feats, labels, weight=lin.weight.detach(),
                            bias=None if lin.bias is None else lin.bias.detach())
        with torch.no_grad():
            lin.weight.copy_(self.weight_.to(lin.weight))
            if lin.bias is not None:
                lin.bias.copy_(self.bias_.to(lin.bias))
        self.layer_ = lin
        return self


def _batch_rows(batch: Any) -> int | None:
    """The number of labelled rows of a loader batch, when it can be told without a forward pass."""
    if isinstance(batch, Mapping):
        labels = batch.get("labels")
    elif isinstance(batch, (tuple, list)) and len(batch) > 1:
        labels = batch[1]
    else:
        return None
    shape = getattr(labels, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


def _non_empty_batches(loader: Any) -> Iterator[Any]:
    """``loader`` without its batches of 0 rows (the last batch of some samplers): they hold
    nothing to score, and a forward pass over them cannot reshape its features."""
    for batch in loader:
        if _batch_rows(batch) != 0:
            yield batch
