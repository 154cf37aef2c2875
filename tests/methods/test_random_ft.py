"""Random fine-tuning draws distinct, uniform held-out rows and fine-tunes like GradTune."""

from __future__ import annotations

import numpy as np
from scipy.stats import chisquare

from gradtune.finetune.linear import FinetuneConfig
from gradtune.methods import RandomFinetuneMethod


def test_distinct_heldout_rows_and_size_rule(bundle):
    n_held = int((bundle.split == "heldout").sum())
    res = RandomFinetuneMethod(finetune=FinetuneConfig(epochs=1)).fit(bundle, seed=0)
    rows = res.diagnostics["selected_rows"]
    assert res.diagnostics["size"] == min(500, n_held) == len(rows) == len(set(rows))
    res = RandomFinetuneMethod(size=40, finetune=FinetuneConfig(epochs=1)).fit(bundle, seed=0)
    rows = res.diagnostics["selected_rows"]
    assert len(rows) == len(set(rows)) == 40 and (bundle.split[rows] == "heldout").all()


def test_inclusion_is_uniform(bundle):
    held = np.flatnonzero(bundle.split == "heldout")
    hits = np.zeros(bundle.split.size)
    method = RandomFinetuneMethod(size=20, finetune=FinetuneConfig(epochs=0))
    for seed in range(400):
        hits[method.fit(bundle, seed=seed).diagnostics["selected_rows"]] += 1
    assert hits[held].sum() == 400 * 20
    assert chisquare(hits[held]).pvalue > 1e-3


def test_seeds_reproduce_and_differ(bundle):
    cfg = FinetuneConfig(epochs=2)
    a = RandomFinetuneMethod(size=30, finetune=cfg).fit(bundle, seed=1)
    b = RandomFinetuneMethod(size=30, finetune=cfg).fit(bundle, seed=1)
    c = RandomFinetuneMethod(size=30, finetune=cfg).fit(bundle, seed=2)
    assert a.diagnostics["selected_rows"] == b.diagnostics["selected_rows"]
    np.testing.assert_array_equal(a.model.weight, b.model.weight)
    assert a.diagnostics["selected_rows"] != c.diagnostics["selected_rows"]
