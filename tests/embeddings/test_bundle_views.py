"""Split views: a split stored as one run of rows shares the bundle's memory, read-only;
an interleaved split is a copy; both hold exactly the split's rows."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.embeddings.bundle import EmbeddingBundle


def _bundle() -> EmbeddingBundle:
    rng = np.random.default_rng(0)
    n = 12
    split = np.array(["train"] * 6 + ["heldout", "selection"] * 2 + ["test"] * 2)
    return EmbeddingBundle(features=rng.normal(size=(n, 3)).astype(np.float32), labels=np.arange(n) % 2,
                           split=split, encoder_features=rng.normal(size=(n, 4)).astype(np.float32),
                           logits=rng.normal(size=(n, 2)).astype(np.float32), n_classes=2)


def test_contiguous_split_is_a_read_only_view() -> None:
    b = _bundle()
    tr = b.view("train")
    rows = np.flatnonzero(b.split == "train")
    np.testing.assert_array_equal(tr.index, rows)
    for got, full in ((tr.features, b.features), (tr.encoder_features, b.encoder_features),
                      (tr.labels, b.labels), (tr.logits, b.logits)):
        np.testing.assert_array_equal(got, full[rows])
        assert np.shares_memory(got, full)
        with pytest.raises(ValueError, match="read-only"):
            got[0] = 0
    assert b.features.flags.writeable                 # the bundle's own arrays stay writable


def test_interleaved_split_is_a_copy() -> None:
    b = _bundle()
    held = b.view("heldout")
    rows = np.flatnonzero(b.split == "heldout")
    np.testing.assert_array_equal(held.features, b.features[rows])
    assert not np.shares_memory(held.features, b.features)
    held.features[0] = 99.0                           # a copy: the bundle is untouched
    assert not (b.features == 99.0).any()
