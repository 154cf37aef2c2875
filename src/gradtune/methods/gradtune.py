"""GradTune as a registered method over an embedding bundle (the paper's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.estimator import SELECTION_SCORES, SIZE_RULES, GradTune
from gradtune.finetune.linear import FinetuneConfig
from gradtune.methods.base import (
    LinearHead,
    Method,
    MethodResult,
    erm_head,
    finetune_block,
    param,
    register_method,
)
from gradtune.selection.select import SIZE, TOP_K

__all__ = ["GradTuneMethod", "ERMMethod"]


@register_method
@dataclass
class GradTuneMethod(Method):
    """Fine-tune the ERM head on the top-k gradient-norm held-out samples plus a
    norm-proportional draw (M'=500, k=400, 500 epochs, class-balanced; paper Sec. 4)."""

    name = "gradtune"
    description = "GradTune (paper defaults): top-k + proportional gradient-norm set, fine-tune last layer"

    size: int = SIZE.field()
    top_k: int = TOP_K.field()
    include_bias: bool = param(True, "the gradient norm counts the bias as well as the weight")
    score: str = param("grad_norm", "the selection score", choices=SELECTION_SCORES)
    replace: bool = param(False, "draw the proportional part with replacement")
    size_rule: str = param("scale", "what a held-out set smaller than size does", choices=SIZE_RULES)
    finetune: FinetuneConfig = finetune_block()

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
