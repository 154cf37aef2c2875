"""Data balancing on the last layer (Idrissi et al., 2022): SUBY, SUBG, RWY, RWG.

Idrissi et al. train a classifier on data made balanced by one of two schemes:

* **SUB** (subsampling): keep, for every class (SUBY) or group (SUBG), as many rows as
  the smallest one has, drawn at random without replacement, then train with plain
  shuffling;
* **RW** (reweighting, here by sampling): draw every minibatch with replacement with
  probability ``1 / n_class`` (RWY) or ``1 / n_group`` (RWG) per row, as
  ``WeightedRandomSampler`` does.

Here the classifier is the last layer, trained on the ``heldout`` rows (the paper's
protocol for every last-layer method). Idrissi et al. train a new classifier from the
pretrained backbone, so the head is re-initialized by default (``finetune.reset=True``);
set ``reset=False`` to continue from the ERM head instead. The *G variants read group
labels of the held-out rows and declare ``uses_group_labels_train=True``.

The subsample and the weights come from :mod:`gradtune.objectives.sampling`;
:func:`require_groups` is shared with DFR and the other baselines that read group labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from gradtune._seeding import GRADTUNE_STREAMS, seed_streams
from gradtune._threads import torch_threads
from gradtune._validation import check_positive_int
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle, SplitView
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.methods.base import (
    LinearHead,
    Method,
    MethodResult,
    erm_head,
    finetune_block,
    register_method,
)
from gradtune.objectives.sampling import balanced_subsample, inverse_frequency_weights

__all__ = [
    "require_groups",
    "torch_threads",
    "SUBY",
    "SUBG",
    "RWY",
    "RWG",
]


def require_groups(view: SplitView, method: str, split: str) -> np.ndarray:
    """The view's group ids, or a BundleError naming the method that needs them."""
    if view.groups is None:
        raise BundleError(
            f"method {method!r} needs group labels on the {split!r} rows, but the bundle has no "
            "'groups' array; store groups when building the bundle or use a method that does not need them"
        )
    return view.groups


_BALANCING_SPACE: dict[str, list] = {
    "lr": [1e-3, 1e-2, 1e-1],
    "weight_decay": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
}


@dataclass
class _Balancing(Method):
    """Shared code of SUBY / SUBG / RWY / RWG (not registered itself).

    Parameters
    ----------
    finetune : FinetuneConfig, default: 100 epochs, SGD lr 1e-2 momentum 0.9, wd 1e-4,
        constant schedule, batch 32, ``reset=True`` (retrain the head).
        ``sampler`` is used as given by the SUB variants (default: uniform shuffling)
        and replaced by ``'weighted'`` in the RW variants.
    """

    balance_on: ClassVar[str] = "class"  # 'class' or 'group'
    scheme: ClassVar[str] = "subsample"  # 'subsample' or 'reweight'

    # A head trained anew on a balanced (sub)set: constant lr, plain shuffling.
    finetune: FinetuneConfig = finetune_block(space=_BALANCING_SPACE, fast_epochs=3, epochs=100, lr=1e-2,
                                              schedule="constant", sampler="uniform", reset=True)

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed = check_positive_int(seed, "seed", allow_zero=True)
        head = erm_head(bundle)
        held = bundle.view("heldout")
        keys = held.labels if self.balance_on == "class" else require_groups(held, self.name, "heldout")
        streams = seed_streams(seed, *GRADTUNE_STREAMS)
        ft_seed = streams.integer("finetune")
        diag: dict[str, Any] = {"balance_on": self.balance_on, "scheme": self.scheme}
        if self.scheme == "subsample":
            idx = balanced_subsample(keys, streams.rng("subset"))
            res = finetune_linear(held.features[idx], held.labels[idx], head.weight, head.bias,
                                  self.finetune, seed=ft_seed)
            diag["selected_rows"] = held.index[idx].tolist()
        else:
            cfg = replace(self.finetune, sampler="weighted")
            res = finetune_linear(held.features, held.labels, head.weight, head.bias, cfg, seed=ft_seed,
                                  sample_weight=inverse_frequency_weights(keys))
        values, counts = np.unique(keys, return_counts=True)
        diag.update({"key_counts": {int(v): int(c) for v, c in zip(values, counts, strict=True)},
                     "initial_loss": res.initial_loss, "final_loss": res.final_loss})
        return MethodResult(LinearHead(res.weight, res.bias), diag)


@register_method
@dataclass
class SUBY(_Balancing):
    """Subsample the held-out rows to the smallest class, then train the head."""

    name = "suby"
    description = "SUBY (Idrissi et al.): class-balanced subsample of held-out rows, retrain last layer"
    balance_on = "class"
    scheme = "subsample"


@register_method
@dataclass
class SUBG(_Balancing):
    """Subsample the held-out rows to the smallest group (needs group labels)."""

    name = "subg"
    description = "SUBG (Idrissi et al.): group-balanced subsample of held-out rows, retrain last layer"
    uses_group_labels_train = True
    uses_group_labels_val = True
    balance_on = "group"
    scheme = "subsample"


@register_method
@dataclass
class RWY(_Balancing):
    """Sample held-out rows with probability 1 / n_class (with replacement)."""

    name = "rwy"
    description = "RWY (Idrissi et al.): 1/n_class sampling of held-out rows, retrain last layer"
    balance_on = "class"
    scheme = "reweight"


@register_method
@dataclass
class RWG(_Balancing):
    """Sample held-out rows with probability 1 / n_group (needs group labels)."""

    name = "rwg"
    description = "RWG (Idrissi et al.): 1/n_group sampling of held-out rows, retrain last layer"
    uses_group_labels_train = True
    uses_group_labels_val = True
    balance_on = "group"
    scheme = "reweight"
