"""Where gradtune-auto's guard finds unlabeled deployment rows: the bundle's own
``deployment_features`` by default, a named split, or none."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.methods.auto_deployment import deployment_rows, deployment_source
from gradtune.methods.gradtune_auto import GradTuneAutoMethod
from tests.methods._synthetic import make_spurious_bundle

FAST = {"xrm_steps": 300, "epochs_grid": (1, 5, 20), "c_grid": (1.0, 0.1), "num_retrains": 2, "audit_coverage": False}


@pytest.fixture(scope="module")
def biased() -> EmbeddingBundle:
    return make_spurious_bundle(n_train=400, n_heldout=600, n_selection=600, n_test=400, d=16,
                                seed=3, align_eval=0.9, encoder_dim=6)


def _test_rows_as_deployment(b: EmbeddingBundle) -> EmbeddingBundle:
    """The test rows' features as the bundle's own deployment rows (the test split kept)."""
    return replace(b, deployment_features=b.features[b.split == "test"])


def test_where_the_rows_come_from(biased: EmbeddingBundle) -> None:
    with_dep = _test_rows_as_deployment(biased)
    assert deployment_source(biased, None) is None and deployment_rows(biased, None) == (None, None)
    source, rows = deployment_rows(with_dep, None)
    assert source == "deployment_features"
    np.testing.assert_array_equal(rows, biased.view("test").features)
    assert deployment_rows(with_dep, "off") == (None, None)
    assert deployment_rows(with_dep, "train")[0] == "train"


def test_the_bundles_own_rows_are_read_by_default(biased: EmbeddingBundle, caplog) -> None:
    # the same rows given as deployment_features or named as a split: the same fit
    named = GradTuneAutoMethod(**FAST, deployment_split="test").fit(biased, seed=0)
    with caplog.at_level(logging.INFO, logger="gradtune"):
        own = GradTuneAutoMethod(**FAST).fit(_test_rows_as_deployment(biased), seed=0)
    assert not any("weighs the inferred groups equally" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(own.model.weight, named.model.weight)
    np.testing.assert_array_equal(own.model.bias, named.model.bias)
    assert own.diagnostics["deployment_shares"] == named.diagnostics["deployment_shares"] != []
    assert own.diagnostics["deployment_rows"] == "deployment_features"
    assert named.diagnostics["deployment_rows"] == "test"
    assert own.diagnostics["n_deployment_rows"] == int((biased.split == "test").sum())


def test_off_ignores_them(biased: EmbeddingBundle, caplog) -> None:
    plain = GradTuneAutoMethod(**FAST).fit(biased, seed=0)
    with caplog.at_level(logging.INFO, logger="gradtune"):
        off = GradTuneAutoMethod(**FAST, deployment_split="off").fit(_test_rows_as_deployment(biased), seed=0)
    np.testing.assert_array_equal(off.model.weight, plain.model.weight)
    assert off.diagnostics["deployment_shares"] == [] and off.diagnostics["deployment_rows"] is None
    if not off.diagnostics["guard_kept_erm"]:
        assert any("weighs the inferred groups equally" in r.getMessage() for r in caplog.records)


def test_a_bad_name_is_refused_at_the_door_and_a_missing_split_named(biased: EmbeddingBundle) -> None:
    with pytest.raises(GradTuneInputError, match="deployment_split"):
        GradTuneAutoMethod(deployment_split="deploy")
    no_test = replace(biased, split=np.where(biased.split == "test", "train", biased.split))
    with pytest.raises(BundleError, match="no rows in split 'test'"):
        GradTuneAutoMethod(**FAST, deployment_split="test").fit(no_test, seed=1)
