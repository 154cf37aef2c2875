"""Group DRO's objective (Sagawa et al., 2020): per-group mean losses and the online
group-weight update.

For every minibatch the authors' ``LossComputer`` takes ``loss_g``, the mean
cross-entropy of the batch's rows of group g (0 for a group with no row in the batch),
updates ``q <- q * exp(eta * (loss_g + C / sqrt(n_g)))`` and renormalizes (``n_g`` is
group g's count in the whole training set, ``C`` the generalization adjustment, the
losses detached), and minimizes ``q . loss_g`` with the *updated* q.

* :func:`group_dro_update` is the weight step, a pure function (computed in log space:
  the same numbers without overflow);
* :class:`GroupDROLoss` is a ``loss_fn(logits, labels, groups, indices) -> scalar`` for
  full-network training, with ``state_dict`` / ``load_state_dict`` for checkpoints.

Both the last-layer method (:mod:`gradtune.methods.group_dro`) and full-network Group
DRO (:mod:`gradtune.training.robust`) use these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradtune._validation import GradTuneInputError, check_nonneg_float

__all__ = ["group_dro_update", "group_mean_losses", "group_adjustment", "dro_step", "GroupDROLoss"]


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
    return dro_step(qt, losses, group_adjustment(adj, counts), check_nonneg_float(eta, "eta"))


def group_adjustment(adj: Any, counts: torch.Tensor) -> torch.Tensor:
    """``adj / sqrt(n_g)`` per group, 0 where ``n_g = 0``; shape (G,)."""
    a = torch.as_tensor(adj, dtype=counts.dtype, device=counts.device)
    return torch.where(counts > 0, a / counts.clamp_min(1.0).sqrt(), torch.zeros_like(counts))


def dro_step(q: torch.Tensor, losses: torch.Tensor, bonus: torch.Tensor, eta: float) -> torch.Tensor:
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
