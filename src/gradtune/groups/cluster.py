"""Within-class clustering (GEORGE-style): each class split into its feature clusters.

After Sohoni et al., "No Subclass Left Behind" (NeurIPS 2020): a class whose samples
come from several subclasses shows them as clusters in feature space. Per class, the
(optionally standardized, optionally PCA-reduced) features are clustered by k-means
for each k in a small range, and the k with the best silhouette score is kept.
Pseudo-groups are (class, cluster); a cluster smaller than its class's average cluster
(``n_c / k``) is a minority one, so with k = 2 the smaller cluster.

Clusters are numbered within each class from the largest (0) down, and classes are laid
end to end: class ``c``'s clusters are ``offset_c .. offset_c + k_c - 1`` with
``offset_c = k_0 + ... + k_{c-1}``. Randomness: class ``c``'s k-means and silhouette
subsample use ``random_state = seeds[c]``, where ``seeds`` are C integers drawn from
``numpy.random.default_rng(seed)``.

Shapes: N samples, d features, C classes, G = sum of the k_c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradtune._validation import GradTuneInputError, check_positive_int, make_numpy_rng
from gradtune.groups.base import InferredGroups, check_pool, standardizer
from gradtune.groups.registry import register_group_inference

__all__ = ["ClusterConfig", "cluster_groups", "class_seeds"]


@dataclass(frozen=True)
class ClusterConfig:
    """How each class is clustered.

    Parameters
    ----------
    k_values : tuple of int, default=(2, 3, 4, 5)
        Numbers of clusters tried per class (each >= 2); values that are not below the
        class's size are skipped, and a class with fewer than 3 rows stays one cluster.
    pca_components : int or None, default=None
        Reduce each class's features to this many principal components first
        (capped at the class's size and d); None keeps all features.
    standardize : bool, default=True
        Standardize features with the pool's statistics before anything else.
    n_init : int, default=10
        k-means restarts (the best inertia is kept).
    silhouette_sample : int or None, default=2000
        Compute each silhouette score on at most this many of the class's rows (a
        random subsample); None uses them all (quadratic cost).
    n_threads : int or None, default=1
        BLAS/OpenMP threads for scikit-learn while clustering (several threads stall
        when other processes share the cores); None leaves the setting alone.
    """

    k_values: tuple[int, ...] = (2, 3, 4, 5)
    pca_components: int | None = None
    standardize: bool = True
    n_init: int = 10
    silhouette_sample: int | None = 2000
    n_threads: int | None = 1

    def __post_init__(self) -> None:
        if not isinstance(self.k_values, tuple) or not self.k_values:
            raise GradTuneInputError(f"ClusterConfig.k_values must be a non-empty tuple of ints, got {self.k_values!r}")
        for k in self.k_values:
            if check_positive_int(k, "ClusterConfig.k_values entries") < 2:
                raise GradTuneInputError(f"ClusterConfig.k_values entries must be >= 2, got {k}")
        if self.pca_components is not None:
            check_positive_int(self.pca_components, "ClusterConfig.pca_components")
        check_positive_int(self.n_init, "ClusterConfig.n_init")
        if self.silhouette_sample is not None and check_positive_int(
                self.silhouette_sample, "ClusterConfig.silhouette_sample") < 2:
            raise GradTuneInputError("ClusterConfig.silhouette_sample must be >= 2 or None")
        if self.n_threads is not None:
            check_positive_int(self.n_threads, "ClusterConfig.n_threads")


def class_seeds(seed: int | np.random.Generator, n_classes: int) -> np.ndarray:
    """The per-class ``random_state`` values, shape (C,), int64."""
    return make_numpy_rng(seed).integers(0, 2**31 - 1, size=n_classes)


def _cluster_class(x: np.ndarray, config: ClusterConfig, random_state: int
                   ) -> tuple[np.ndarray, dict[int, float]]:
    """k-means labels (n,) of one class's rows, clusters renumbered by size; silhouette per k."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    n = x.shape[0]
    ks = [k for k in config.k_values if k < n]
    if n < 3 or not ks:
        return np.zeros(n, dtype=np.int64), {}
    if config.pca_components is not None:
        x = PCA(n_components=min(config.pca_components, n, x.shape[1]),
                svd_solver="full").fit_transform(x)
    sample = None if config.silhouette_sample is None or config.silhouette_sample >= n \
        else config.silhouette_sample
    best, best_score, silhouettes = None, -np.inf, {}
    for k in ks:
        assign = KMeans(n_clusters=k, n_init=config.n_init, random_state=random_state).fit_predict(x)
        if np.unique(assign).size < 2:      # duplicate points: k-means found one cluster
            silhouettes[k] = -1.0
            continue
        s = float(silhouette_score(x, assign, sample_size=sample, random_state=random_state))
        silhouettes[k] = s
        if s > best_score:                  # strict: ties keep the smaller k
            best, best_score = assign, s
    if best is None:
        return np.zeros(n, dtype=np.int64), silhouettes
    sizes = np.bincount(best)
    by_size = np.argsort(-sizes, kind="stable")      # cluster ids, largest first
    rename = np.empty_like(by_size)
    rename[by_size] = np.arange(by_size.size)
    return rename[best].astype(np.int64), silhouettes


