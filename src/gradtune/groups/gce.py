"""A bias-amplified probe: a linear head trained with the generalized cross-entropy.

After Nam et al., "Learning from Failure" (NeurIPS 2020). The generalized
cross-entropy ``GCE(p, y) = (1 - p_y^q) / q`` (Zhang & Sabuncu, 2018) has the
cross-entropy's gradient scaled by ``p_y^q``: samples the probe already fits pull
hardest, samples it gets wrong barely at all. Trained on a biased pool, the probe
leans on whatever rule fits the majority, the shortcut, and keeps getting the
minority wrong instead of memorizing it. Pseudo-group = class x (probe wrong).

Defaults: q = 0.7 (as in LfF), features standardized with the pool's statistics,
Adam lr 1e-3, batch 128, 1,000 steps from a zero head, batches by reshuffled passes.
Like the XRM twins, the probe trains on the CPU (:mod:`gradtune.groups._heads`).

Shapes: N pool rows, M rows to label, d features, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gradtune._threads import torch_threads
from gradtune._validation import (
    GradTuneInputError,
    check_features,
    check_labels,
    check_nonneg_float,
    check_positive_int,
    make_generator,
)
from gradtune.groups._heads import epoch_batches, gce_logit_grad, train_heads
from gradtune.groups.base import InferredGroups, check_pool, class_by_flag, standardizer
from gradtune.groups.registry import register_group_inference

__all__ = ["GCEConfig", "GCEProbe", "fit_gce_probe", "gce_groups", "gce_loss"]


@dataclass(frozen=True)
class GCEConfig:
    """How the GCE probe is trained.

    Parameters
    ----------
    q : float, default=0.7
        GCE exponent in (0, 1]; towards 0 the loss tends to cross-entropy, at 1 it is
        the mean absolute error of ``p_y``.
    n_steps : int, default=1000
    batch_size : int, default=128
        Capped at the pool size.
    lr : float, default=1e-3
        Adam step size (betas 0.9 / 0.999, eps 1e-8).
    standardize : bool, default=True
    n_threads : int or None, default=1
    """

    q: float = 0.7
    n_steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    standardize: bool = True
    n_threads: int | None = 1

    def __post_init__(self) -> None:
        q = check_nonneg_float(self.q, "GCEConfig.q", positive=True)
        if q > 1:
            raise GradTuneInputError(f"GCEConfig.q must lie in (0, 1], got {self.q!r}")
        check_positive_int(self.n_steps, "GCEConfig.n_steps")
        check_positive_int(self.batch_size, "GCEConfig.batch_size")
        check_nonneg_float(self.lr, "GCEConfig.lr", positive=True)
        if self.n_threads is not None:
            check_positive_int(self.n_threads, "GCEConfig.n_threads")


def gce_loss(logits: Any, labels: Any, q: float = 0.7) -> torch.Tensor:
    """Mean generalized cross-entropy ``mean_i (1 - p_{i,y_i}^q) / q`` (differentiable).

    Parameters
    ----------
    logits : Tensor of shape (N, C)
    labels : array-like of shape (N,)
    q : float in (0, 1], default=0.7

    Returns
    -------
    Tensor of shape ()
    """
    z = logits if isinstance(logits, torch.Tensor) else check_features(logits, "logits")
    if z.ndim != 2:
        raise GradTuneInputError(f"logits must be 2-dimensional (N, C), got shape {tuple(z.shape)}")
    y = check_labels(labels, z.shape[1], n=z.shape[0]).to(z.device)
    logp_y = torch.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    return ((1.0 - torch.exp(q * logp_y)) / q).mean()


@dataclass(frozen=True)
class GCEProbe:
    """A fitted GCE probe.

    Attributes
    ----------
    weight : Tensor of shape (C, d)
        Acts on standardized features ``(x - mean) / scale``.
    bias : Tensor of shape (C,)
    mean, scale : Tensor of shape (d,)
    config : GCEConfig
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    config: GCEConfig = field(default_factory=GCEConfig)

    @torch.no_grad()
    def predict_proba(self, features: Any) -> torch.Tensor:
        """Class probabilities, shape (M, C)."""
        x = check_features(features, "features").detach().cpu()
        if x.shape[1] != self.weight.shape[1]:
            raise GradTuneInputError(
                f"features has {x.shape[1]} columns but the probe was fitted on {self.weight.shape[1]}")
        xs = (x.to(self.weight.dtype) - self.mean) / self.scale
        return torch.softmax(xs @ self.weight.T + self.bias, dim=1)

    def assign(self, features: Any, labels: Any) -> InferredGroups:
        """Pseudo-groups ``2 * label + (probe wrong)`` of any rows (the pool or new ones).

        ``scores`` = 1 - the probe's probability of the label.
        """
        p = self.predict_proba(features)
        c = self.weight.shape[0]
        y = check_labels(labels, c, n=p.shape[0]).cpu()
        wrong = (p.argmax(dim=1) != y).numpy()
        y_np = y.numpy()
        groups, n_groups = class_by_flag(y_np, wrong, c)
        score = 1.0 - p.gather(1, y[:, None]).squeeze(1)
        return InferredGroups(groups, n_groups, wrong, score.double().numpy(), "gce",
                              {"probe": self, "q": self.config.q})


def fit_gce_probe(features: Any, labels: Any, *, seed: int | torch.Generator,
                  config: GCEConfig | None = None, n_classes: int | None = None) -> GCEProbe:
    """Train a linear probe with the GCE loss on a pool.

    Parameters
    ----------
    features : array-like of shape (N, d)
    labels : array-like of shape (N,)
    seed : int or torch.Generator
        Source of the batches.
    config : GCEConfig, optional
    n_classes : int, optional

    Returns
    -------
    GCEProbe
    """
    config = GCEConfig() if config is None else config
    x, y, c = check_pool(features, labels, n_classes, min_rows=1)
    x = x.detach().cpu()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    y = y.cpu()
    g = make_generator(seed)
    n, d = x.shape
    batches = epoch_batches(torch.arange(n), config.n_steps, min(config.batch_size, n), g)[:, None, :]
    mean, scale = standardizer(x, config.standardize)
    xs = (x - mean) / scale
    weight = torch.zeros(1, c, d, dtype=x.dtype)
    bias = torch.zeros(1, c, dtype=x.dtype)
    q = float(config.q)
    with torch.no_grad(), torch_threads(config.n_threads):
        train_heads(xs, y, batches, weight, bias,
                    logit_grad=lambda z, yb: gce_logit_grad(z, yb, q), lr=config.lr)
    return GCEProbe(weight[0], bias[0], mean, scale, config)


@register_group_inference("gce", ("features", "labels", "seed"),
                          "a linear probe trained with generalized cross-entropy gets it wrong")
def gce_groups(features: Any, labels: Any, *, seed: int | torch.Generator,
               config: GCEConfig | None = None, n_classes: int | None = None) -> InferredGroups:
    """Fit a GCE probe on the pool and return the pool's pseudo-groups.

    Returns
    -------
    InferredGroups
        ``groups = 2 * label + (probe wrong)`` (G = 2C); ``scores`` = 1 - the probe's
        probability of the label; ``info["probe"]`` is the :class:`GCEProbe`, whose
        :meth:`GCEProbe.assign` labels new rows.
    """
    probe = fit_gce_probe(features, labels, seed=seed, config=config, n_classes=n_classes)
    return probe.assign(features, labels)
