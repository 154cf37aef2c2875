"""SUBY / SUBG / RWY / RWG: subsets and sampling frequencies, checked statistically."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.methods import RWG, RWY, SUBG, SUBY


@pytest.mark.parametrize("name,key", [("suby", "labels"), ("subg", "groups")])
def test_subsample_methods_train_on_balanced_rows(bundle, name, key):
    method = {"suby": SUBY, "subg": SUBG}[name]()
    method.finetune.epochs = 2
    res = method.fit(bundle, seed=1)
    rows = np.array(res.diagnostics["selected_rows"])
    assert (bundle.split[rows] == "heldout").all()
    _, counts = np.unique(getattr(bundle, key)[rows], return_counts=True)
    assert len(set(counts.tolist())) == 1


def test_group_flags_and_missing_groups(bundle):
    assert SUBG.uses_group_labels_train and RWG.uses_group_labels_train
    assert not SUBY.uses_group_labels_train and not RWY.uses_group_labels_train
    b = EmbeddingBundle(features=bundle.features, labels=bundle.labels, split=bundle.split,
                        head_weight=bundle.head_weight, head_bias=bundle.head_bias, n_classes=2)
    SUBY(finetune=replace(SUBY().finetune, epochs=2)).fit(b, seed=0)
    with pytest.raises(BundleError, match="group labels"):
        RWG().fit(b, seed=0)
