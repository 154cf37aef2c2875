"""uLA's conditional table, offsets, EMA and adjusted training against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradtune._validation import GradTuneInputError
from gradtune.finetune.head_loop import ema_update
from gradtune.methods import ULAMethod, ULAModel
from gradtune.methods.base import LinearHead
from gradtune.methods.ula import _train_adjusted, adjustment_offsets, conditional_from_joint


def test_conditional_and_offsets_by_hand():
    joint = np.array([[0.3, 0.1], [0.0, 0.0], [0.2, 0.4]])
    cond = conditional_from_joint(joint)
    np.testing.assert_allclose(cond, [[0.75, 0.25], [0.5, 0.5], [1 / 3, 2 / 3]])
    off = adjustment_offsets(cond, np.array([2, 0]), tau=2.0)
    np.testing.assert_allclose(off, [[2 * math.log(1 / 3), 2 * math.log(2 / 3)],
                                     [2 * math.log(0.75), 2 * math.log(0.25)]])


def test_ema_update():
    s = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    out = ema_update(s, torch.tensor([[1.0, 0.0]], dtype=torch.float64), 0.9)
    np.testing.assert_allclose(out.numpy(), [[0.55, 0.45]])


def test_post_hoc_model_by_hand():
    head = LinearHead(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.0, 0.0]))
    bias_head = LinearHead(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0.0, 0.0]))
    cond = np.array([[0.8, 0.2], [0.1, 0.9]])
    model = ULAModel(head, bias_head, cond, tau=1.0)
    x = np.array([[2.0, 1.0], [0.5, 3.0]])
    # bias predictions: x1 -> [1, 2] -> class 1; x2 -> [3, .5] -> class 0
    expected = np.array([[2 - math.log(0.1), 1 - math.log(0.9)], [0.5 - math.log(0.8), 3 - math.log(0.2)]])
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-6)


def test_adjusted_training_matches_autograd_reference():
    rng = np.random.default_rng(0)
    n, d = 24, 3
    h = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float64)
    y = torch.tensor(rng.integers(0, 2, n))
    b = torch.tensor(rng.integers(0, 2, n))
    theta0 = torch.tensor(rng.normal(size=(2, d + 1)), dtype=torch.float64)
    kw = dict(epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.01, tau=1.0, beta=0.9)
    theta, joint = _train_adjusted(h, y, b, theta0.clone(), 2, gen=torch.Generator().manual_seed(3), **kw)

    W = theta0[:, :d].clone().requires_grad_(True)
    B = theta0[:, d].clone().requires_grad_(True)
    opt = torch.optim.SGD([W, B], lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(3)
    m = np.zeros((2, 2))
    t = 0
    for _ in range(2):
        for idx in torch.randperm(n, generator=gen).split(8):
            batch = np.zeros((2, 2))
            for i in idx.tolist():  # a slow, one-row-at-a-time reference
                batch[int(b[i]), int(y[i])] += 1.0 / len(idx)
            m = 0.9 * m + 0.1 * batch
            t += 1
            mhat = m / (1 - 0.9 ** t)
            cond = mhat / mhat.sum(1, keepdims=True)
            off = torch.tensor(np.log(np.clip(cond, 1e-8, None))[b[idx].numpy()])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(h[idx] @ W.T + B + off, y[idx]).backward()
            opt.step()
    np.testing.assert_allclose(theta[:, :d].numpy(), W.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(theta[:, d].numpy(), B.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(joint.numpy(), m / (1 - 0.9 ** t), rtol=1e-12)


@pytest.mark.parametrize("mode", ["loss", "post_hoc"])
def test_method_modes(bundle, mode):
    res = ULAMethod(mode=mode, epochs=2).fit(bundle, seed=0)
    cond = np.array(res.diagnostics["p_y_given_bias"])
    np.testing.assert_allclose(cond.sum(1), 1.0)
    z = res.model.logits(bundle.view("selection").features)
    assert z.shape == (160, 2) and np.isfinite(z).all()
    if mode == "post_hoc":
        assert isinstance(res.model, ULAModel)
    assert not ULAMethod.uses_group_labels_train and not ULAMethod.uses_group_labels_val


def test_unknown_estimator_is_a_clear_error(bundle):
    with pytest.raises(GradTuneInputError, match="estimator"):
        ULAMethod(estimator="median", epochs=1).fit(bundle, seed=0)


def test_soft_training_matches_the_authors_update_rule():
    """_train_adjusted with bias probabilities against the authors' rule, one row at a time:
    confusion = sum_i q_i[b] [y_i = y] / B per batch; the moving average takes the first as it is."""
    rng = np.random.default_rng(1)
    n, d = 26, 3
    h = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float64)
    y = torch.tensor(rng.integers(0, 2, n))
    q = torch.softmax(torch.tensor(rng.normal(size=(n, 2)) * 2), dim=1)
    b = q.argmax(1)
    theta0 = torch.tensor(rng.normal(size=(2, d + 1)), dtype=torch.float64)
    kw = dict(epochs=3, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.01, tau=1.0, beta=0.9)
    theta, joint = _train_adjusted(h, y, b, theta0.clone(), 2, gen=torch.Generator().manual_seed(4), bias_prob=q,
                                   **kw)

    W = theta0[:, :d].clone().requires_grad_(True)
    B = theta0[:, d].clone().requires_grad_(True)
    opt = torch.optim.SGD([W, B], lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(4)
    ema = None
    for _ in range(3):
        for idx in torch.randperm(n, generator=gen).split(8):
            conf = np.zeros((2, 2))
            for i in idx.tolist():
                for bc in range(2):
                    conf[bc, int(y[i])] += float(q[i, bc]) / len(idx)
            ema = conf if ema is None else 0.9 * ema + 0.1 * conf
            cond = ema / ema.sum(1, keepdims=True)
            off = torch.tensor(np.log(np.clip(cond, 1e-8, None))[b[idx].numpy()])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(h[idx] @ W.T + B + off, y[idx]).backward()
            opt.step()
    np.testing.assert_allclose(theta[:, :d].numpy(), W.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(theta[:, d].numpy(), B.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(joint.numpy(), ema, rtol=1e-12)


def test_estimators_differ_and_soft_is_default(bundle):
    soft = ULAMethod(epochs=2).fit(bundle, seed=0)
    hard = ULAMethod(epochs=2, estimator="hard").fit(bundle, seed=0)
    assert soft.diagnostics["estimator"] == "soft" and hard.diagnostics["estimator"] == "hard"
    assert not np.allclose(soft.diagnostics["p_y_given_bias"], hard.diagnostics["p_y_given_bias"])
