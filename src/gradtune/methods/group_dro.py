"""Group DRO (Sagawa et al., 2020): the online group-weight update, a pluggable loss, and
a last-layer method.

The authors' ``LossComputer`` does, for every minibatch:

1. ``loss_g`` = mean cross-entropy of the batch's rows of group g (0 for a group with no
   row in the batch);
2. ``q <- q * exp(eta * (loss_g + C / sqrt(n_g)))``, then ``q <- q / sum(q)``, where
   ``n_g`` is group g's count in the whole training set and ``C`` the generalization
   adjustment (the update uses detached losses);
3. the loss to minimize is ``q . loss_g`` with the *updated* q.

``eta`` (their ``robust_step_size``) is 0.01; minibatches are drawn group-balanced
(``1 / n_g`` with replacement) and weight decay is strong.

* :func:`group_dro_update` is step 2, a pure function (done in log space: the same
  numbers without overflow).
* :class:`GroupDROLoss` is the ``loss_fn(logits, labels, groups, indices) -> scalar``
  that :func:`gradtune.models.trainer.train` accepts, with ``state_dict`` /
  ``load_state_dict`` for checkpoints.
* :class:`GroupDROMethod` (``"group-dro"``) runs the same objective on the last layer
  only, over the ``heldout`` rows with their group labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from gradtune._validation import (
    GradTuneInputError,
    check_nonneg_float,
    check_positive_int,
    make_generator,
)
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import sgd_step_
from gradtune.methods.balancing import require_groups, torch_threads
from gradtune.methods.base import LinearHead, Method, MethodResult, erm_head, register_method

__all__ = ["group_dro_update", "group_mean_losses", "GroupDROLoss", "GroupDROMethod"]


def group_dro_update(q: Any, group_losses: Any, group_counts: Any, eta: float, adj: Any = 0.0) -> torch.Tensor:
    """One exponentiated-gradient step on the group weights.

    Parameters
    ----------
    q : array-like of shape (G,)
        Current group weights (positive, summing to 1).
    group_losses : array-like of shape (G,)
        Mean loss of each group in this batch (0 for groups absent from it).
    group_counts : array-like of shape (G,)
        Size ``n_g`` of each group in the training set (for the adjustment).
    eta : float
        Step size (the authors' ``robust_step_size``, 0.01).
    adj : float or array-like of shape (G,), default=0
        Generalization adjustment ``C``; adds ``C / sqrt(n_g)`` to each group's loss
        (groups with ``n_g = 0`` get no adjustment).

    Returns
    -------
    Tensor of shape (G,): ``q * exp(eta * (loss + adj / sqrt(n))) / sum(...)``, in the
    dtype of ``group_losses`` (float32 at least).
    """
    losses = torch.as_tensor(group_losses).detach()
    if not losses.is_floating_point():
        losses = losses.to(torch.float32)
    qt = torch.as_tensor(q, dtype=losses.dtype, device=losses.device).detach()
    counts = torch.as_tensor(group_counts, dtype=losses.dtype, device=losses.device)
    if not (qt.shape == losses.shape == counts.shape) or qt.ndim != 1:
        raise GradTuneInputError(
            f"q {tuple(qt.shape)}, group_losses {tuple(losses.shape)} and group_counts "
            f"{tuple(counts.shape)} must all have shape (G,)"
        )
    if bool((qt <= 0).any()):
        raise GradTuneInputError("q must be positive (start from the uniform 1/G)")
    return _dro_step(qt, losses, _adjustment(adj, counts), check_nonneg_float(eta, "eta"))


def _adjustment(adj: Any, counts: torch.Tensor) -> torch.Tensor:
    """``adj / sqrt(n_g)`` per group, 0 where ``n_g = 0``; shape (G,)."""
    a = torch.as_tensor(adj, dtype=counts.dtype, device=counts.device)
    return torch.where(counts > 0, a / counts.clamp_min(1.0).sqrt(), torch.zeros_like(counts))


def _dro_step(q: torch.Tensor, losses: torch.Tensor, bonus: torch.Tensor, eta: float) -> torch.Tensor:
    """``softmax(log q + eta (losses + bonus))`` = the normalized multiplicative update."""
    return torch.softmax(q.log() + eta * (losses + bonus), dim=0)


def group_mean_losses(per_sample: torch.Tensor, groups: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``per_sample`` (B,) within each group (0 where a group has no row) and the
    per-group row counts, both of shape (G,)."""
    counts = torch.bincount(groups, minlength=n_groups).to(per_sample.dtype)
    sums = torch.zeros(n_groups, dtype=per_sample.dtype, device=per_sample.device).index_add(0, groups, per_sample)
    return sums / counts.clamp_min(1.0), counts


class GroupDROLoss:
    """``loss_fn(logits, labels, groups, indices) -> q . loss_g`` with the online update.

    Parameters
    ----------
    group_counts : array-like of shape (G,)
        Group sizes of the whole training set (G = number of groups).
    eta : float, default=0.01
    adj : float or array-like (G,), default=0.0
        Generalization adjustment C.

    Attributes
    ----------
    q : Tensor of shape (G,), the current group weights (starts uniform).
    """

    def __init__(self, group_counts: Any, *, eta: float = 0.01, adj: Any = 0.0) -> None:
        self.group_counts = torch.as_tensor(np.asarray(group_counts), dtype=torch.float32)
        if self.group_counts.ndim != 1 or self.group_counts.numel() == 0:
            raise GradTuneInputError(f"group_counts must be a non-empty (G,) array, got shape {tuple(self.group_counts.shape)}")
        self.n_groups = int(self.group_counts.numel())
        self.eta = check_nonneg_float(eta, "eta")
        self.adj = adj
        self.q = torch.full((self.n_groups,), 1.0 / self.n_groups)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                 indices: torch.Tensor | None = None) -> torch.Tensor:
        if groups.numel() and int(groups.max()) >= self.n_groups:
            raise GradTuneInputError(f"group id {int(groups.max())} out of range for {self.n_groups} groups")
        per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        losses, _ = group_mean_losses(per, groups, self.n_groups)
        self.q = group_dro_update(self.q.to(losses.device), losses.detach(),
                                  self.group_counts.to(losses.device), self.eta, self.adj).to(losses.dtype)
        return (self.q * losses).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.detach().cpu().clone(), "eta": self.eta, "adj": self.adj,
                "group_counts": self.group_counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        q = torch.as_tensor(state["q"])
        if q.shape != (self.n_groups,):
            raise GradTuneInputError(f"saved q has shape {tuple(q.shape)}, expected ({self.n_groups},)")
        self.q = q.clone()


