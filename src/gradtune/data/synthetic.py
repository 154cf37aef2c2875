"""Generated shortcut problems with known groups: the stress suite's raw data.

Each row has a class ``y`` and one or more spurious attributes; its features are a
sum of Gaussian class means (the *core* signal), attribute means (the *shortcut*) and
isotropic noise::

    x = core_strength * mu[y] + shortcut_strength * nu[a] + N(0, I_d)

``mu`` and ``nu`` are random orthonormal directions (fixed by ``build_seed``), so the
core and the shortcut are linearly separable from each other and from the noise.
In training (and, by default, in validation) the attribute agrees with the class
with probability ``train_agreement``; the test split is group-balanced, so a model
that follows the shortcut loses its worst group there.

Two ways to tie an attribute to the classes (``tie``):

* ``"class"``: the attribute has ``C`` values and value ``y`` is the one that agrees
  with class ``y`` (Waterbirds-like: background = bird type);
* ``"one"``: a binary mark, present mostly in class ``tied_class`` and rarely in the
  others (MultiNLI-like: negation words and the contradiction class).

``n_attributes > 1`` adds further independent shortcut attributes (each ``"class"``
tied, each with its own directions); the groups are then the class crossed with every
attribute's value. ``label_noise`` flips training and validation labels (never test
labels) to a uniformly drawn other class. ``class_prior`` makes the classes unequally
frequent in training and validation (CelebA-like; the test split stays group-balanced).
``noise_df`` draws the noise from a Student-t law (heavy tails, still unit variance per
dimension; ``noise_shared_scale`` makes it a multivariate t, one scale per row, whose tails
are elliptical) and ``encoder="relu"`` passes every row through one random ReLU layer, so the
features are non-negative and sparse like pooled CNN embeddings and the core and the
shortcut are no longer linear directions of them.
``shortcut_strength = 0`` gives a control with nothing to repair.

Group ids: ``y * A + a`` where ``a`` is the combined attribute value (``A`` values).
No step reads a file or the network; everything follows from the spec and the seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from gradtune.data.base import SPLIT_CODES, GroupedDataset

__all__ = ["ShortcutSpec", "make_shortcut_data", "TIES", "ENCODERS"]

TIES = ("class", "one")
ENCODERS = ("none", "relu")


@dataclass(frozen=True)
class ShortcutSpec:
    """One generated shortcut problem.

    Parameters
    ----------
    name : str
    n_classes : int, default=2
    dim : int, default=64
        Feature dimension ``d`` (at least the number of mean directions).
    core_strength, shortcut_strength : float
        Norms of the class means and of the attribute means (noise has unit variance
        per dimension).
    tie : {"class", "one"}, default="class"
        How the attribute is tied to the classes (module docstring).
    tied_class : int, default=0
        The class a ``"one"`` mark goes with.
    n_attributes : int, default=1
        Independent shortcut attributes (``"class"`` tie only beyond the first).
    train_agreement : float, default=0.95
        P(attribute agrees with the class) in training (for ``"one"``: P(mark | tied
        class) = train_agreement and P(mark | other class) = 1 - train_agreement).
    val_agreement : float, optional
        The same in validation (default: ``train_agreement``).
    val_balanced : bool, default=False
        Make validation group-balanced instead (Waterbirds-like held-out set).
    label_noise : float, default=0.0
        Fraction of training and validation labels flipped to another class.
    class_prior : tuple of float, optional
        Class frequencies in training and validation (length ``n_classes``, positive,
        summing to 1); default: every class equally likely.
    noise_df : float, optional
        Degrees of freedom (> 2) of Student-t noise, scaled to unit variance; default:
        Gaussian noise.
    noise_shared_scale : bool, default=False
        With ``noise_df``: one Student-t scale per row shared by all its coordinates (Gaussian
        noise divided by ``sqrt(chi2_df / (df - 2))``, a multivariate t with elliptical tails)
        instead of independent Student-t coordinates. The row scales are drawn right after
        the noise, so rows of specs without this option do not change.
    noise_factors : int, default=0
        Correlated noise: each row's noise gains ``noise_factors`` shared Gaussian factors
        (every coordinate's loadings drawn N(0, 1 / noise_factors)), then every coordinate is
        rescaled to unit variance, so the noise covariance is far from isotropic (as in learned
        embeddings). The loadings and factors are drawn right after the noise, so rows of specs
        without this option do not change.
    encoder : {"none", "relu"}, default="none"
        ``"relu"``: the rows become ``relu(W x + b) * sqrt(2)`` with ``W`` (d, d) Gaussian
        of variance ``1 / d`` and ``b`` Gaussian of variance ``1 / 4`` (one random layer,
        drawn after every other draw, so the other members' rows do not change).
    n_train, n_val, n_test : int
        Rows per split (test rows are group-balanced).
    build_seed : int
        Seeds the directions and every row (the stress suite sets it to the run's seed).
    """

    name: str
    n_classes: int = 2
    dim: int = 64
    core_strength: float = 1.0
    shortcut_strength: float = 3.0
    tie: str = "class"
    tied_class: int = 0
    n_attributes: int = 1
    train_agreement: float = 0.95
    val_agreement: float | None = None
    val_balanced: bool = False
    label_noise: float = 0.0
    class_prior: tuple[float, ...] | None = None
    noise_df: float | None = None
    noise_shared_scale: bool = False
    noise_factors: int = 0
    encoder: str = "none"
    n_train: int = 4000
    n_val: int = 2000
    n_test: int = 4000
    build_seed: int = 0

    def __post_init__(self) -> None:
        if self.tie not in TIES:
            raise ValueError(f"{self.name}: tie must be one of {TIES}, got {self.tie!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"{self.name}: encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.noise_df is not None and not float(self.noise_df) > 2.0:
            raise ValueError(f"{self.name}: noise_df must be > 2 (finite variance), got {self.noise_df!r}")
        if self.noise_shared_scale and self.noise_df is None:
            raise ValueError(f"{self.name}: noise_shared_scale needs noise_df (the Student-t degrees of freedom)")
        if isinstance(self.noise_factors, bool) or not isinstance(self.noise_factors, int) or self.noise_factors < 0:
            raise ValueError(f"{self.name}: noise_factors must be an int >= 0, got {self.noise_factors!r}")
        if int(self.n_classes) < 2:
            raise ValueError(f"{self.name}: n_classes must be >= 2, got {self.n_classes}")
        if int(self.n_attributes) < 1 or (self.tie == "one" and int(self.n_attributes) != 1):
            raise ValueError(f"{self.name}: n_attributes must be >= 1 (exactly 1 with tie='one')")
        if not 0 <= int(self.tied_class) < int(self.n_classes):
            raise ValueError(f"{self.name}: tied_class must be in [0, {self.n_classes})")
        for key in ("train_agreement", "label_noise"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ValueError(f"{self.name}: {key} must be in [0, 1]")
        if self.val_agreement is not None and not 0.0 <= float(self.val_agreement) <= 1.0:
            raise ValueError(f"{self.name}: val_agreement must be in [0, 1]")
        if self.class_prior is not None:
            prior = np.asarray(self.class_prior, dtype=np.float64)
            if prior.shape != (int(self.n_classes),) or (prior <= 0).any() or abs(prior.sum() - 1.0) > 1e-6:
                raise ValueError(f"{self.name}: class_prior must hold {self.n_classes} positive frequencies "
                                 f"summing to 1, got {self.class_prior!r}")
        if min(self.n_train, self.n_val, self.n_test) < 1:
            raise ValueError(f"{self.name}: n_train, n_val and n_test must be positive")
        if self.dim < self.n_classes + self.n_attributes * self.n_values_per_attribute:
            raise ValueError(f"{self.name}: dim={self.dim} is too small for the mean directions")

    @property
    def n_values_per_attribute(self) -> int:
        return 2 if self.tie == "one" else int(self.n_classes)

    @property
    def n_attribute_values(self) -> int:
        """A: values of the combined attribute."""
        return self.n_values_per_attribute ** int(self.n_attributes)

    @property
    def n_groups(self) -> int:
        return int(self.n_classes) * self.n_attribute_values

    def to_dict(self) -> dict:
        return asdict(self)


def _draw_attribute(y: np.ndarray, spec: ShortcutSpec, agreement: float | None,
                    rng: np.random.Generator) -> np.ndarray:
    """One attribute per row, (n,) int64; ``agreement=None`` draws it uniformly."""
    n, c = len(y), int(spec.n_classes)
    if spec.tie == "one":
        if agreement is None:
            return rng.integers(0, 2, size=n)
        p_mark = np.where(y == spec.tied_class, agreement, 1.0 - agreement)
        return (rng.random(n) < p_mark).astype(np.int64)
    if agreement is None:
        return rng.integers(0, c, size=n)
    other = (y + rng.integers(1, c, size=n)) % c  # a uniformly drawn value != y
    return np.where(rng.random(n) < agreement, y, other).astype(np.int64)


def _rows(spec: ShortcutSpec, n: int, agreement: float | None, noisy: bool,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (n,), combined attribute (n,), true labels (n,)) of one split;
    ``agreement=None``: group-balanced."""
    c = int(spec.n_classes)
    if spec.class_prior is None:
        y = rng.integers(0, c, size=n)
    else:
        y = rng.choice(c, size=n, p=np.asarray(spec.class_prior, dtype=np.float64))
    if agreement is None:  # group-balanced: every (class, attribute) cell equally often
        cells = rng.permutation(np.arange(n) % spec.n_groups)
        y = cells // spec.n_attribute_values
        a = cells % spec.n_attribute_values
    else:
        a = np.zeros(n, dtype=np.int64)
        for _ in range(int(spec.n_attributes)):
            a = a * spec.n_values_per_attribute + _draw_attribute(y, spec, agreement, rng)
    observed = y.copy()
    if noisy and spec.label_noise > 0:
        flip = rng.random(n) < spec.label_noise
        observed[flip] = (y[flip] + rng.integers(1, c, size=int(flip.sum()))) % c
    return observed.astype(np.int64), a.astype(np.int64), y.astype(np.int64)


def make_shortcut_data(spec: ShortcutSpec) -> GroupedDataset:
    """The rows of ``spec``: inputs (N, d) float32, labels, attributes, groups, splits.

    ``extra`` holds ``true_labels`` (N,) (before label noise) and ``spec`` (a dict).
    """
    rng = np.random.default_rng([int(spec.build_seed), 0x5EED])
    c, d, k = int(spec.n_classes), int(spec.dim), int(spec.n_attributes)
    v = spec.n_values_per_attribute
    basis, _ = np.linalg.qr(rng.standard_normal((d, c + k * v)))
    mu = basis[:, :c].T                                   # (C, d) class directions
    nu = basis[:, c:].T.reshape(k, v, d)                  # (k, V, d) attribute directions
    val_agree = spec.train_agreement if spec.val_agreement is None else spec.val_agreement
    if spec.val_balanced:
        val_agree = None
    parts = [_rows(spec, spec.n_train, spec.train_agreement, True, rng),
             _rows(spec, spec.n_val, val_agree, True, rng),
             _rows(spec, spec.n_test, None, False, rng)]
    labels = np.concatenate([p[0] for p in parts])
    attrs = np.concatenate([p[1] for p in parts])
    true_y = np.concatenate([p[2] for p in parts])
    split = np.repeat([SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]],
                      [spec.n_train, spec.n_val, spec.n_test])
    n = len(labels)
    if spec.noise_df is None:
        x = rng.standard_normal((n, d))
    elif spec.noise_shared_scale:  # a multivariate t of unit variance: z * sqrt((df - 2) / chi2_df), one per row
        df = float(spec.noise_df)
        x = rng.standard_normal((n, d))
        x *= np.sqrt((df - 2.0) / rng.chisquare(df, size=(n, 1)))
    else:  # Student-t, scaled to unit variance: var(t_df) = df / (df - 2)
        df = float(spec.noise_df)
        x = rng.standard_t(df, size=(n, d)) * np.sqrt((df - 2.0) / df)
    if spec.noise_factors:  # shared factors, then unit variance per coordinate (exactly, from the loadings)
        r = int(spec.noise_factors)
        loadings = rng.standard_normal((d, r)) / np.sqrt(r)
        x += rng.standard_normal((n, r)) @ loadings.T
        x /= np.sqrt(1.0 + (loadings ** 2).sum(axis=1))
    x += float(spec.core_strength) * mu[true_y]
    rest = attrs.copy()
    for j in reversed(range(k)):                          # decode the combined attribute
        x += float(spec.shortcut_strength) * nu[j, rest % v]
        rest //= v
    if spec.encoder == "relu":
        w = rng.standard_normal((d, d)) / np.sqrt(d)
        b = rng.standard_normal(d) * 0.5
        x = np.maximum(x @ w.T + b, 0.0) * np.sqrt(2.0)
    groups = labels * spec.n_attribute_values + attrs
    attr_names = [str(i) for i in range(spec.n_attribute_values)]
    class_names = [f"class{i}" for i in range(c)]
    return GroupedDataset(
        name=spec.name, inputs=x.astype(np.float32), labels=labels, attributes=attrs,
        groups=groups, split=split, class_names=class_names, attribute_names=attr_names,
        group_names=[f"{cn},attr{a}" for cn in class_names for a in attr_names],
        extra={"true_labels": true_y, "spec": spec.to_dict()})
