"""Automatic Feature Reweighting, AFR (Qiu et al., 2023), stage 2 on the last layer.

AFR retrains the last layer of an ERM model with a weighted loss that emphasizes the
examples the ERM model gets wrong:

* weights ``w_i ∝ exp(-gamma * p_i)``, ``p_i`` the ERM model's softmax probability of
  the true class; multiplied by ``N / n_{y_i}`` (class rebalancing as the authors'
  ``rebalance_weights`` in ``losses.py`` does it), then normalized to sum to 1;
* objective ``sum_i w_i CE_i(W, b) + lam * (||W - W0||^2 + ||b - b0||^2)``, with
  ``(W0, b0)`` the ERM last layer, which is also the starting point;
* full-batch SGD (lr 1e-2 Waterbirds / 2e-2 CelebA, no momentum), the gradient clipped to
  total norm 1 (``torch.nn.utils.clip_grad_norm_``), 500 (Waterbirds) / 1000 (CelebA) epochs.

AFR's paper computes the weights and retrains on a held-out part of the *training*
set. Here, as for every last-layer method in this package, the ``heldout`` rows (half of
validation) play that role, so that all methods retrain on the same data; no group
labels are read.

Follows the authors' ``losses.get_exp_weights`` / ``afr_fn`` / ``rebalance_weights`` and
their last-layer training loop. Deliberate differences:

* the retraining rows are the ``heldout`` half of validation, not a held-out part of the
  training set (above);
* defaults ``gamma=1``, ``lam=0.1``, 500 steps, and the grid
  ``gamma in {0.5, 1, 2, 3, 4, 6, 8, 10}``, ``lam in {0, .1, .2, .3}``: the authors'
  Waterbirds default (``gamma=10`` in ``linspace(4, 20, 33)``) collapses on held-out sets
  where the ERM head makes few mistakes. With 70-90 errors among 600-4000 held-out rows,
  ``gamma=10`` puts more than 99.5% of the weight on the wrong rows and after 500 steps
  the head predicts almost one class (test worst-group accuracy near 0 on fmnist-biased
  and fmnist-spurious); ``gamma >= 4`` already loses accuracy with 500 steps. The grid
  therefore reaches down to the values where the method is stable (measurements:
  ``docs/baselines.md``); choose on the selection half with :mod:`gradtune.methods.tuning`;
* ``rebalance='total'`` (every class's weights sum to the same total) and ``'none'`` are
  kept as options.

The gradient is the closed form of the objective (``(P - Y)^T diag(w) [H, 1]`` plus
``2 lam (theta - theta0)``); the tests check it against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradtune._validation import (
    GradTuneInputError,
    check_choice,
    check_features,
    check_labels,
    check_nonneg_float,
    check_positive_int,
)
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.head_loop import AFRObjective, augment, full_batch_sampler, train_head
from gradtune.methods.balancing import torch_threads
from gradtune.methods.base import LinearHead, Method, MethodResult, erm_head, param, register_method

__all__ = ["AFRMethod", "afr_weights", "afr_objective", "afr_train"]


AFR_REBALANCE = ("count", "total", "none")


def afr_weights(logits: Any, labels: Any, gamma: float, *, rebalance: str = "count") -> np.ndarray:
    """AFR's per-example weights, shape (N,), non-negative, summing to 1.

    Parameters
    ----------
    logits : array-like of shape (N, C)
        The ERM model's logits on the rows to retrain on.
    labels : array-like of shape (N,)
    gamma : float >= 0
        Sharpness: ``w_i ∝ exp(-gamma * p_i)`` with ``p_i = softmax(logits_i)[y_i]``.
    rebalance : {'count', 'total', 'none'}, default='count'
        ``'count'``: multiply by ``N / n_{y_i}`` (the authors' ``rebalance_weights``);
        ``'total'``: rescale so each class present gets the same total weight;
        ``'none'``: no class rebalancing.
    """
    check_choice(rebalance, "rebalance", AFR_REBALANCE)
    z = check_features(logits, "logits").to(torch.float64)
    y = check_labels(labels, z.shape[1], n=z.shape[0])
    gamma = check_nonneg_float(gamma, "gamma")
    if z.shape[0] == 0:
        raise GradTuneInputError("no rows to weight")
    p_true = torch.softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    w = torch.exp(-gamma * p_true)
    if rebalance == "count":
        count = torch.bincount(y, minlength=z.shape[1]).to(w.dtype)
        w = w * (y.shape[0] / count[y])
    elif rebalance == "total":
        class_sum = torch.zeros(z.shape[1], dtype=w.dtype).index_add_(0, y, w)
        w = w / class_sum[y]
    return (w / w.sum()).numpy()


def afr_objective(weight: Any, bias: Any, features: Any, labels: Any, sample_weight: Any,
                  weight0: Any, bias0: Any, lam: float) -> float:
    """``sum_i w_i CE_i + lam (||W - W0||^2 + ||b - b0||^2)`` as a float (float64).

    Shapes: weight/weight0 (C, d), bias/bias0 (C,), features (N, d), labels (N,),
    sample_weight (N,).
    """
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(bias), dtype=torch.float64)
    h = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    sw = torch.as_tensor(np.asarray(sample_weight), dtype=torch.float64)
    z = h @ w.T + b
    ce = torch.logsumexp(z, 1) - z.gather(1, y[:, None]).squeeze(1)
    reg = ((w - torch.as_tensor(np.asarray(weight0), dtype=torch.float64)) ** 2).sum() + \
        ((b - torch.as_tensor(np.asarray(bias0), dtype=torch.float64)) ** 2).sum()
    return float((sw * ce).sum() + lam * reg)


@torch.no_grad()
def afr_train(features: Any, labels: Any, weight0: Any, bias0: Any, sample_weight: Any, *,
              lam: float, lr: float, epochs: int, grad_clip: float | None,
              momentum: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Full-batch gradient descent on AFR's objective, starting from ``(weight0, bias0)``
    (the settings are :class:`AFRMethod`'s, where their defaults are declared).

    Each epoch is one step: gradient of :func:`afr_objective`, clipped to total norm
    ``grad_clip`` as ``clip_grad_norm_`` does (scale ``grad_clip / (norm + 1e-6)`` when
    smaller than 1), then ``torch.optim.SGD``'s update.

    Returns
    -------
    weight : Tensor (C, d), bias : Tensor (C,), objective : np.ndarray (epochs,) the
    objective before each step.
    """
    h = check_features(features, "features").to(torch.float32)
    n, d = h.shape
    w0 = check_features(weight0, "weight0").to(torch.float32)
    c = w0.shape[0]
    if w0.shape[1] != d:
        raise GradTuneInputError(f"weight0 has shape {tuple(w0.shape)}; expected ({c}, {d})")
    b0 = check_features(bias0, "bias0", ndim=1).to(torch.float32)
    y = check_labels(labels, c, n=n)
    sw = check_features(sample_weight, "sample_weight", ndim=1).to(torch.float32)
    if sw.shape != (n,) or bool((sw < 0).any()):
        raise GradTuneInputError(f"sample_weight must be non-negative of shape ({n},), got {tuple(sw.shape)}")
    lam = check_nonneg_float(lam, "lam")
    lr = check_nonneg_float(lr, "lr", positive=True)
    epochs = check_positive_int(epochs, "epochs", allow_zero=True)
    ha = augment(h)  # (N, d+1)
    theta0 = torch.cat([w0, b0[:, None]], dim=1)  # (C, d+1)
    objective = AFRObjective(ha, y, c, sw, theta0, lam)
    theta = train_head(theta0.clone(), objective, full_batch_sampler(), epochs=epochs, batch_size=n, lr=lr,
                       momentum=momentum, grad_clip=grad_clip)
    return theta[:, :d].contiguous(), theta[:, d].contiguous(), np.asarray(objective.values, dtype=np.float64)


@register_method
@dataclass
class AFRMethod(Method):
    """AFR's last-layer stage on the held-out rows (see module doc).

    Parameters
    ----------
    gamma : float, default=1.0
        Weight sharpness (the authors: Waterbirds grid linspace(4, 20, 33), CelebA
        linspace(1, 3, 10); here grid {0.5, ..., 10}, see module doc).
    lam : float, default=0.1
        Pull toward the ERM last layer (Waterbirds grid {0, .1, .2, .3}).
    lr : float, default=1e-2
        Full-batch SGD step (2e-2 for CelebA).
    epochs : int, default=500
        Full-batch steps (1000 for CelebA).
    grad_clip : float or None, default=1.0
    momentum : float, default=0.0
    rebalance : {'count', 'total', 'none'}, default='count'
    """

    name = "afr"
    description = "AFR (Qiu et al.): last layer retrained with exp(-gamma p_y) weights and a pull to the ERM head"

    gamma: float = param(1.0, "weight sharpness", ge=0, space=(0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0))
    lam: float = param(0.1, "pull toward the ERM last layer", ge=0, space=(0.0, 0.1, 0.2, 0.3))
    lr: float = param(1e-2, "full-batch SGD step", gt=0)
    epochs: int = param(500, "full-batch steps", ge=0, fast=20)
    grad_clip: float | None = param(1.0, "gradient-norm clip (None: no clipping)", gt=0, optional=True)
    momentum: float = param(0.0, "SGD momentum", ge=0)
    rebalance: str = param("count", "class rebalancing of the weights", choices=AFR_REBALANCE)

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        check_positive_int(seed, "seed", allow_zero=True)  # AFR is deterministic
        head = erm_head(bundle)
        held = bundle.view("heldout")
        weights = afr_weights(head.logits(held.features), held.labels, self.gamma,
                              rebalance=self.rebalance)
        with torch_threads(1):
            w, b, objective = afr_train(held.features, held.labels, head.weight, head.bias, weights,
                                        lam=self.lam, lr=self.lr, epochs=self.epochs,
                                        grad_clip=self.grad_clip, momentum=self.momentum)
        diag: dict[str, Any] = {
            "weight_max": float(weights.max()),
            "weight_on_erm_errors": float(weights[head.predict(held.features) != held.labels].sum()),
            "effective_sample_size": float(1.0 / (weights ** 2).sum()),
            "initial_objective": float(objective[0]) if objective.size else None,
            "final_objective": afr_objective(w.numpy(), b.numpy(), held.features, held.labels, weights,
                                             head.weight, head.bias, self.lam),
        }
        return MethodResult(LinearHead(w, b), diag)
