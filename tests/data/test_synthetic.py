"""Generated shortcut problems: group counts, agreement rates, balanced test rows, label
noise and determinism, each counted by hand from the generated arrays."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gradtune.data.base import SPLIT_CODES
from gradtune.data.synthetic import ShortcutSpec, make_shortcut_data


def _split(data, name):
    return data.split == SPLIT_CODES[name]


def test_class_tie_agreement_groups_and_balanced_test() -> None:
    spec = ShortcutSpec("t", n_classes=3, dim=16, train_agreement=0.9, n_train=6000, n_val=3000,
                        n_test=900, build_seed=1)
    data = make_shortcut_data(spec)
    assert data.inputs.shape == (9900, 16) and data.inputs.dtype == np.float32
    tr, te = _split(data, "train"), _split(data, "test")
    agree = (data.attributes[tr] == data.labels[tr]).mean()
    assert abs(agree - 0.9) < 0.02
    np.testing.assert_array_equal(data.groups, data.labels * 3 + data.attributes)
    # test rows: every (class, attribute) cell equally often
    np.testing.assert_array_equal(np.bincount(data.groups[te], minlength=9), np.full(9, 100))
    assert len(data.group_names) == spec.n_groups == 9


def test_one_class_mark_and_balanced_validation() -> None:
    spec = ShortcutSpec("m", n_classes=3, tie="one", tied_class=2, dim=16, train_agreement=0.85,
                        n_train=9000, val_balanced=True, n_val=600, n_test=600, build_seed=2)
    data = make_shortcut_data(spec)
    tr, va = _split(data, "train"), _split(data, "val")
    mark = data.attributes[tr] == 1
    y = data.labels[tr]
    assert abs(mark[y == 2].mean() - 0.85) < 0.03
    assert abs(mark[y != 2].mean() - 0.15) < 0.03
    np.testing.assert_array_equal(np.bincount(data.groups[va], minlength=6), np.full(6, 100))


def test_label_noise_only_outside_test_and_two_attributes() -> None:
    spec = ShortcutSpec("n", dim=16, label_noise=0.2, n_attributes=2, n_train=5000, n_val=1000,
                        n_test=800, build_seed=3)
    data = make_shortcut_data(spec)
    true_y = data.extra["true_labels"]
    tr, te = _split(data, "train"), _split(data, "test")
    assert abs((data.labels[tr] != true_y[tr]).mean() - 0.2) < 0.02
    np.testing.assert_array_equal(data.labels[te], true_y[te])
    assert spec.n_attribute_values == 4 and spec.n_groups == 8
    assert set(np.unique(data.groups[te]).tolist()) == set(range(8))


def test_features_carry_core_and_shortcut_and_are_deterministic() -> None:
    spec = ShortcutSpec("d", dim=8, core_strength=3.0, shortcut_strength=0.0, n_train=2000, n_val=10,
                        n_test=10, build_seed=4)
    a, b = make_shortcut_data(spec), make_shortcut_data(spec)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    other = make_shortcut_data(replace(spec, build_seed=5))
    assert not np.array_equal(a.inputs, other.inputs)
    # class means are core_strength apart along their directions: the mean difference has norm
    # sqrt(2) * core_strength (orthonormal directions); noise is unit variance per dimension
    x, y = a.inputs[_split(a, "train")], a.labels[_split(a, "train")]
    gap = np.linalg.norm(x[y == 1].mean(0) - x[y == 0].mean(0))
    assert abs(gap - np.sqrt(2) * 3.0) < 0.2
    assert abs(x[y == 0].std(0).mean() - 1.0) < 0.1


def test_class_prior_sets_training_and_validation_frequencies_not_test() -> None:
    spec = ShortcutSpec("p", n_classes=3, dim=16, class_prior=(0.6, 0.3, 0.1), train_agreement=0.9,
                        n_train=10000, n_val=5000, n_test=900, build_seed=6)
    data = make_shortcut_data(spec)
    for split in ("train", "val"):
        freq = np.bincount(data.labels[_split(data, split)], minlength=3) / (spec.n_train if split == "train"
                                                                             else spec.n_val)
        np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.02)
    te = _split(data, "test")
    np.testing.assert_array_equal(np.bincount(data.groups[te], minlength=9), np.full(9, 100))
    # the attribute still follows the class at the training agreement within every class
    tr = _split(data, "train")
    for k in range(3):
        rows = tr & (data.labels == k)
        assert abs((data.attributes[rows] == k).mean() - 0.9) < 0.03


@pytest.mark.parametrize("bad", [{"tie": "two"}, {"n_classes": 1}, {"train_agreement": 1.5},
                                 {"label_noise": -0.1}, {"dim": 2}, {"tie": "one", "n_attributes": 2},
                                 {"class_prior": (0.5, 0.3)}, {"class_prior": (1.0, 0.0)},
                                 {"n_classes": 3, "class_prior": (0.5, 0.5)}, {"encoder": "tanh"},
                                 {"noise_df": 2.0}, {"noise_shared_scale": True}, {"noise_factors": -1},
                                 {"noise_factors": 1.5}])
def test_bad_specs_are_named(bad: dict) -> None:
    with pytest.raises(ValueError, match="bad"):
        ShortcutSpec("bad", **bad)


def test_heavy_tailed_noise_keeps_unit_variance_and_other_rows() -> None:
    base = ShortcutSpec("t", dim=8, core_strength=2.0, n_train=20000, n_val=10, n_test=10, build_seed=7)
    heavy = make_shortcut_data(replace(base, noise_df=3.0))
    gauss = make_shortcut_data(base)
    np.testing.assert_array_equal(heavy.labels, gauss.labels)   # the same rows, other noise
    tr = _split(heavy, "train")
    x, y = heavy.inputs[tr], heavy.labels[tr]
    # noise = x minus its class-and-attribute mean: unit variance, kurtosis far above 3 (t with 3 df)
    resid = np.concatenate([x[heavy.groups[tr] == g] - x[heavy.groups[tr] == g].mean(0)
                            for g in np.unique(heavy.groups[tr])])
    assert abs(resid.var() - 1.0) < 0.1
    kurt = ((resid - resid.mean(0)) ** 4).mean(0) / resid.var(0) ** 2
    assert kurt.mean() > 6.0
    assert y.shape == gauss.labels[_split(gauss, "train")].shape


def test_shared_scale_noise_is_the_gaussian_rows_times_one_scale_per_row() -> None:
    # no signal, so the rows are the noise: the same Gaussian draw, each row times its own factor
    base = ShortcutSpec("mvt", dim=16, core_strength=0.0, shortcut_strength=0.0, n_train=20000, n_val=10,
                        n_test=10, build_seed=5)
    gauss = make_shortcut_data(base)
    shared = make_shortcut_data(replace(base, noise_df=3.0, noise_shared_scale=True))
    np.testing.assert_array_equal(shared.groups, gauss.groups)
    ratio = shared.inputs.astype(np.float64) / gauss.inputs.astype(np.float64)
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, 16)), rtol=1e-4)
    scale2 = ratio[:, 0] ** 2                        # (df - 2) / chi2_df: mean 1 (unit variance), heavy right tail
    assert abs(scale2.mean() - 1.0) < 0.1 and np.quantile(scale2, 0.999) > 10
    assert abs(shared.inputs.var() - 1.0) < 0.15


def test_factor_noise_is_correlated_unit_variance_and_leaves_other_specs_alone() -> None:
    # no signal, so the rows are the noise: the Gaussian draw plus shared factors, rescaled per coordinate
    base = ShortcutSpec("f", dim=16, core_strength=0.0, shortcut_strength=0.0, n_train=40000, n_val=10,
                        n_test=10, build_seed=3)
    gauss = make_shortcut_data(base)
    np.testing.assert_array_equal(make_shortcut_data(replace(base, noise_factors=0)).inputs, gauss.inputs)
    fac = make_shortcut_data(replace(base, noise_factors=2))
    np.testing.assert_array_equal(fac.groups, gauss.groups)
    x = fac.inputs.astype(np.float64)
    np.testing.assert_allclose(x.var(axis=0), 1.0, atol=0.05)          # unit variance per coordinate
    corr = np.corrcoef(x.T)[np.triu_indices(16, 1)]
    assert np.abs(corr).mean() > 0.2                                   # isotropic noise would give ~0.005
    # two factors: beyond the unit floor of the rescaled isotropic part, only two large eigenvalues
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    assert eig[1] > 2 * eig[2] and eig[2] < 1.0
    # the isotropic part is the Gaussian draw itself: taking each column's multiple of it out leaves
    # the two factors (rank 2 up to sampling noise)
    g = gauss.inputs.astype(np.float64)
    resid = x - g * ((x * g).sum(axis=0) / (g * g).sum(axis=0))
    ev = np.sort(np.linalg.eigvalsh(np.cov(resid.T)))[::-1]
    assert ev[1] > 0.05 and ev[2] < 1e-3 * ev[1]


def test_relu_encoder_is_one_random_layer_over_the_gaussian_rows() -> None:
    base = ShortcutSpec("r", dim=12, n_train=300, n_val=50, n_test=50, build_seed=8)
    raw, enc = make_shortcut_data(base), make_shortcut_data(replace(base, encoder="relu"))
    np.testing.assert_array_equal(raw.groups, enc.groups)
    assert (enc.inputs >= 0).all() and (enc.inputs == 0).mean() > 0.2
    x = raw.inputs.astype(np.float64)
    found = enc.inputs.astype(np.float64)
    # the encoded rows are a ReLU of an affine map of the raw rows: solve for it on the active
    # rows of each of three outputs and check that it explains them
    for j in range(3):
        act = found[:, j] > 0
        design = np.c_[x[act], np.ones(act.sum())]
        coef, *_ = np.linalg.lstsq(design, found[act, j] / np.sqrt(2.0), rcond=None)
        np.testing.assert_allclose(design @ coef, found[act, j] / np.sqrt(2.0), atol=1e-4)
        # and rows where the map is negative are exactly the zeros
        pre = np.c_[x, np.ones(len(x))] @ coef
        assert ((pre > 1e-4) == act).mean() > 0.99
