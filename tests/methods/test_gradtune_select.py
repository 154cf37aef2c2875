"""gradtune-select and its variants: registration, selection, guard, and never reading test rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods import get_method, list_methods
from gradtune.methods.gradtune_select import GradTuneSelectMethod
from tests.methods.conftest import garbage_test_rows

FAST = {"epochs_grid": (0, 1, 3, 8), "lrs": (3e-3, 1e-2)}


def test_registered_and_label_free() -> None:
    names = list_methods()
    for n in ("gradtune-select", "gradtune-es", "gradtune-l2", "gradtune-selectk"):
        assert n in names
        m = get_method(n)
        assert not m.uses_group_labels_train and not m.uses_group_labels_val
        assert m.group_label_use == "none"
    assert get_method("gradtune-es").set_size == "fixed" and get_method("gradtune-es").l2_to_init == 0
    assert get_method("gradtune-l2").epochs_grid == (500,)


def test_fit_records_its_choices(bundle: EmbeddingBundle) -> None:
    res = get_method("gradtune-select", **FAST).fit(bundle, seed=0)
    d = res.diagnostics
    assert d["criterion"] == "worst_class"
    assert d["chosen_epoch"] in (0, 1, 3, 8)
    assert len(d["candidates"]) == 1 + 2 * 3  # ERM + 2 lrs x 3 epochs
    values = [c["value"] for c in d["candidates"]]
    assert d["chosen_value"] == max(values)
    first = values.index(max(values))
    assert (d["candidates"][first]["epoch"], d["candidates"][first]["lr"]) == (d["chosen_epoch"], d["chosen_lr"])
    assert d["size"] >= d["top_k"] > 0 and d["auto_k"]["rule"] in ("mixture", "paper")
    assert set(d["chosen_criteria"]) >= {"worst_class", "pseudo_erm_worst", "pseudo_norm_worst"}
    assert res.model.logits(bundle.view("test").features).shape == (len(bundle.view("test")), 2)


def test_chosen_head_is_the_candidate(bundle: EmbeddingBundle) -> None:
    m = get_method("gradtune-select", **FAST)
    res = m.fit(bundle, seed=1)
    cands, _ = m.candidates(bundle, seed=1)
    d = res.diagnostics
    match = [c for c in cands if c.epoch == d["chosen_epoch"] and c.lr == d["chosen_lr"]]
    np.testing.assert_array_equal(match[0].head.weight, res.model.weight)


def test_never_reads_test_rows(bundle: EmbeddingBundle) -> None:
    poisoned = garbage_test_rows(bundle)
    for name in ("gradtune-select", "gradtune-es"):
        a = get_method(name, **FAST).fit(bundle, seed=0)
        b = get_method(name, **FAST).fit(poisoned, seed=0)
        np.testing.assert_array_equal(a.model.weight, b.model.weight)
        np.testing.assert_array_equal(a.model.bias, b.model.bias)
        assert a.diagnostics["candidates"] == b.diagnostics["candidates"]


def test_never_reads_group_labels(bundle: EmbeddingBundle) -> None:
    rng = np.random.default_rng(5)
    no_groups = replace(bundle, groups=rng.integers(0, 4, bundle.labels.size),
                        attributes=rng.integers(0, 2, bundle.labels.size))
    a = get_method("gradtune-select", **FAST).fit(bundle, seed=0)
    b = get_method("gradtune-select", **FAST).fit(no_groups, seed=0)
    np.testing.assert_array_equal(a.model.weight, b.model.weight)


def test_fixed_set_without_guard_matches_gradtune(bundle: EmbeddingBundle) -> None:
    auto = get_method("gradtune-select", set_size="fixed", l2_to_init=0.0, epochs_grid=(6,), lrs=(3e-3,))
    paper = get_method("gradtune", **{"finetune": replace(get_method("gradtune").finetune, epochs=6)})
    a = auto.fit(bundle, seed=3)
    p = paper.fit(bundle, seed=3)
    np.testing.assert_allclose(a.model.weight, p.model.weight, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.model.bias, p.model.bias, rtol=0, atol=1e-6)


def test_only_erm_candidate_returns_erm(bundle: EmbeddingBundle) -> None:
    res = get_method("gradtune-select", epochs_grid=(0,)).fit(bundle, seed=0)
    np.testing.assert_array_equal(res.model.weight, bundle.head_weight)
    assert res.diagnostics["chosen_epoch"] == 0


def test_l2_guard_keeps_head_closer(bundle: EmbeddingBundle) -> None:
    kw = {"set_size": "fixed", "epochs_grid": (8,), "lrs": (1e-2,)}
    free = get_method("gradtune-select", l2_to_init=0.0, **kw).fit(bundle, seed=0).model
    held = get_method("gradtune-select", l2_to_init=5.0, **kw).fit(bundle, seed=0).model
    dist = lambda h: np.linalg.norm(h.weight - bundle.head_weight)  # noqa: E731
    assert dist(held) < dist(free)


def test_replay_adds_disjoint_uniform_rows(bundle: EmbeddingBundle) -> None:
    m = GradTuneSelectMethod(set_size="fixed", size=100, top_k=80, replay=0.5, epochs_grid=(1,))
    _, info = m.candidates(bundle, seed=0)
    assert len(info["selected_rows"]) == 100 and len(info["replay_rows"]) == 50
    assert not set(info["selected_rows"]) & set(info["replay_rows"])
    assert set(bundle.split[info["replay_rows"]]) == {"heldout"}


def test_deterministic(bundle: EmbeddingBundle) -> None:
    a = get_method("gradtune-select", **FAST).fit(bundle, seed=4)
    b = get_method("gradtune-select", **FAST).fit(bundle, seed=4)
    np.testing.assert_array_equal(a.model.weight, b.model.weight)


@pytest.mark.parametrize("bad", [{"criterion": "wga"}, {"set_size": "big"}, {"epochs_grid": ()},
                                 {"lrs": (-1.0,)}, {"l2_to_init": -1.0}])
def test_bad_parameters(bundle: EmbeddingBundle, bad: dict) -> None:
    with pytest.raises(GradTuneInputError):
        get_method("gradtune-select", **bad).fit(bundle, seed=0)
