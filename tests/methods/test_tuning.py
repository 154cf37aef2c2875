"""Hyperparameter selection: grids, scoring, group-label bookkeeping, and no test rows."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig
from gradtune.methods import list_methods
from gradtune.methods.tuning import (
    build_method,
    expand_grid,
    search_space,
    select_hyperparameters,
)
from tests.methods.conftest import FAST_PARAMS, garbage_test_rows


def test_expand_grid_order():
    assert expand_grid({}) == [{}]
    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ValueError, match="non-empty"):
        expand_grid({"a": []})


def test_build_method_nested_keys():
    m = build_method("gradtune", {"finetune.epochs": 7, "top_k": 300})
    assert m.finetune.epochs == 7 and m.top_k == 300 and m.finetune.lr == FinetuneConfig().lr
    with pytest.raises(ValueError, match="not a parameter"):
        build_method("gradtune", {"nope": 1})


def test_every_method_has_a_space():
    for name in list_methods():
        space = search_space(name)
        assert isinstance(space, dict)
        for key in space:
            build_method(name, {key: space[key][0]})  # every key is a real parameter


def test_group_mode_scores_wga_and_marks_group_use(bundle):
    best, table = select_hyperparameters("random", bundle, seed=0, mode="group",
                                         grid={"finetune.epochs": [1, 3]}, base_params={"size": 50})
    assert table.uses_group_labels_val and table.group_label_use == "val"
    assert table.metric == "worst_group_accuracy"
    scores = [r["score"] for r in table.rows]
    assert best == table.rows[int(np.argmax(scores))]["params"] and best["size"] == 50
    sel = bundle.view("selection")
    model = build_method("random", best).fit(bundle, seed=0).model
    pred = model.logits(sel.features).argmax(1)
    wga = min(np.mean(pred[sel.groups == g] == sel.labels[sel.groups == g]) for g in range(4))
    assert table.rows[table.best_index]["worst_group_accuracy"] == pytest.approx(wga)


def test_label_free_mode_needs_no_groups(bundle):
    b = EmbeddingBundle(features=bundle.features, labels=bundle.labels, split=bundle.split,
                        head_weight=bundle.head_weight, head_bias=bundle.head_bias, n_classes=2)
    best, table = select_hyperparameters("random", b, seed=0, mode="label_free",
                                         grid={"finetune.epochs": [1, 2]})
    assert table.metric == "worst_class_accuracy" and not table.uses_group_labels_val
    assert table.group_label_use == "none"
    assert all("worst_group_accuracy" not in r for r in table.rows)
    with pytest.raises(ValueError, match="group labels"):
        select_hyperparameters("random", b, seed=0, mode="group")
    _, t2 = select_hyperparameters("subg", bundle, seed=0, mode="label_free", grid={"finetune.epochs": [1]})
    assert t2.group_label_use == "train+val"


@pytest.mark.parametrize("name", sorted(FAST_PARAMS))
def test_fit_never_reads_test_rows(bundle, name):
    other = garbage_test_rows(bundle)
    x = bundle.features[bundle.split != "test"]
    a = build_method(name, FAST_PARAMS[name]).fit(bundle, seed=2)
    b = build_method(name, FAST_PARAMS[name]).fit(other, seed=2)
    np.testing.assert_array_equal(a.model.logits(x), b.model.logits(x))


@pytest.mark.parametrize("mode", ["group", "label_free"])
def test_selection_never_reads_test_rows(bundle, mode):
    other = garbage_test_rows(bundle)
    grid = {"finetune.epochs": [1, 2], "finetune.lr": [1e-3, 1e-2]}
    best_a, table_a = select_hyperparameters("random", bundle, seed=1, mode=mode, grid=grid)
    best_b, table_b = select_hyperparameters("random", other, seed=1, mode=mode, grid=grid)
    assert best_a == best_b
    assert table_a.to_dict() == table_b.to_dict()
