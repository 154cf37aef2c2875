"""Votes over halvings of the validation rows: the re-dealt halves and the majority rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods.auto_votes import redealt_halves, split_vote
from gradtune.methods.base import MethodResult
from tests.methods._synthetic import make_spurious_bundle


@pytest.fixture(scope="module")
def bundle() -> EmbeddingBundle:
    return make_spurious_bundle(n_train=100, n_heldout=130, n_selection=70, n_test=50, d=4, seed=0)


def test_redealt_halves_keep_sizes_classes_and_every_other_row(bundle: EmbeddingBundle) -> None:
    got = redealt_halves(bundle, np.random.default_rng(0))
    for name in ("train", "test"):
        np.testing.assert_array_equal(got.split == name, bundle.split == name)
    val = (bundle.split == "heldout") | (bundle.split == "selection")
    np.testing.assert_array_equal((got.split == "heldout") | (got.split == "selection"), val)
    share = (bundle.split == "heldout").sum() / val.sum()
    for k in np.unique(bundle.labels[val]):   # each class split at the bundle's share, by hand
        rows = val & (bundle.labels == k)
        assert (got.split[rows] == "heldout").sum() == round(share * rows.sum())
    assert not np.array_equal(got.split, bundle.split)      # a new dealing
    assert got.features is bundle.features                  # no copy of the feature array
    for field in ("labels", "groups", "encoder_features"):
        np.testing.assert_array_equal(getattr(got, field), getattr(bundle, field))
    again = redealt_halves(bundle, np.random.default_rng(0))
    np.testing.assert_array_equal(again.split, got.split)   # the generator decides


def _fit(kept: bool, tag: int) -> MethodResult:
    return MethodResult(model=tag, diagnostics={"guard_kept_erm": kept, "chosen_setting": float(tag),
                                                "guard_reason": "kept" if kept else None})


def _scripted(outcomes: list[bool]):
    """A fit_split that returns the scripted decisions in turn and counts its calls."""
    calls: list[EmbeddingBundle] = []

    def fit_split(b: EmbeddingBundle) -> MethodResult:
        calls.append(b)
        return _fit(outcomes[len(calls) - 1], len(calls))
    return fit_split, calls


@pytest.mark.parametrize(("first", "rest", "n", "fits", "kept", "model"), [
    (False, [False], 3, 2, False, 0),          # two repairs of three: decided after two fits
    (False, [True, True], 3, 3, True, 1),      # the repair outvoted: the first keeping fit is returned
    (False, [True, False], 3, 3, False, 0),
    (True, [False, False], 3, 3, False, 1),    # a kept head outvoted: the first re-dealt repair
    (True, [True], 3, 2, True, 0),
    (False, [True, True, False, True], 5, 5, True, 1),
    (False, [], 1, 1, False, 0),               # one split: no vote
])
def test_the_majority_decides_and_the_vote_stops_once_decided(bundle: EmbeddingBundle, first: bool, rest: list[bool],
                                                               n: int, fits: int, kept: bool, model: int) -> None:
    fit_split, calls = _scripted(rest)
    res = split_vote(fit_split, bundle, _fit(first, 0), n, np.random.default_rng(1))
    assert 1 + len(calls) == fits
    assert res.diagnostics["guard_kept_erm"] is kept
    assert res.model == model
    assert [v["kept"] for v in res.diagnostics["split_votes"]] == [first, *rest[:fits - 1]]
    if kept and not first:
        assert "split_votes=" in res.diagnostics["guard_reason"]
    for b in calls:   # each vote on its own dealing of the same rows
        assert not np.array_equal(b.split, bundle.split)


def test_votes_on_repairs_lets_a_kept_head_stand(bundle: EmbeddingBundle) -> None:
    fit_split, calls = _scripted([False, False])
    res = split_vote(fit_split, bundle, _fit(True, 0), 3, np.random.default_rng(1), votes_on="repairs")
    assert not calls and res.diagnostics["guard_kept_erm"]
    res = split_vote(fit_split, bundle, _fit(False, 0), 3, np.random.default_rng(1), votes_on="repairs")
    assert len(calls) == 1 and not res.diagnostics["guard_kept_erm"]
    with pytest.raises(ValueError, match="votes_on"):
        split_vote(fit_split, bundle, _fit(False, 0), 3, np.random.default_rng(1), votes_on="sometimes")


def test_a_bundle_without_groups_is_dealt_the_same(bundle: EmbeddingBundle) -> None:
    bare = replace(bundle, groups=None, attributes=None, group_names=None)
    np.testing.assert_array_equal(redealt_halves(bare, np.random.default_rng(3)).split,
                                  redealt_halves(bundle, np.random.default_rng(3)).split)
