"""DFR against a straight scikit-learn implementation of the authors' procedure."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.methods import DFRMethod, get_method
from gradtune.methods.dfr import fold_scaler
from tests.methods._synthetic import make_spurious_bundle


def _balanced(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    values = sorted(set(groups.tolist()))
    m = min(int(np.sum(groups == v)) for v in values)
    picks = []
    for v in values:
        picks.extend(rng.permutation(np.where(groups == v)[0])[:m].tolist())
    return np.array(picks)


def reference_dfr(b: EmbeddingBundle, seed: int, c_grid, num_retrains: int):
    """The authors' DFR^Val written out with scikit-learn (decision function on raw features)."""
    seeds = np.random.SeedSequence(seed).spawn(3)
    rng_tune, rng_final = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
    rs = int(seeds[2].generate_state(1)[0])
    held, sel = b.split == "heldout", b.split == "selection"
    xh, yh, gh = b.features[held], b.labels[held], b.groups[held]
    xs, ys, gs = b.features[sel], b.labels[sel], b.groups[sel]

    def logreg(c):
        return LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, random_state=rs)

    sub = _balanced(gh, rng_tune)
    scaler = StandardScaler()
    x_train = scaler.fit_transform(xh[sub])
    x_eval = scaler.transform(xs)
    worst = {}
    for c in c_grid:
        pred = logreg(c).fit(x_train, yh[sub]).predict(x_eval)
        worst[c] = min(np.mean(pred[gs == g] == ys[gs == g]) for g in np.unique(gs))
    best_c = list(worst)[int(np.argmax(list(worst.values())))]

    xv, yv, gv = np.concatenate([xh, xs]), np.concatenate([yh, ys]), np.concatenate([gh, gs])
    final_scaler = StandardScaler().fit(b.features[b.split == "train"])
    coefs, icpts = [], []
    for _ in range(num_retrains):
        s = _balanced(gv, rng_final)
        lr = logreg(best_c).fit(final_scaler.transform(xv[s]), yv[s])
        coefs.append(lr.coef_)
        icpts.append(lr.intercept_)
    coef, icpt = np.mean(coefs, axis=0), np.mean(icpts, axis=0)

    def decision(x):
        return final_scaler.transform(x) @ coef[0] + icpt[0]

    return best_c, worst, decision


@pytest.mark.parametrize("seed", [0, 3])
def test_dfr_matches_reference(seed):
    b = make_spurious_bundle(n_train=300, n_heldout=240, n_selection=240, n_test=50, d=12, seed=seed)
    grid = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
    ref_c, ref_scores, decision = reference_dfr(b, seed, grid, num_retrains=5)
    res = DFRMethod(num_retrains=5).fit(b, seed=seed)
    assert res.diagnostics["best_c"] == ref_c
    assert [res.diagnostics["c_scores"][repr(c)] for c in grid] == pytest.approx(list(ref_scores.values()))
    x = b.features[b.split != "test"]
    z = res.model.logits(x)
    np.testing.assert_allclose(z[:, 1] - z[:, 0], decision(x), rtol=1e-4, atol=1e-4)
    assert res.diagnostics["scaler_fit_on"] == "train"


def test_dfr_flags_follow_paper_table():
    assert DFRMethod.uses_group_labels_train is False
    assert DFRMethod.uses_group_labels_val is True
    assert DFRMethod().group_label_use == "val"


def test_dfr_falls_back_to_validation_scaler_without_train_rows(bundle):
    keep = bundle.split != "train"
    b = EmbeddingBundle(features=bundle.features[keep], labels=bundle.labels[keep], split=bundle.split[keep],
                        groups=bundle.groups[keep], n_classes=2)
    res = get_method("dfr", num_retrains=2).fit(b, seed=0)
    assert res.diagnostics["scaler_fit_on"].startswith("validation")
    assert np.isfinite(res.model.logits(b.features)).all()


def test_dfr_needs_groups(bundle):
    b = EmbeddingBundle(features=bundle.features, labels=bundle.labels, split=bundle.split, n_classes=2)
    with pytest.raises(BundleError, match="group labels"):
        DFRMethod().fit(b, seed=0)


def test_dfr_multiclass_is_one_vs_rest():
    rng = np.random.default_rng(0)
    n, d = 600, 6
    y = rng.integers(0, 3, n)
    a = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) + np.eye(d)[y] * 2 + np.eye(d)[3 + a]
    split = np.array(["train"] * 200 + ["heldout"] * 200 + ["selection"] * 150 + ["test"] * 50)
    b = EmbeddingBundle(features=x, labels=y, split=split, groups=2 * y + a, n_classes=3)
    res = DFRMethod(num_retrains=3).fit(b, seed=1)
    z = res.model.logits(x)
    assert z.shape == (n, 3)
    assert (z.argmax(1) == y).mean() > 0.7


def test_fold_scaler_equals_scaled_linear_map():
    rng = np.random.default_rng(0)
    coef, icpt = rng.normal(size=(1, 5)), rng.normal(size=1)
    mean, scale = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    x = rng.normal(size=(7, 5))
    head = fold_scaler(coef, icpt, mean, scale, 2)
    z = head.logits(x)
    np.testing.assert_allclose(z[:, 1] - z[:, 0], ((x - mean) / scale) @ coef[0] + icpt[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z.sum(1), 0, atol=1e-5)


def test_scaler_fitted_in_chunks_matches_one_fit() -> None:
    from gradtune.methods.dfr import fit_scaler_in_chunks

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1000, 7)) * [1, 2, 3, 4, 5, 6, 0] + 10).astype(np.float32)
    ref = StandardScaler().fit(x)
    got = fit_scaler_in_chunks(x, chunk_rows=64)              # 16 blocks, the last one ragged
    np.testing.assert_allclose(got.mean_, ref.mean_, rtol=1e-6)
    np.testing.assert_allclose(got.scale_, ref.scale_, rtol=1e-5)
    assert got.scale_[-1] == 1.0                               # a constant column keeps scale 1
    small = fit_scaler_in_chunks(x)                            # under the block size: one fit, same numbers
    np.testing.assert_array_equal(small.mean_, ref.mean_)