@register_group_inference("cluster", ("features", "labels", "seed"),
                          "GEORGE-style within-class k-means, k by silhouette")
def cluster_groups(features: Any, labels: Any, *, seed: int | np.random.Generator,
                   config: ClusterConfig | None = None, n_classes: int | None = None) -> InferredGroups:
    """Pseudo-groups (class, k-means cluster), k chosen per class by silhouette.

    Parameters
    ----------
    features : array-like of shape (N, d)
    labels : array-like of shape (N,)
    seed : int or numpy.random.Generator
        Source of the per-class ``random_state`` values (see the module docstring).
    config : ClusterConfig, optional
    n_classes : int, optional

    Returns
    -------
    InferredGroups
        ``groups`` as in the module docstring; ``minority`` = in a cluster smaller than
        ``n_c / k_c``; ``scores`` = 1 - (cluster size / class size);
        ``info["k"]`` (C,) the chosen k per class, ``info["silhouette"]`` a list of
        {k: score} per class, ``info["offsets"]`` (C,) each class's first group id.
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    config = ClusterConfig() if config is None else config
    x, y, c = check_pool(features, labels, n_classes, min_rows=1)
    x = x.detach().cpu().double()
    mean, scale = standardizer(x, config.standardize)
    xs = ((x - mean) / scale).numpy()
    y_np = y.cpu().numpy()
    seeds = class_seeds(seed, c)
    n = y_np.shape[0]
    local = np.zeros(n, dtype=np.int64)
    ks = np.ones(c, dtype=np.int64)
    silhouettes: list[dict[int, float]] = []
    with threadpool_limits(limits=config.n_threads):
        for k in range(c):                               # one k-means search per class
            rows = np.flatnonzero(y_np == k)
            assign, sil = _cluster_class(xs[rows], config, int(seeds[k]))
            local[rows] = assign
            ks[k] = int(assign.max()) + 1 if rows.size else 1
            silhouettes.append(sil)
    offsets = np.concatenate(([0], np.cumsum(ks)[:-1])).astype(np.int64)
    groups = offsets[y_np] + local
    n_groups = int(ks.sum())
    size = np.bincount(groups, minlength=n_groups)[groups]
    class_size = np.bincount(y_np, minlength=c)[y_np]
    minority = size * ks[y_np] < class_size
    scores = 1.0 - size / class_size
    return InferredGroups(groups.astype(np.int64), n_groups, minority, scores.astype(np.float64),
                          "cluster", {"k": ks, "silhouette": silhouettes, "offsets": offsets})
