"""The multi-class Fashion-MNIST member with a mark tied to one class, on IDX fixtures
written in the real format: group counts, mark shares and pixels checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.data.base import SPLIT_CODES
from gradtune.data.offline import fmnist as fmnist_mod
from gradtune.data.offline.fmnist_marked import FmnistMarked
from tests.experiments.test_offline_loaders import write_fmnist


def test_marks_follow_the_tied_class_and_test_is_balanced(tmp_path):
    folder = write_fmnist(tmp_path / "fm", n_train_per_class=24, n_test_per_class=8)
    spec = FmnistMarked(classes=(1, 3, 5), tied_class=1, n_train=10, n_val=10, n_test=8, agreement=0.8)
    ds = spec(folder)
    assert len(ds) == 3 * (10 + 10 + 8)
    np.testing.assert_array_equal(ds.groups, 2 * ds.labels + ds.attributes)
    for code in ("train", "val"):
        rows = ds.split == SPLIT_CODES[code]
        for label in range(3):
            share = ds.attributes[rows & (ds.labels == label)].mean()
            assert share == pytest.approx(0.8 if label == 1 else 0.2)
    test = ds.split == SPLIT_CODES["test"]
    np.testing.assert_array_equal(np.bincount(ds.groups[test], minlength=6), np.full(6, 4))
    # the mark is the red background (attribute 0 of the binary family), the rest blue
    corner = ds.inputs[:, 0, 0, :]
    np.testing.assert_array_equal(corner, fmnist_mod.BACKGROUNDS[1 - ds.attributes])
    assert ds.class_names == [fmnist_mod.FMNIST_CLASS_NAMES[c] for c in (1, 3, 5)]
    np.testing.assert_array_equal(spec(folder).inputs, ds.inputs)          # fixed draw


def test_stripes_mark_is_vertical(tmp_path):
    folder = write_fmnist(tmp_path / "fm", n_train_per_class=24, n_test_per_class=8)
    ds = FmnistMarked(classes=(0, 2, 4, 6), tied_class=0, shortcut="stripes", n_train=8, n_val=8,
                      n_test=4)(folder)
    assert ds.attribute_names[1].startswith("mark") and set(np.unique(ds.labels).tolist()) == {0, 1, 2, 3}
    # each image is its item (the fixture's square, 100 + class id) under the mark's stripes
    source_class = np.array((0, 2, 4, 6))[ds.labels]
    items = np.zeros((len(ds), 28, 28), dtype=np.uint8)
    items[:, 10:18, 10:18] = (100 + source_class)[:, None, None]
    np.testing.assert_array_equal(ds.inputs, fmnist_mod.compose_stripes(items, ds.attributes))
    assert not np.array_equal(fmnist_mod.compose_stripes(items, 1 - ds.attributes), ds.inputs)


def test_brightness_mark_scales_the_item_on_grey(tmp_path):
    folder = write_fmnist(tmp_path / "fm", n_train_per_class=24, n_test_per_class=8)
    ds = FmnistMarked(classes=(0, 2, 4), tied_class=2, shortcut="brightness", n_train=8, n_val=8,
                      n_test=4)(folder)
    assert ds.attribute_names == ["no mark (dim)", "mark (bright)"]
    # by hand: background pixels are the grey level; an item pixel v becomes
    # (v / 255) * v * level + (1 - v / 255) * grey, level 0.45 without the mark, 1 with it
    grey = fmnist_mod.BRIGHTNESS_BACKGROUND
    np.testing.assert_array_equal(ds.inputs[:, 0, 0, :], np.full((len(ds), 3), grey))
    v = (100 + np.array((0, 2, 4))[ds.labels]).astype(np.float64)
    level = np.where(ds.attributes == 1, 1.0, 0.45)
    expect = np.rint(v / 255 * v * level + (1 - v / 255) * grey)
    np.testing.assert_array_equal(ds.inputs[:, 12, 12, 0], expect)
    np.testing.assert_array_equal(ds.inputs[..., 0], ds.inputs[..., 2])


@pytest.mark.parametrize("bad", [{"classes": (1, 2)}, {"classes": (1, 1, 2)}, {"tied_class": 3},
                                 {"shortcut": "noise"}, {"n_train": 3}, {"agreement": 1.2}])
def test_bad_parameters(bad):
    with pytest.raises(ValueError):
        FmnistMarked(**bad)
