"""From scores to the indices of a fine-tuning set."""

from gradtune.selection.select import (
    proportional_draw,
    random_subset,
    select_finetune_set,
    top_k_indices,
)

__all__ = ["select_finetune_set", "top_k_indices", "random_subset", "proportional_draw"]