@torch.no_grad()
def _train_head(h: torch.Tensor, y: torch.Tensor, g: torch.Tensor, theta: torch.Tensor, n_groups: int,
                group_counts: torch.Tensor, *, epochs: int, batch_size: int, lr: float, momentum: float,
                weight_decay: float, eta: float, adj: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch SGD on ``q . loss_g`` for a linear head ``theta`` (C, d+1), in place.

    Every epoch draws N rows with replacement with probability ``1 / n_g``
    (``torch.multinomial`` with ``gen``) and splits them into batches. A step follows
    ``torch.optim.SGD`` (coupled weight decay, momentum, dampening 0). Returns
    ``(theta, q)``.
    """
    n = h.shape[0]
    c = theta.shape[0]
    ha = torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], dim=1)
    onehot = torch.nn.functional.one_hot(y, c).to(h.dtype)
    sample_w = 1.0 / group_counts[g].to(torch.float64)
    bonus = _adjustment(adj, group_counts.to(h.dtype))
    q = torch.full((n_groups,), 1.0 / n_groups, dtype=h.dtype)
    buf = torch.zeros_like(theta)
    step = 0
    for _ in range(epochs):
        order = torch.multinomial(sample_w, n, replacement=True, generator=gen)
        for idx in order.split(batch_size):
            hb, yb, gb = ha[idx], onehot[idx], g[idx]
            logp = torch.log_softmax(hb @ theta.T, dim=1)
            per = -(logp * yb).sum(1)
            losses, cnt = group_mean_losses(per, gb, n_groups)
            q = _dro_step(q, losses, bonus, eta)
            coef = (q / cnt.clamp_min(1.0))[gb]  # d(q . loss_g) / d CE_i
            grad = ((logp.exp() - yb) * coef[:, None]).T @ hb
            grad.add_(theta, alpha=weight_decay)
            buf = sgd_step_(theta, grad, buf, step == 0, lr=lr, momentum=momentum)
            step += 1
    return theta, q


@register_method
@dataclass
class GroupDROMethod(Method):
    """Group DRO on the last layer, over the held-out rows and their group labels.

    Parameters
    ----------
    eta : float, default=0.01
        Group-weight step size (the authors' value).
    adj : float, default=0.0
        Generalization adjustment C (the authors search {0, ..., 5}; code default 0).
    epochs : int, default=100
    batch_size : int, default=32
    lr : float, default=1e-3
    momentum : float, default=0.9
    weight_decay : float, default=1e-2
        "Strong" L2 relative to ERM's 1e-4 (the authors use 1.0 with lr 1e-5 on a whole
        ResNet; on a head alone at lr 1e-3 that would erase it, so 1e-2 by default and
        {1e-3, 1e-2, 1e-1} in the search space).
    reset : bool, default=False
        Re-initialize the head (``nn.Linear`` init) instead of starting from the ERM head.
    """

    name = "group-dro"
    description = "Group DRO (Sagawa et al.) on the last layer: online group weights, group-balanced sampling"
    uses_group_labels_train = True
    uses_group_labels_val = True
    search_space: ClassVar[dict[str, list]] = {
        "adj": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        "weight_decay": [1e-3, 1e-2, 1e-1],
    }

    eta: float = 0.01
    adj: float = 0.0
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-2
    reset: bool = False

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed = check_positive_int(seed, "seed", allow_zero=True)
        epochs = check_positive_int(self.epochs, "epochs", allow_zero=True)
        bs = check_positive_int(self.batch_size, "batch_size")
        lr = check_nonneg_float(self.lr, "lr", positive=True)
        head = erm_head(bundle)
        held = bundle.view("heldout")
        # q runs over the groups present in the held-out rows (ids compacted to 0..G-1)
        group_ids, g_np = np.unique(require_groups(held, self.name, "heldout"), return_inverse=True)
        n_groups = int(group_ids.size)
        gen = make_generator(seed)
        h = torch.as_tensor(held.features, dtype=torch.float32)
        y = torch.as_tensor(held.labels)
        g = torch.as_tensor(g_np.reshape(-1))
        counts = torch.bincount(g, minlength=n_groups).to(torch.float32)
        c, d = head.weight.shape
        if self.reset:
            bound = 1.0 / math.sqrt(d)
            theta = (torch.rand(c, d + 1, generator=gen) * 2 - 1) * bound
        else:
            theta = torch.cat([torch.as_tensor(head.weight), torch.as_tensor(head.bias)[:, None]], dim=1)
        with torch_threads(1):
            theta, q = _train_head(h, y, g, theta.clone(), n_groups, counts, epochs=epochs,
                                   batch_size=min(bs, h.shape[0]), lr=lr,
                                   momentum=check_nonneg_float(self.momentum, "momentum"),
                                   weight_decay=check_nonneg_float(self.weight_decay, "weight_decay"),
                                   eta=check_nonneg_float(self.eta, "eta"), adj=float(self.adj), gen=gen)
        diag = {"group_ids": group_ids.tolist(), "final_group_weights": q.tolist(),
                "group_counts": counts.tolist()}
        return MethodResult(LinearHead(theta[:, :d], theta[:, d]), diag)
