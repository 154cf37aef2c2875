"""GradTune as a scikit-learn classifier on embeddings: :class:`GradTuneClassifier`.

``GradTuneClassifier`` follows scikit-learn's estimator contract: ``__init__`` only
stores its parameters, ``fit(X, y)`` validates them and returns ``self``, the learned
state ends in ``_``, and ``get_params`` / ``set_params`` / ``sklearn.base.clone`` and
``Pipeline`` work. It needs scikit-learn (a core dependency of gradtune).

Two ways to get the ERM head GradTune starts from:

* ``head=`` a prefit head (like ``CalibratedClassifierCV(cv='prefit')``): a fitted
  scikit-learn linear classifier (``coef_`` / ``intercept_`` / ``classes_``; wrap it in
  ``sklearn.frozen.FrozenEstimator`` so that ``clone`` keeps it fitted), a
  ``(weight (C, d), bias (C,))`` pair, or an object with ``weight`` / ``bias`` (an
  ``nn.Linear``). Every row of ``X`` is then held-out data for GradTune.
* ``head=None``: ``fit`` keeps a class-stratified ``train_fraction`` of ``X`` (drawn
  with ``random_state``) to fit the class-balanced ERM head itself, and runs GradTune
  on the other rows. ``head_source_`` says which happened, and the ``gradtune``
  logger reports it at INFO level.

A check against harmful fine-tuning: a class-stratified ``selection_fraction`` of the
rows GradTune would use (default 0.25) is set aside, never scored or trained on, and the
ERM and fine-tuned heads are both scored on it. When accuracy there falls by more than
``max_accuracy_drop`` (default 0.05, five points), ``fit`` warns with
:class:`AccuracyDropWarning` and sets ``accuracy_dropped_`` (and
``report_.extra["accuracy_dropped"]``). The paper's repairs cost at most 2.8 points of
average accuracy (CelebA, 93.5 -> 90.7); a larger fall usually means the highest-norm
rows were label noise rather than a shortcut's minority, and fine-tuning on them
inverted the head. ``selection_fraction=0`` turns the check off.

Fine-tuning settings are nested parameters, ``finetune__<field>`` (e.g.
``finetune__epochs``, or ``gt__finetune__lr`` inside a ``Pipeline`` step named ``gt``),
so ``GridSearchCV`` can search them whether ``finetune`` is None (the paper's defaults)
or a :class:`~gradtune.finetune.linear.FinetuneConfig`; setting one never modifies the
config object passed in.

>>> from sklearn.pipeline import make_pipeline  # doctest: +SKIP
>>> from sklearn.preprocessing import StandardScaler  # doctest: +SKIP
>>> clf = make_pipeline(StandardScaler(), GradTuneClassifier(random_state=0)).fit(X, y)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from gradtune._validation import GradTuneInputError
from gradtune.estimator import SELECTION_SCORES, SIZE_RULES, GradTune
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.selection.select import SIZE, TOP_K

__all__ = ["GradTuneClassifier", "AccuracyDropWarning"]

_FT = "finetune__"


class AccuracyDropWarning(UserWarning):
    """Fine-tuning lowered accuracy on the set-aside selection rows by more than the margin."""


log = logging.getLogger("gradtune")

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(est: BaseEstimator, *args: Any, **kwargs: Any) -> Any:
        return est._validate_data(*args, **kwargs)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _head_arrays(head: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(weight (C, d), bias (C,) or None, classes or None) of a prefit head.

    A binary scikit-learn head (``coef_`` of shape (1, d), logit ``z`` for class 1)
    becomes the two-row head ``(-z/2, z/2)``, whose softmax is ``sigmoid(z)``.
    """
    classes = getattr(head, "classes_", None)
    if hasattr(head, "coef_"):
        w, b = np.asarray(head.coef_, dtype=np.float64), getattr(head, "intercept_", None)
        b = None if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
        if w.ndim == 2 and w.shape[0] == 1:
            w = np.concatenate([-w / 2, w / 2])
            b = None if b is None else np.concatenate([-b / 2, b / 2])
    elif hasattr(head, "weight"):
        w = np.asarray(_numpy(head.weight), dtype=np.float64)
        b = None if getattr(head, "bias", None) is None else np.asarray(_numpy(head.bias), dtype=np.float64)
    elif isinstance(head, (tuple, list)) and len(head) == 2:
        w = np.asarray(_numpy(head[0]), dtype=np.float64)
        b = None if head[1] is None else np.asarray(_numpy(head[1]), dtype=np.float64)
    elif isinstance(head, BaseEstimator):
        raise GradTuneInputError(
            f"the head {type(head).__name__} is not fitted (it has no coef_). sklearn.base.clone, "
            "which Pipeline and cross-validation call, returns unfitted copies of estimator "
            "parameters: wrap a prefit head in sklearn.frozen.FrozenEstimator, or pass "
            "(coef_, intercept_) as a pair")
    else:
        raise GradTuneInputError(
            "head must be None, a fitted linear classifier (coef_, intercept_), a (weight, bias) pair "
            f"or an object with weight/bias; got {type(head).__name__}")
    if w.ndim != 2 or w.shape[0] < 2:
        raise GradTuneInputError(f"the head's weight must have shape (n_classes >= 2, n_features), got {w.shape}")
    if b is not None and b.shape != (w.shape[0],):
        raise GradTuneInputError(f"the head's bias must have shape ({w.shape[0]},), got {b.shape}")
    return w, b, None if classes is None else np.asarray(classes)


