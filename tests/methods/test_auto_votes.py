"""Votes over halvings of the validation rows: the re-dealt halves and the majority rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.groups.xrm import XRMConfig
from gradtune.methods import get_method, gradtune_auto, inferred
from gradtune.methods.auto_votes import redealt_halves, split_vote
from gradtune.methods.base import MethodResult
from gradtune.methods.inferred import TwinsCache, bundle_pseudo_groups
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


# the twins fitted on the train rows, reused over the dealings of the validation halves

VOTED = {"xrm_steps": 300, "epochs_grid": (1, 5, 20), "c_grid": (1.0, 0.1), "num_retrains": 2,
         "audit_coverage": False, "split_votes": 3, "votes_on": "always"}


@pytest.fixture(scope="module")
def biased() -> EmbeddingBundle:
    """Held-out / selection halves at the training correlation, with encoder features."""
    return make_spurious_bundle(n_train=400, n_heldout=600, n_selection=600, n_test=400, d=16,
                                seed=3, align_eval=0.9, encoder_dim=6)


def _count_twin_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the XRM twin fits of the pseudo-group inference (one entry per fit)."""
    calls: list[int] = []
    fit = inferred.fit_xrm

    def counted(*args, **kwargs):
        calls.append(1)
        return fit(*args, **kwargs)
    monkeypatch.setattr(inferred, "fit_xrm", counted)
    return calls


def _fit_auto(bundle: EmbeddingBundle, monkeypatch: pytest.MonkeyPatch, *, reuse: bool,
              **params) -> tuple[MethodResult, int]:
    """gradtune-auto fitted with (or, ``reuse=False``, without) the twins cache; its result and
    how many times the twins were fitted."""
    with monkeypatch.context() as m:
        calls = _count_twin_fits(m)
        if not reuse:
            m.setattr(gradtune_auto, "TwinsCache", lambda: None)
        res = get_method("gradtune-auto", **{**VOTED, **params}).fit(bundle, seed=0)
    return res, len(calls)


def test_the_vote_fits_the_train_twins_once_and_changes_nothing(biased: EmbeddingBundle,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    res, fits = _fit_auto(biased, monkeypatch, reuse=True)
    ref, ref_fits = _fit_auto(biased, monkeypatch, reuse=False)
    n_votes = len(res.diagnostics["split_votes"])
    assert n_votes >= 2 and res.diagnostics["pseudo_groups"]["pool"] == "train"   # re-dealt fits ran
    assert (fits, ref_fits) == (1, n_votes)
    np.testing.assert_array_equal(res.model.weight, ref.model.weight)
    np.testing.assert_array_equal(res.model.bias, ref.model.bias)
    assert res.diagnostics["split_votes"] == ref.diagnostics["split_votes"]
    assert res.diagnostics["chosen_setting"] == ref.diagnostics["chosen_setting"]
    assert res.diagnostics == ref.diagnostics


def test_twins_fitted_on_heldout_rows_are_fitted_per_dealing(biased: EmbeddingBundle,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    res, fits = _fit_auto(biased, monkeypatch, reuse=True, pool="heldout")
    ref, _ = _fit_auto(biased, monkeypatch, reuse=False, pool="heldout")
    assert len(res.diagnostics["split_votes"]) >= 2
    assert fits == len(res.diagnostics["split_votes"])   # the held-out rows differ per dealing
    np.testing.assert_array_equal(res.model.weight, ref.model.weight)
    assert res.diagnostics == ref.diagnostics


@pytest.mark.parametrize("pool", ["auto", "train", "heldout", "train+heldout"])
def test_cached_pseudo_groups_of_a_redealt_bundle_are_the_fresh_ones(biased: EmbeddingBundle, pool: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_twin_fits(monkeypatch)
    cache, config = TwinsCache(), XRMConfig(n_steps=100)
    dealt = [biased, redealt_halves(biased, np.random.default_rng(0)), redealt_halves(biased, np.random.default_rng(1))]
    for b in dealt:
        got = bundle_pseudo_groups(b, seed=2, config=config, pool=pool, cache=cache)
        want = bundle_pseudo_groups(b, seed=2, config=config, pool=pool)
        for name in ("held", "sel", "held_score", "sel_score"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert got.info == want.info and got.n_groups == want.n_groups
    # with the train rows as the pool, one fit for all three dealings (and three uncached)
    assert len(calls) == (1 + 3 if pool in ("auto", "train") else 2 * 3)
    assert len(cache.entries) == (1 if pool in ("auto", "train") else 0)


def test_the_cache_refits_for_another_seed_config_or_bundle(biased: EmbeddingBundle,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_twin_fits(monkeypatch)
    cache, config = TwinsCache(), XRMConfig(n_steps=50)
    bundle_pseudo_groups(biased, seed=0, config=config, cache=cache)
    bundle_pseudo_groups(biased, seed=1, config=config, cache=cache)
    bundle_pseudo_groups(biased, seed=0, config=XRMConfig(n_steps=60), cache=cache)
    bundle_pseudo_groups(biased, seed=0, config=config, features="features", cache=cache)
    assert len(calls) == 4
    copied = replace(biased, encoder_features=biased.encoder_features.copy())   # same values, another array
    bundle_pseudo_groups(copied, seed=0, config=config, cache=cache)
    assert len(calls) == 5
    bundle_pseudo_groups(biased, seed=1, config=config, cache=cache)   # but the seed-1 twins of the bundle remain
    assert len(calls) == 5
