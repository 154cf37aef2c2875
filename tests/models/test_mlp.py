"""The ERM MLP of the offline benchmarks: seeded, class-balanced, head consistent with logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtune._validation import GradTuneInputError
from gradtune.models.mlp import MLPConfig, train_erm_mlp


def toy(n: int = 400, d: int = 6, minority: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < minority).astype(np.int64)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 4.0 * y
    return x, y


CFG = MLPConfig(hidden=(16, 8), epochs=5, batch_size=32)


def test_seeded_and_deterministic():
    x, y = toy()
    tr = np.arange(300)
    a = train_erm_mlp(x, y, tr, seed=1, config=CFG)
    b = train_erm_mlp(x, y, tr, seed=1, config=CFG)
    c = train_erm_mlp(x, y, tr, seed=2, config=CFG)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.penultimate, b.penultimate)
    assert not np.allclose(a.logits, c.logits)


def test_global_rng_untouched():
    x, y = toy()
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 - checking the legacy global RNG
    train_erm_mlp(x, y, np.arange(300), seed=0, config=CFG)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


def test_head_matches_logits_and_transform():
    x, y = toy()
    r = train_erm_mlp(x, y, np.arange(300), seed=0, config=MLPConfig(hidden=(16, 8), epochs=20))
    assert r.penultimate.shape == (400, 8) and r.head_weight.shape == (2, 8)
    assert r.head_bias.shape == (2,) and r.logits.shape == (400, 2)
    assert r.penultimate.dtype == np.float32 and (r.penultimate >= 0).all()  # ReLU outputs
    np.testing.assert_allclose(r.penultimate @ r.head_weight.T + r.head_bias, r.logits, atol=1e-5)
    np.testing.assert_allclose(r.transform(x[:10]), r.penultimate[:10], atol=1e-6)
    assert r.train_losses.shape == (20,) and r.train_losses[-1] < r.train_losses[0]
    assert ((r.logits[300:].argmax(1)) == y[300:]).mean() > 0.85  # learns the signal (Bayes accuracy ~0.98)


def test_only_training_rows_are_used():
    x, y = toy()
    tr = np.arange(300)
    a = train_erm_mlp(x, y, tr, seed=0, config=CFG)
    y2 = y.copy()
    y2[300:] = 1 - y2[300:]
    x2 = x.copy()
    x2[300:] += 100.0
    b = train_erm_mlp(x2, y2, tr, seed=0, config=CFG)
    np.testing.assert_array_equal(a.head_weight, b.head_weight)
    np.testing.assert_allclose(a.input_mean, b.input_mean)


def test_class_balanced_sampling_counters_imbalance():
    # labels unrelated to the features, 5% positives: uniform ERM learns "always 0",
    # class-balanced ERM predicts the minority class about half the time
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (rng.random(n) < 0.05).astype(np.int64)
    cfg = MLPConfig(hidden=(8,), epochs=5, batch_size=64)
    bal = train_erm_mlp(x, y, np.arange(n), seed=0, config=cfg)
    uni = train_erm_mlp(x, y, np.arange(n), seed=0, config=MLPConfig(**{**cfg.to_dict(), "sampler": "uniform"}))
    assert (uni.logits.argmax(1) == 1).mean() < 0.02
    assert 0.2 < (bal.logits.argmax(1) == 1).mean() < 0.8


def test_input_errors():
    x, y = toy()
    with pytest.raises(GradTuneInputError, match="train_idx"):
        train_erm_mlp(x, y, np.array([], dtype=int), seed=0, config=CFG)
    with pytest.raises(GradTuneInputError, match="fewer than 2 classes"):
        train_erm_mlp(x, np.zeros_like(y), np.arange(10), seed=0, config=CFG)
    with pytest.raises(GradTuneInputError, match="seed"):
        train_erm_mlp(x, y, np.arange(10), seed=None, config=CFG)
    with pytest.raises(GradTuneInputError, match="hidden"):
        MLPConfig(hidden=())
