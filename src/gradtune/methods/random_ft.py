"""Random fine-tuning: the paper's control for GradTune's selection.

The fine-tuning set is ``M' = min(500, N)`` held-out rows drawn uniformly without
replacement; the ERM head is then fine-tuned on it exactly as GradTune fine-tunes
(the same :class:`~gradtune.finetune.linear.FinetuneConfig` defaults: 500 epochs, SGD
lr 3e-3 cosine, batch 32, wd 1e-4, class-balanced sampler, no reset). Only the
selection differs from GradTune, so the two can be compared seed for seed: the seed is
split the way GradTune splits it (:data:`gradtune._seeding.GRADTUNE_STREAMS`: the first stream
draws the set, the second drives the sampler). No group labels are read.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradtune._seeding import GRADTUNE_STREAMS, seed_streams
from gradtune._validation import check_positive_int
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.methods.base import (
    LinearHead,
    Method,
    MethodResult,
    erm_head,
    finetune_block,
    register_method,
)
from gradtune.selection.select import SIZE, random_subset

__all__ = ["RandomFinetuneMethod"]


@register_method
@dataclass
class RandomFinetuneMethod(Method):
    """Fine-tune the ERM head on ``size`` uniformly random held-out rows.

    Parameters
    ----------
    size : int, default=500
        M'; ``min(size, N)`` rows are drawn.
    finetune : FinetuneConfig, default: the paper's (GradTune's) setting.
    """

    name = "random"
    description = "Random fine-tuning: M'=500 uniformly random held-out rows, GradTune's fine-tuning"

    size: int = SIZE.field(doc="M'; min(size, N) rows are drawn")
    finetune: FinetuneConfig = finetune_block()

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed = check_positive_int(seed, "seed", allow_zero=True)
        head = erm_head(bundle)
        held = bundle.view("heldout")
        size = min(int(self.size), len(held))
        streams = seed_streams(seed, *GRADTUNE_STREAMS)
        idx = random_subset(len(held), size, seed=streams.rng("subset"))
        res = finetune_linear(held.features[idx], held.labels[idx], head.weight, head.bias,
                              self.finetune, seed=streams.integer("finetune"))
        diag = {"selected_rows": held.index[idx].tolist(), "size": size,
                "initial_loss": res.initial_loss, "final_loss": res.final_loss}
        return MethodResult(LinearHead(res.weight, res.bias), diag)
