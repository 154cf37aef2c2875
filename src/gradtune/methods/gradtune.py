"""GradTune as a registered method over an embedding bundle (the paper's defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.estimator import GradTune
from gradtune.finetune.linear import FinetuneConfig
from gradtune.methods.base import (
    FINETUNE_SPACE,
    LinearHead,
    Method,
    MethodResult,
    erm_head,
    register_method,
)

__all__ = ["GradTuneMethod", "ERMMethod"]


@register_method
@dataclass
class GradTuneMethod(Method):
    """Fine-tune the ERM head on the top-k gradient-norm held-out samples plus a
    norm-proportional draw (M'=500, k=400, 500 epochs, class-balanced; paper Sec. 4)."""

    name = "gradtune"
    description = "GradTune (paper defaults): top-k + proportional gradient-norm set, fine-tune last layer"
    search_space: ClassVar[dict[str, list]] = FINETUNE_SPACE

    size: int = 500
    top_k: int = 400
    include_bias: bool = True
    score: str = "grad_norm"
    replace: bool = False
    size_rule: str = "scale"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        head = erm_head(bundle)
        held = bundle.view("heldout")
        tuner = GradTune(self.size, self.top_k, finetune=self.finetune, include_bias=self.include_bias,
                         selection_score=self.score, replace=self.replace, size_rule=self.size_rule, seed=seed)
        tuner.fit_embeddings(held.features, held.labels, weight=head.weight, bias=head.bias)
        r = tuner.report_
        erm_wrong = head.predict(held.features) != held.labels
        diag = {
            # label-only summaries of what was selected (no group labels involved)
            "heldout_size": int(len(held)),
            "heldout_erm_error_rate": float(erm_wrong.mean()),
            "selected_erm_error_rate": float(erm_wrong[r.selected].mean()),
            "selected_rows": held.index[r.selected].tolist(),
            "heldout_scores": r.norms.tolist(),
            "size": r.size,
            "top_k": r.top_k,
            "initial_loss": tuner.finetune_result_.initial_loss,
            "final_loss": tuner.finetune_result_.final_loss,
        }
        return MethodResult(LinearHead(tuner.weight_, tuner.bias_), diag)


@register_method
@dataclass
class ERMMethod(Method):
    """The class-balanced ERM model's head, untouched (the paper's ERM row)."""

    name = "erm"
    description = "ERM (class-balanced), last layer unchanged"

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        return MethodResult(erm_head(bundle), {})