def _numpy(x: Any) -> Any:
    detach = getattr(x, "detach", None)
    return detach().cpu().numpy() if callable(detach) else x


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask (N,) of the rows kept for training: ``ceil(fraction * n_c)`` of each class.

    A class with a single row goes to training; the rows are drawn uniformly within
    each class with ``rng``.
    """
    order = np.lexsort((rng.random(size=len(y)), y))  # by class, random within a class
    _, first, counts = np.unique(y[order], return_index=True, return_counts=True)
    rank = np.arange(y.shape[0]) - np.repeat(first, counts)
    quota = np.repeat(np.maximum(1, np.ceil(fraction * counts)), counts)
    keep = np.zeros(y.shape[0], dtype=bool)
    keep[order] = rank < quota
    return keep


class GradTuneClassifier(ClassifierMixin, BaseEstimator):
    """GradTune on embeddings, with scikit-learn's estimator interface.

    Parameters
    ----------
    head : estimator, (weight, bias) pair, object with weight/bias, or None, default=None
        The prefit ERM head (see the module docstring). None: fit a class-balanced
        ERM head on a ``train_fraction`` of ``X``. Never modified.
    size : int, default=500
        M', the size of the fine-tuning set (scaled down on smaller held-out sets,
        see ``size_rule``).
    top_k : int, default=400
        k, how many highest-score samples enter deterministically.
    selection_score : {'grad_norm', 'loss', 'residual'}, default='grad_norm'
        The score the fine-tuning set is chosen by (see :class:`gradtune.GradTune`).
    include_bias : bool, default=True
        Count the bias in the gradient norm.
    replace : bool, default=False
        Draw the proportional part with replacement.
    size_rule : {'scale', 'error'}, default='scale'
        What to do when the held-out rows are fewer than ``size``.
    finetune : FinetuneConfig, optional
        Fine-tuning hyperparameters; default: the paper's vision setting.
    train_fraction : float in (0, 1), default=0.5
        Share of each class's rows kept to fit the ERM head when ``head`` is None.
    erm_epochs : int, default=100
        Epochs of the class-balanced ERM head fit (from zeros, SGD) when ``head`` is None.
    selection_fraction : float in [0, 1), default=0.25
        Share of each class's GradTune rows set aside to compare the ERM and fine-tuned
        heads' accuracy (see the module docstring); 0 turns the check off.
    max_accuracy_drop : float >= 0, default=0.05
        The accuracy fall on the selection rows (a fraction: 0.05 is five points) above
        which ``fit`` warns and sets ``accuracy_dropped_``.
    random_state : int, default=0
        Seeds the train/held-out split, the ERM fit, GradTune and the selection split
        (independent streams).

    Attributes
    ----------
    classes_ : ndarray (C,)           class labels, in the head's row order
    n_features_in_ : int              d
    coef_ : ndarray (C, d)            the fine-tuned head's weight
    intercept_ : ndarray (C,)         its bias
    erm_coef_ : ndarray (C, d)        the ERM head GradTune started from
    erm_intercept_ : ndarray (C,)
    head_source_ : {'prefit', 'fitted'}
    heldout_mask_ : ndarray (N,) bool the rows of X GradTune scored
    selection_mask_ : ndarray (N,) bool the set-aside rows of the accuracy check
    selection_accuracy_erm_, selection_accuracy_ : float or None
        Accuracy of the ERM and of the fine-tuned head on those rows (None without them)
    accuracy_dropped_ : bool          the fall exceeded ``max_accuracy_drop``
    report_ : GradTuneReport          selected rows (indices into the held-out rows), norms, losses;
                                      ``extra`` also holds the three check values above
    """

    def __init__(self, head: Any = None, *, size: int = SIZE.default, top_k: int = TOP_K.default,
                 selection_score: str = "grad_norm", include_bias: bool = True, replace: bool = False,
                 size_rule: str = "scale", finetune: FinetuneConfig | None = None,
                 train_fraction: float = 0.5, erm_epochs: int = 100, selection_fraction: float = 0.25,
                 max_accuracy_drop: float = 0.05, random_state: int = 0) -> None:
        self.head = head
        self.size = size
        self.top_k = top_k
        self.selection_score = selection_score
        self.include_bias = include_bias
        self.replace = replace
        self.size_rule = size_rule
        self.finetune = finetune
        self.train_fraction = train_fraction
        self.erm_epochs = erm_epochs
        self.selection_fraction = selection_fraction
        self.max_accuracy_drop = max_accuracy_drop
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters; with ``deep``, also ``finetune__<field>`` of the config in use."""
        params = super().get_params(deep=deep)
        if deep and (self.finetune is None or isinstance(self.finetune, FinetuneConfig)):
            cfg = self.finetune if self.finetune is not None else FinetuneConfig()
            params.update({_FT + f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
        return params

    def set_params(self, **params: Any) -> GradTuneClassifier:
        """Set parameters; ``finetune__<field>`` replaces one field of a copy of ``finetune``
        (the paper's defaults when it is None), so the config passed in is never modified."""
        nested = {k[len(_FT):]: params.pop(k) for k in list(params) if k.startswith(_FT)}
        if "finetune" in params:
            super().set_params(finetune=params.pop("finetune"))
        if nested:
            base = self.finetune if self.finetune is not None else FinetuneConfig()
            if not isinstance(base, FinetuneConfig):
                raise GradTuneInputError(f"finetune__ parameters need finetune to be a FinetuneConfig or None, "
                                         f"got {type(base).__name__}")
            names = {f.name for f in dataclasses.fields(base)}
            unknown = sorted(set(nested) - names)
            if unknown:
                raise GradTuneInputError(f"unknown fine-tuning setting {_FT}{unknown[0]}; the settings are "
                                         f"{', '.join(sorted(names))}")
            super().set_params(finetune=dataclasses.replace(base, **nested))
        super().set_params(**params)
        return self

    def _check_params(self) -> None:
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, (int, np.integer)) \
                or self.random_state < 0:
            raise GradTuneInputError(
                f"random_state must be a non-negative int (gradtune never uses global random state), "
                f"got {self.random_state!r}")
        if not 0.0 < float(self.train_fraction) < 1.0:
            raise GradTuneInputError(f"train_fraction must be in (0, 1), got {self.train_fraction!r}")
        if isinstance(self.erm_epochs, bool) or not isinstance(self.erm_epochs, (int, np.integer)) \
                or self.erm_epochs < 1:
            raise GradTuneInputError(f"erm_epochs must be a positive int, got {self.erm_epochs!r}")
        if self.finetune is not None and not isinstance(self.finetune, FinetuneConfig):
            raise GradTuneInputError(f"finetune must be a FinetuneConfig or None, got {type(self.finetune).__name__}")
        if not 0.0 <= float(self.selection_fraction) < 1.0:
            raise GradTuneInputError(f"selection_fraction must be in [0, 1), got {self.selection_fraction!r}")
        if not float(self.max_accuracy_drop) >= 0.0:
            raise GradTuneInputError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop!r}")
        if self.selection_score not in SELECTION_SCORES:
            raise GradTuneInputError(f"selection_score must be one of {SELECTION_SCORES}, got {self.selection_score!r}")
        if self.size_rule not in SIZE_RULES:
            raise GradTuneInputError(f"size_rule must be one of {SIZE_RULES}, got {self.size_rule!r}")

    def fit(self, X: Any, y: Any) -> GradTuneClassifier:
        """Fit (or take) the ERM head, then score, select and fine-tune it with GradTune.

        Parameters
        ----------
        X : array-like (N, d)   embeddings (inputs of the last linear layer)
        y : array-like (N,)     class labels; no group labels

        Returns
        -------
        self
        """
        self._check_params()
        X, y = _validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        check_classification_targets(y)
        seeds = np.random.SeedSequence(int(self.random_state)).spawn(4)
        b: np.ndarray | None
        if self.head is None:
            self.classes_, codes = np.unique(y, return_inverse=True)
            if self.classes_.shape[0] < 2:
                raise GradTuneInputError(
                    f"y has 1 class ({self.classes_[0]!r}); a classifier needs at least 2 classes")
            train = stratified_split(codes, float(self.train_fraction), np.random.default_rng(seeds[0]))
            if train.all():
                raise GradTuneInputError(
                    "no rows are left for GradTune after keeping a train_fraction of each class for the "
                    f"ERM head ({X.shape[0]} rows); pass more rows, a lower train_fraction, or a prefit head=")
            w, b = self._fit_erm(X[train], codes[train], int(seeds[1].generate_state(1)[0]))
            self.head_source_ = "fitted"
            log.info("GradTuneClassifier: no prefit head; fitted the class-balanced ERM head on %d of %d "
                     "rows (train_fraction=%s), GradTune runs on the other %d", int(train.sum()),
                     X.shape[0], self.train_fraction, int((~train).sum()))
        else:
            w, b, classes = _head_arrays(self.head)
            if w.shape[1] != X.shape[1]:
                raise GradTuneInputError(f"the head has {w.shape[1]} input features but X has {X.shape[1]}")
            self.classes_ = np.arange(w.shape[0]) if classes is None else classes
            if self.classes_.shape[0] != w.shape[0]:
                raise GradTuneInputError(
                    f"the head has {w.shape[0]} rows but {self.classes_.shape[0]} classes_")
            unknown = ~np.isin(y, self.classes_)
            if unknown.any():
                raise GradTuneInputError(
                    f"y has label {y[unknown][0]!r}, which is not a class of the head {self.classes_.tolist()}")
            codes = np.argmax(y[:, None] == self.classes_[None, :], axis=1)
            train = np.zeros(X.shape[0], dtype=bool)
            self.head_source_ = "prefit"
        sel = np.zeros(X.shape[0], dtype=bool)
        if float(self.selection_fraction) > 0:
            rows = np.flatnonzero(~train)
            sel[rows] = stratified_split(codes[rows], float(self.selection_fraction),
                                         np.random.default_rng(seeds[3]))
            if sel[rows].all():
                raise GradTuneInputError(
                    f"no rows are left for GradTune after setting aside a selection_fraction of each class "
                    f"({rows.shape[0]} rows); pass more rows, a lower selection_fraction, or 0 to turn "
                    "the accuracy check off")
        held = ~train & ~sel
        tuner = GradTune(self.size, self.top_k, finetune=self.finetune, include_bias=self.include_bias,
                         selection_score=self.selection_score, replace=self.replace,
                         size_rule=self.size_rule, seed=int(seeds[2].generate_state(1)[0]))
        tuner.fit_embeddings(X[held], codes[held], weight=w, bias=b)
        self.erm_coef_ = w.astype(np.float64)
        self.erm_intercept_ = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
        self.coef_ = tuner.weight_.detach().cpu().double().numpy()
        self.intercept_ = (np.zeros(w.shape[0]) if tuner.bias_ is None
                           else tuner.bias_.detach().cpu().double().numpy())
        self.heldout_mask_ = held
        self.selection_mask_ = sel
        self.report_ = tuner.report_
        self._check_accuracy(X[sel], codes[sel])
        return self

    def _check_accuracy(self, x: np.ndarray, codes: np.ndarray) -> None:
        """Score the ERM and the fine-tuned head on the set-aside rows; warn on a large fall."""
        if x.shape[0] == 0:
            erm_acc = acc = None
            dropped = False
        else:
            erm_acc = float(np.mean(np.argmax(x @ self.erm_coef_.T + self.erm_intercept_, axis=1) == codes))
            acc = float(np.mean(np.argmax(x @ self.coef_.T + self.intercept_, axis=1) == codes))
            dropped = erm_acc - acc > float(self.max_accuracy_drop)
        self.selection_accuracy_erm_, self.selection_accuracy_ = erm_acc, acc
        self.accuracy_dropped_ = bool(dropped)
        self.report_.extra.update(selection_accuracy_erm=erm_acc, selection_accuracy=acc,
                                  accuracy_dropped=bool(dropped))
        if dropped:
            msg = (f"GradTune lowered accuracy on the {x.shape[0]} set-aside selection rows from {erm_acc:.3f} "
                   f"(ERM head) to {acc:.3f}, more than max_accuracy_drop={self.max_accuracy_drop}. The "
                   "highest-norm rows may be label noise rather than a shortcut's minority; try fewer "
                   "epochs (finetune__epochs), a smaller top_k, or keep the ERM head (erm_coef_)")
            warnings.warn(msg, AccuracyDropWarning, stacklevel=3)

    def _fit_erm(self, X: np.ndarray, codes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        c, d = self.classes_.shape[0], X.shape[1]
        cfg = FinetuneConfig(epochs=int(self.erm_epochs), batch_size=128, lr=0.01, reset=True)
        res = finetune_linear(X.astype(np.float32), codes, np.zeros((c, d), np.float32),
                              np.zeros(c, np.float32), cfg, seed=seed)
        return res.weight.detach().cpu().double().numpy(), res.bias.detach().cpu().double().numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits (N, C); for two classes, the class-1 minus class-0 logit (N,)."""
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        z = X @ self.coef_.T + self.intercept_
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax class probabilities (N, C), columns in ``classes_`` order."""
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return _softmax(X @ self.coef_.T + self.intercept_)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels (N,)."""
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.classes_[np.argmax(X @ self.coef_.T + self.intercept_, axis=1)]
