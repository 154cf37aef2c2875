"""GradTuneClassifier: scikit-learn's estimator contract, checked against independent paths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import gradtune
from gradtune import FinetuneConfig, GradTune, GradTuneInputError
from gradtune.finetune.linear import finetune_linear
from gradtune.sklearn_api import AccuracyDropWarning, GradTuneClassifier, stratified_split

FAST = FinetuneConfig(epochs=15)


def _data(n: int = 240, d: int = 5, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 1.5 * np.eye(c, d)[y]
    return x * np.array([1.0, 10.0, 0.1, 3.0, 1.0]), np.array(["cat", "dog", "emu"])[y]


def test_scikit_learn_estimator_checks() -> None:
    est = GradTuneClassifier(finetune=FAST, erm_epochs=30)
    results = check_estimator(est, on_fail=None)
    bad = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert bad == {}
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    # only the array-API check, which scikit-learn skips unless SCIPY_ARRAY_API=1 is set
    # before scipy is imported; GradTuneClassifier computes in NumPy and does not claim
    # array-API support
    assert skipped <= {"check_array_api_input"}
    assert len(results) > 40


def test_clone_and_params_round_trip() -> None:
    est = GradTuneClassifier(size=40, top_k=30, finetune=FAST, random_state=3)
    c = clone(est)
    assert c.get_params() == est.get_params() and c is not est
    assert not hasattr(c, "coef_")
    c.set_params(top_k=10, selection_score="loss")
    assert c.get_params()["top_k"] == 10 and est.top_k == 30
    # no public attribute or parameter hides a scikit-learn method
    x, y = _data()
    fitted = c.fit(x, y)
    assert fitted is c and callable(c.score) and 0.0 <= c.score(x, y) <= 1.0


def test_no_work_in_init_errors_at_fit() -> None:
    est = GradTuneClassifier(top_k=900, size=10, random_state=-1)  # accepted as stored
    assert est.top_k == 900
    x, y = _data()
    with pytest.raises(GradTuneInputError, match="random_state"):
        est.fit(x, y)
    with pytest.raises(GradTuneInputError, match="top_k=900"):
        est.set_params(random_state=0).fit(x, y)
    with pytest.raises(GradTuneInputError, match="train_fraction"):
        GradTuneClassifier(train_fraction=1.0).fit(x, y)


def test_stratified_split_counts_by_hand() -> None:
    y = np.array([0] * 7 + [1] * 4 + [2])
    keep = stratified_split(y, 0.5, np.random.default_rng(0))
    assert [int(keep[y == k].sum()) for k in range(3)] == [4, 2, 1]
    again = stratified_split(y, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(keep, again)


def test_fitted_erm_head_then_gradtune_equals_the_manual_path() -> None:
    x, y = _data()
    # selection_fraction=0: every non-training row goes to GradTune (the check is tested below)
    est = GradTuneClassifier(size=60, top_k=45, finetune=FAST, erm_epochs=20, selection_fraction=0.0,
                             random_state=7).fit(x, y)
    assert est.head_source_ == "fitted"
    classes, codes = np.unique(y, return_inverse=True)
    np.testing.assert_array_equal(est.classes_, classes)
    ss = np.random.SeedSequence(7).spawn(3)
    train = stratified_split(codes, 0.5, np.random.default_rng(ss[0]))
    np.testing.assert_array_equal(est.heldout_mask_, ~train)
    erm = finetune_linear(x[train].astype(np.float32), codes[train], np.zeros((3, 5), np.float32),
                          np.zeros(3, np.float32),
                          FinetuneConfig(epochs=20, batch_size=128, lr=0.01, reset=True),
                          seed=int(ss[1].generate_state(1)[0]))
    np.testing.assert_allclose(est.erm_coef_, erm.weight.numpy(), rtol=1e-5, atol=1e-6)
    ref = GradTune(60, 45, finetune=FAST, seed=int(ss[2].generate_state(1)[0])).fit_embeddings(
        x[~train], codes[~train], weight=est.erm_coef_, bias=est.erm_intercept_)
    np.testing.assert_allclose(est.coef_, ref.weight_.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(est.report_.selected, ref.report_.selected)
    # predictions from the coefficients, by hand
    z = x @ est.coef_.T + est.intercept_
    np.testing.assert_array_equal(est.predict(x), classes[z.argmax(1)])
    np.testing.assert_allclose(est.decision_function(x), z)
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(est.predict_proba(x), p / p.sum(1, keepdims=True))


def test_prefit_binary_logistic_regression_head() -> None:
    x, y = _data(c=2)
    lr = LogisticRegression().fit(x[:120], y[:120])
    est = GradTuneClassifier(lr, size=50, top_k=40, finetune=FAST, selection_fraction=0.0).fit(x[120:], y[120:])
    assert est.head_source_ == "prefit" and est.heldout_mask_.all()
    np.testing.assert_array_equal(est.classes_, lr.classes_)
    # the two-row head built from coef_ (1, d) reproduces the logistic probabilities
    z0 = x @ est.erm_coef_.T + est.erm_intercept_
    p0 = np.exp(z0 - z0.max(1, keepdims=True))
    np.testing.assert_allclose(p0 / p0.sum(1, keepdims=True), lr.predict_proba(x), rtol=1e-6)
    codes = (y[120:] == lr.classes_[1]).astype(int)
    ref = GradTune(50, 40, finetune=FAST, seed=int(np.random.SeedSequence(0).spawn(3)[2].generate_state(1)[0]))
    ref.fit_embeddings(x[120:], codes, weight=est.erm_coef_, bias=est.erm_intercept_)
    np.testing.assert_allclose(est.coef_, ref.weight_.double().numpy(), rtol=1e-5, atol=1e-6)
    z = x @ est.coef_.T + est.intercept_
    np.testing.assert_allclose(est.decision_function(x), z[:, 1] - z[:, 0])
    assert lr.coef_.shape == (1, 5)  # the prefit head is not modified
    with pytest.raises(GradTuneInputError, match="not a class of the head"):
        est.fit(x, np.where(y == "cat", "fox", y))
    # clone unfits an estimator parameter; FrozenEstimator keeps the prefit head
    with pytest.raises(GradTuneInputError, match="not fitted.*FrozenEstimator"):
        clone(est).fit(x[120:], y[120:])
    frozen = pytest.importorskip("sklearn.frozen", reason="FrozenEstimator is in scikit-learn >= 1.6")
    est.set_params(head=frozen.FrozenEstimator(lr))
    again = clone(est).fit(x[120:], y[120:])
    np.testing.assert_allclose(again.coef_, ref.weight_.double().numpy(), rtol=1e-5, atol=1e-6)


def test_prefit_weight_bias_pair_and_torch_layer() -> None:
    x, y = _data()
    codes = np.unique(y, return_inverse=True)[1]
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    a = GradTuneClassifier((w, b), size=30, top_k=20, finetune=FAST).fit(x, codes)
    layer = torch.nn.Linear(5, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w))
        layer.bias.copy_(torch.as_tensor(b))
    bb = GradTuneClassifier(layer, size=30, top_k=20, finetune=FAST).fit(x, codes)
    np.testing.assert_allclose(a.coef_, bb.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.classes_, [0, 1, 2])
    with pytest.raises(GradTuneInputError, match="4 input features but X has 5"):
        GradTuneClassifier((w[:, :4], b)).fit(x, codes)


def test_pipeline_with_standard_scaler_round_trip() -> None:
    x, y = _data()
    params = dict(size=60, top_k=45, finetune=FAST, erm_epochs=20, random_state=2)
    pipe = make_pipeline(StandardScaler(), GradTuneClassifier(**params)).fit(x, y)
    xs = StandardScaler().fit(x).transform(x)
    manual = GradTuneClassifier(**params).fit(xs, y)
    np.testing.assert_array_equal(pipe.predict(x), manual.predict(xs))
    np.testing.assert_allclose(pipe.predict_proba(x), manual.predict_proba(xs))
    again = clone(pipe).fit(x, y)
    np.testing.assert_array_equal(again.predict(x), pipe.predict(x))
    assert pipe.get_params()["gradtuneclassifier__top_k"] == 45
    scores = cross_val_score(clone(pipe), x, y, cv=3)
    assert scores.shape == (3,) and (scores > 1 / 3).all()


def test_selection_rows_are_set_aside_and_scored_by_hand() -> None:
    x, y = _data(n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyDropWarning)  # clean data: no warning
        est = GradTuneClassifier(size=60, top_k=45, finetune=FAST, erm_epochs=20, random_state=4).fit(x, y)
    classes, codes = np.unique(y, return_inverse=True)
    ss = np.random.SeedSequence(4).spawn(4)
    train = stratified_split(codes, 0.5, np.random.default_rng(ss[0]))
    rows = np.flatnonzero(~train)
    sel = np.zeros(len(y), dtype=bool)
    sel[rows] = stratified_split(codes[rows], 0.25, np.random.default_rng(ss[3]))
    np.testing.assert_array_equal(est.selection_mask_, sel)
    np.testing.assert_array_equal(est.heldout_mask_, ~train & ~sel)
    ref = GradTune(60, 45, finetune=FAST, seed=int(ss[2].generate_state(1)[0])).fit_embeddings(
        x[~train & ~sel], codes[~train & ~sel], weight=est.erm_coef_, bias=est.erm_intercept_)
    np.testing.assert_allclose(est.coef_, ref.weight_.double().numpy(), rtol=1e-5, atol=1e-6)
    erm_acc = np.mean((x[sel] @ est.erm_coef_.T + est.erm_intercept_).argmax(1) == codes[sel])
    assert est.selection_accuracy_erm_ == pytest.approx(erm_acc)
    assert est.selection_accuracy_ == pytest.approx(np.mean(est.predict(x[sel]) == y[sel]))
    assert est.accuracy_dropped_ is False and est.report_.extra["accuracy_dropped"] is False


def test_warns_when_fine_tuning_on_label_noise_lowers_accuracy() -> None:
    # the right head, and 35% of labels flipped: the highest-norm rows are the flipped ones,
    # and hundreds of epochs on them invert the head (the failure the check is for)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 2, 600)
    x = rng.normal(size=(600, 2)) + np.array([[-1.0, 0.0], [1.0, 0.0]])[clean]
    y = np.where(rng.random(600) < 0.35, 1 - clean, clean)
    head = (np.array([[-1.0, 0.0], [1.0, 0.0]]), np.zeros(2))
    est = GradTuneClassifier(head, size=60, top_k=60, finetune=FinetuneConfig(epochs=300, lr=0.05),
                             random_state=0)
    with pytest.warns(AccuracyDropWarning, match="from 0.6.* to 0.[0-4]"):
        est.fit(x, y)
    sel = est.selection_mask_
    assert sel.sum() == sum(np.ceil(0.25 * np.bincount(y))) and not (sel & est.heldout_mask_).any()
    before = np.mean((x[sel] @ head[0].T).argmax(1) == y[sel])
    after = np.mean(est.predict(x[sel]) == y[sel])
    assert est.selection_accuracy_erm_ == pytest.approx(before)
    assert est.selection_accuracy_ == pytest.approx(after)
    assert before - after > 0.05 and est.accuracy_dropped_ and est.report_.extra["accuracy_dropped"]
    # a margin wider than the fall: no flag
    wide = clone(est).set_params(max_accuracy_drop=1.0).fit(x, y)
    assert wide.accuracy_dropped_ is False


def test_nested_finetune_parameters_in_a_grid_search() -> None:
    x, y = _data()
    deep = GradTuneClassifier().get_params(deep=True)
    assert deep["finetune__epochs"] == FinetuneConfig().epochs  # None means the paper's defaults
    pipe = Pipeline([("scale", StandardScaler()),
                     ("gt", GradTuneClassifier(size=40, top_k=30, erm_epochs=10, random_state=0))])
    grid = GridSearchCV(pipe, {"gt__finetune__epochs": [2, 6], "gt__finetune__lr": [0.01]}, cv=2).fit(x, y)
    best = grid.best_estimator_.named_steps["gt"]
    assert best.finetune.epochs == grid.best_params_["gt__finetune__epochs"] and best.finetune.lr == 0.01
    assert pipe.named_steps["gt"].finetune is None  # the searched copies, not the original
    # setting a field copies the config: the object passed in is never modified
    est = GradTuneClassifier(finetune=FAST).set_params(finetune__epochs=3)
    assert est.finetune.epochs == 3 and FAST.epochs == 15
    # the result equals passing the whole config
    a = GradTuneClassifier(size=40, top_k=30, erm_epochs=10, finetune=FinetuneConfig(epochs=4)).fit(x, y)
    b = GradTuneClassifier(size=40, top_k=30, erm_epochs=10).set_params(finetune__epochs=4).fit(x, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    with pytest.raises(GradTuneInputError, match="unknown fine-tuning setting finetune__epoch;"):
        est.set_params(finetune__epoch=3)
    with pytest.raises(GradTuneInputError, match="epochs"):
        est.set_params(finetune__epochs=-1)


def test_exported_lazily_from_the_package() -> None:
    assert gradtune.GradTuneClassifier is GradTuneClassifier
    assert gradtune.AccuracyDropWarning is AccuracyDropWarning
