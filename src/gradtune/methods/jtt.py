"""Just Train Twice, JTT (Liu et al., 2021), and its last-layer variant.

JTT trains an identification model by ERM for T epochs, takes its *error set* (the
training points it misclassifies), and trains a second model on the training set with
the error set repeated so that each error point appears ``lambda`` times in total
(``ConcatDataset([train] + [error_set] * (lambda - 1))``), shuffled uniformly. The
authors' values: Waterbirds T=60, lambda=100; CelebA T=1, lambda=50; MultiNLI T=2,
lambda=4; CivilComments T=2, lambda=6.

Last-layer variant (``"jtt"``): the identification model is the bundle's ERM head, the
error set is the ``heldout`` rows it misclassifies, and the head is trained on the
upsampled index list of the held-out rows. JTT's second model starts from the
pretrained initialization, not from the first model, so the head is re-initialized by
default (``finetune.reset=True``); no group labels are read.

The error set and the upsampled list come from :mod:`gradtune.objectives.jtt`, which
full-network JTT uses too.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradtune._validation import (
    check_positive_int,
)
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.methods.base import (
    LinearHead,
    Method,
    MethodResult,
    erm_head,
    finetune_block,
    param,
    register_method,
)
from gradtune.objectives.jtt import jtt_error_set, jtt_upsampled_indices

__all__ = ["JTTMethod", "JTT_UPWEIGHT"]

#: The authors' lambda per benchmark.
JTT_UPWEIGHT = {"waterbirds": 100, "celeba": 50, "multinli": 4, "civilcomments": 6}


@register_method
@dataclass
class JTTMethod(Method):
    """Last-layer JTT: upsample the ERM head's held-out errors ``upweight`` times, retrain.

    Parameters
    ----------
    upweight : int, default=100
        lambda (the authors' Waterbirds value; see ``JTT_UPWEIGHT``).
    finetune : FinetuneConfig, default: 20 epochs over the upsampled list, batch 64,
        SGD lr 1e-2 momentum 0.9, wd 1e-4, constant schedule, uniform shuffling,
        ``reset=True``.
    """

    name = "jtt"
    description = "JTT (Liu et al.) on the last layer: ERM head's held-out errors upsampled lambda times"

    upweight: int = param(100, "lambda, how often each error row appears", ge=1, space=(4, 6, 20, 50, 100), fast=5)
    # The second model is trained anew with plain shuffling over the upsampled list.
    finetune: FinetuneConfig = finetune_block(space={"lr": [1e-3, 1e-2]}, epochs=20, batch_size=64, lr=1e-2,
                                              schedule="constant", sampler="uniform", reset=True)

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed = check_positive_int(seed, "seed", allow_zero=True)
        head = erm_head(bundle)
        held = bundle.view("heldout")
        errors = jtt_error_set(head.logits(held.features), held.labels)
        idx = jtt_upsampled_indices(len(held), errors, self.upweight)
        res = finetune_linear(held.features[idx], held.labels[idx], head.weight, head.bias,
                              self.finetune, seed=seed)
        diag = {"error_rows": held.index[errors].tolist(), "error_set_size": int(errors.size),
                "upsampled_size": int(idx.size), "initial_loss": res.initial_loss,
                "final_loss": res.final_loss}
        return MethodResult(LinearHead(res.weight, res.bias), diag)
