"""Shared fixtures: small synthetic bundles with a spurious correlation."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.embeddings.bundle import EmbeddingBundle
from tests.methods._synthetic import make_spurious_bundle


def _fast_params() -> dict[str, dict]:
    from gradtune._params import fast_params
    from gradtune.methods import METHODS, list_methods

    return {name: fast_params(METHODS[name]) for name in list_methods() if fast_params(METHODS[name])}


#: Parameters that make each registered method fast enough for a unit test (the ``fast``
#: values of its declarations); a method whose defaults are already fast is absent.
FAST_PARAMS: dict[str, dict] = _fast_params()


@pytest.fixture(scope="session")
def bundle() -> EmbeddingBundle:
    return make_spurious_bundle(n_train=300, n_heldout=200, n_selection=160, n_test=200, d=16, seed=0)


def garbage_test_rows(b: EmbeddingBundle, seed: int = 123) -> EmbeddingBundle:
    """The same bundle with test features, labels, groups, logits all replaced by noise."""
    rng = np.random.default_rng(seed)
    test = b.split == "test"
    n = int(test.sum())
    feats = b.features.copy()
    feats[test] = rng.normal(size=(n, b.features.shape[1])) * 50
    labels = b.labels.copy()
    labels[test] = rng.integers(0, b.n_classes, n)
    groups = b.groups.copy()
    groups[test] = rng.integers(0, 9, n)  # ids never seen outside test
    logits = b.logits.copy()
    logits[test] = rng.normal(size=(n, b.n_classes)) * 9
    early = b.early_logits.copy()
    early[test] = rng.normal(size=(n, b.n_classes))
    attrs = b.attributes.copy()
    attrs[test] = rng.integers(0, 2, n)
    enc = None
    if b.encoder_features is not None:
        enc = b.encoder_features.copy()
        enc[test] = rng.normal(size=(n, enc.shape[1])) * 50
    return EmbeddingBundle(features=feats, labels=labels, split=b.split, logits=logits, early_logits=early,
                           encoder_features=enc,
                           head_weight=b.head_weight, head_bias=b.head_bias, groups=groups, attributes=attrs,
                           n_classes=b.n_classes)
