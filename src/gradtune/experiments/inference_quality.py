"""Purity and recall of a method's inferred minority, for reports (never a method input)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.groups.quality import true_minority

__all__ = ["inference_quality_record"]


def inference_quality_record(bundle: EmbeddingBundle, rows: Any) -> dict[str, Any] | None:
    """Purity and recall of a method's inferred minority on the validation rows (diagnostic).

    ``rows`` are the bundle rows (heldout and selection) the method's group inference
    called minority. The true minority is every (class, group) cell smaller than its
    class's mean cell in the TRAINING rows (so a group-balanced validation split still
    has one); purity = P(true | inferred), recall = P(inferred | true), over the
    heldout and selection rows. None when the bundle has no groups or no train rows, or
    the method reports no inferred minority. Never an input of any method.
    """
    if rows is None or bundle.groups is None or not bundle.has_split("train"):
        return None
    train = bundle.view("train")
    minority_cells = true_minority(train.labels, train.groups)
    cells = np.unique(np.stack([train.labels[minority_cells], train.groups[minority_cells]], 1), axis=0)
    val = np.flatnonzero(np.isin(bundle.split, ("heldout", "selection")))
    inferred = np.zeros(bundle.labels.size, dtype=bool)
    inferred[np.asarray(rows, dtype=np.int64)] = True
    key = bundle.labels * (int(bundle.groups.max()) + 1) + bundle.groups
    truth = np.isin(key, cells[:, 0] * (int(bundle.groups.max()) + 1) + cells[:, 1])
    inf, tru = inferred[val], truth[val]
    both = int((inf & tru).sum())
    return {"purity": both / int(inf.sum()) if inf.any() else None,
            "recall": both / int(tru.sum()) if tru.any() else None,
            "n_inferred": int(inf.sum()), "n_true": int(tru.sum())}
