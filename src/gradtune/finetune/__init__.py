"""Last-layer fine-tuning on feature tensors."""

from gradtune.finetune.linear import (
    FinetuneConfig,
    FinetuneResult,
    epoch_batches,
    finetune_linear,
    lr_at,
)

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune_linear", "epoch_batches", "lr_at"]
