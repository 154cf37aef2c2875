"""Within-class clustering against scikit-learn's KMeans and silhouette_score run directly."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score

from gradtune import GradTuneInputError
from gradtune.groups.cluster import ClusterConfig, class_seeds, cluster_groups


def blobs(sizes_per_class, d=4, seed=0):
    """Class c made of well-separated blobs of the given sizes; returns x, y, true blob id."""
    rng = np.random.default_rng(seed)
    xs, ys, bs = [], [], []
    blob = 0
    for c, sizes in enumerate(sizes_per_class):
        for s in sizes:
            centre = rng.normal(0, 10, d)
            xs.append(centre + rng.normal(0, 0.5, (s, d)))
            ys += [c] * s
            bs += [blob] * s
            blob += 1
    order = rng.permutation(len(ys))
    return np.concatenate(xs)[order], np.array(ys)[order], np.array(bs)[order]


def test_recovers_blobs_and_sizes():
    x, y, b = blobs([(60, 15), (40, 30, 10)])
    r = cluster_groups(x, y, seed=0)
    np.testing.assert_array_equal(r.info["k"], [2, 3])
    np.testing.assert_array_equal(r.info["offsets"], [0, 2])
    assert r.n_groups == 5 and r.method == "cluster"
    assert adjusted_rand_score(b, r.groups) == 1.0
    # Clusters are numbered by size within each class: group sizes 60, 15 | 40, 30, 10.
    np.testing.assert_array_equal(r.counts(), [60, 15, 40, 30, 10])
    # Minority: below the class's mean cluster size (37.5 in class 0, 26.7 in class 1).
    sizes = r.counts()[r.groups]
    np.testing.assert_array_equal(r.minority, np.isin(r.groups, [1, 4]))
    class_size = np.bincount(y)[y]
    np.testing.assert_allclose(r.scores, 1 - sizes / class_size)


@pytest.mark.parametrize("pca,sample", [(None, None), (2, None), (None, 40)])
def test_matches_sklearn_directly(pca, sample):
    """Per class: standardize, optional PCA, KMeans per k, silhouette; the same numbers."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 6))
    x[:50] += 3
    y = rng.integers(0, 2, 150)
    cfg = ClusterConfig(k_values=(2, 3, 4), pca_components=pca, silhouette_sample=sample, n_init=3)
    r = cluster_groups(x, y, seed=11, config=cfg)
    xs = (x - x.mean(0)) / x.std(0)
    seeds = class_seeds(11, 2)
    for c in range(2):
        rows = np.flatnonzero(y == c)
        xc = xs[rows] if pca is None else PCA(n_components=pca, svd_solver="full").fit_transform(xs[rows])
        sil = {}
        fits = {}
        for k in (2, 3, 4):
            fits[k] = KMeans(n_clusters=k, n_init=3, random_state=int(seeds[c])).fit_predict(xc)
            sil[k] = silhouette_score(xc, fits[k], sample_size=sample, random_state=int(seeds[c]))
        assert r.info["silhouette"][c] == pytest.approx(sil, rel=1e-9)
        best = max(sil, key=sil.get)
        assert r.info["k"][c] == best
        got = r.groups[rows] - r.info["offsets"][c]
        assert adjusted_rand_score(fits[best], got) == 1.0


def test_small_classes_and_seed_determinism():
    x, y, _ = blobs([(3, 2), (2,)])       # class 1 has 2 rows: one cluster
    r = cluster_groups(x, y, seed=0, config=ClusterConfig(k_values=(2,)))
    assert r.info["k"].tolist() == [2, 1] and r.info["silhouette"][1] == {}
    assert not r.minority[y == 1].any()
    a = cluster_groups(x, y, seed=3)
    b = cluster_groups(x, y, seed=3)
    np.testing.assert_array_equal(a.groups, b.groups)


def test_errors():
    with pytest.raises(GradTuneInputError, match=">= 2"):
        ClusterConfig(k_values=(1, 2))
    with pytest.raises(GradTuneInputError, match="tuple"):
        ClusterConfig(k_values=[2, 3])
    with pytest.raises(GradTuneInputError, match="seed"):
        cluster_groups(np.zeros((4, 2)), [0, 1, 0, 1], seed=None)
    with pytest.raises(GradTuneInputError, match="NaN"):
        cluster_groups(np.full((4, 2), np.nan), [0, 1, 0, 1], seed=0)
