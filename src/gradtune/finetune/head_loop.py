"""One minibatch training loop for a linear head, and the objectives it trains.

:func:`train_head` runs SGD (``torch.optim.SGD``'s update: coupled weight decay,
momentum, no dampening) on a head ``theta = [W, b]`` of shape (C, d+1) over rows of
augmented features ``[h, 1]`` (N, d+1). What it minimizes is an objective's business,
which rows each epoch visits is a sampler's, and the step size follows a schedule:

* an objective (:class:`HeadObjective`) returns the gradient of its batch loss at
  ``theta`` for a batch of row indices, updating any online state it keeps (Group DRO's
  group weights, uLA's moving joint) on the way;
* a sampler is a callable returning one epoch's row order, shape (N,) (a permutation or
  draws with replacement), split into batches, or :data:`ALL_ROWS` for one full-batch
  step (the rows are then read in place, not gathered);
* the schedule is one of :data:`gradtune.objectives.choices.SCHEDULES` over all steps.

The objectives:

* :class:`CrossEntropy`: mean (or weighted) cross-entropy;
* :class:`GroupDROObjective`: Group DRO's ``q . loss_g`` with the online weight update
  (:mod:`gradtune.objectives.group_dro`);
* :class:`LogitAdjusted`: uLA's ``CE(theta [h, 1] + tau log p(y | b), y)`` with a
  moving average of the batch joints ``p(b, y)`` (the authors' estimator from the bias
  model's soft probabilities, or counts of its hard predictions);
* :class:`AFRObjective`: AFR's ``sum_i w_i CE_i + lam ||theta - theta0||^2`` (full batch).

Each gradient is written in closed form; the tests compare every objective with autograd
and ``torch.optim.SGD`` on the same batches. :func:`gradtune.finetune.linear.finetune_linear`
keeps its compiled epoch kernels for the cross-entropy of GradTune's fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from gradtune._validation import GradTuneInputError
from gradtune.finetune.linear import lr_at, sgd_step_
from gradtune.objectives.group_dro import dro_step, group_mean_losses

__all__ = ["HeadObjective", "train_head", "CrossEntropy", "GroupDROObjective", "LogitAdjusted", "AFRObjective",
           "ema_update", "augment", "ALL_ROWS", "full_batch_sampler", "permutation_sampler", "weighted_sampler"]

_PROB_FLOOR = 1e-8


#: A sampler's "order" for a full-batch step: every row, in place.
ALL_ROWS = slice(None)

Rows = torch.Tensor | slice


class HeadObjective(Protocol):
    """Gradient of a batch loss of a linear head."""

    def gradient(self, theta: torch.Tensor, idx: Rows) -> torch.Tensor:
        """d loss / d theta (C, d+1) on rows ``idx`` ((B,) indices or :data:`ALL_ROWS`), weight decay excluded."""
        ...


def augment(h: torch.Tensor) -> torch.Tensor:
    """``[h, 1]``: features (N, d) with a column of ones for the bias, shape (N, d+1)."""
    return torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)], dim=1)


@torch.no_grad()
def train_head(theta: torch.Tensor, objective: HeadObjective, sampler: Callable[[], Rows], *,
               epochs: int, batch_size: int, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
               schedule: str = "constant", grad_clip: float | None = None,
               steps_per_epoch: int | None = None) -> torch.Tensor:
    """Minibatch SGD on ``objective`` for ``epochs`` epochs, updating ``theta`` (C, d+1) in place.

    Parameters
    ----------
    theta : Tensor of shape (C, d+1)
        Starting head ``[W, b]``; trained in place and returned.
    objective : HeadObjective
    sampler : callable () -> Tensor of shape (N,) or ALL_ROWS
        One epoch's row order (called once per epoch, drawing from the caller's generator);
        :data:`ALL_ROWS` makes the epoch one full-batch step.
    epochs, batch_size : int
        Every epoch's order is split into ``ceil(N / batch_size)`` batches.
    lr, momentum, weight_decay : float
        ``torch.optim.SGD``'s settings (weight decay added to the gradient).
    schedule : {'constant', 'cosine', 'linear'}, default='constant'
        Step size over all steps; with 'cosine' / 'linear', ``steps_per_epoch`` must be given.
    grad_clip : float, optional
        Scale the gradient (weight decay included) to at most this total norm, as
        ``torch.nn.utils.clip_grad_norm_`` does (``grad_clip / (norm + 1e-6)`` when below 1).
    steps_per_epoch : int, optional
        Needed for a decaying schedule (its total length).
    """
    total = 0 if steps_per_epoch is None else steps_per_epoch * epochs
    if schedule != "constant" and steps_per_epoch is None:
        raise GradTuneInputError(f"schedule {schedule!r} decays over the whole run: pass steps_per_epoch "
                                 "(ceil(N / batch_size)) or use schedule='constant'")
    buf = torch.zeros_like(theta)
    step = 0
    for _ in range(epochs):
        order = sampler()
        for idx in ((order,) if isinstance(order, slice) else order.split(batch_size)):
            grad = objective.gradient(theta, idx)
            if weight_decay:
                grad.add_(theta, alpha=weight_decay)
            if grad_clip is not None:
                coef = grad_clip / (float(torch.linalg.vector_norm(grad)) + 1e-6)
                if coef < 1.0:
                    grad.mul_(coef)
            step_lr = lr if schedule == "constant" else lr_at(step, total, lr, schedule)
            buf = sgd_step_(theta, grad, buf, step == 0, lr=step_lr, momentum=momentum)
            step += 1
    return theta


class CrossEntropy:
    """Mean cross-entropy of the batch, or ``sum w_i CE_i / sum w_i`` with row weights.

    ha : (N, d+1) augmented features; y : (N,) labels; n_classes : C; weights : (N,), optional.
    """

    def __init__(self, ha: torch.Tensor, y: torch.Tensor, n_classes: int, weights: torch.Tensor | None = None) -> None:
        self.ha, self.onehot = ha, torch.nn.functional.one_hot(y, n_classes).to(ha.dtype)
        self.weights = weights

    def gradient(self, theta: torch.Tensor, idx: Rows) -> torch.Tensor:
        hb = self.ha[idx]
        resid = torch.softmax(hb @ theta.T, dim=1) - self.onehot[idx]
        if self.weights is None:
            return (resid.T @ hb) / hb.shape[0]
        wb = self.weights[idx]
        return ((resid * wb[:, None]).T @ hb) / wb.sum()


class GroupDROObjective:
    """Group DRO's ``q . loss_g``; ``q`` takes one exponentiated-gradient step per batch first.

    ha : (N, d+1); y, groups : (N,); bonus : (G,) the adjustment ``C / sqrt(n_g)``; eta : step size.
    Attribute ``q`` (G,) holds the current group weights (uniform at the start).
    """

    def __init__(self, ha: torch.Tensor, y: torch.Tensor, n_classes: int, groups: torch.Tensor, n_groups: int,
                 bonus: torch.Tensor, eta: float) -> None:
        self.ha, self.onehot = ha, torch.nn.functional.one_hot(y, n_classes).to(ha.dtype)
        self.groups, self.n_groups, self.bonus, self.eta = groups, n_groups, bonus, eta
        self.q = torch.full((n_groups,), 1.0 / n_groups, dtype=ha.dtype)

    def gradient(self, theta: torch.Tensor, idx: Rows) -> torch.Tensor:
        hb, yb, gb = self.ha[idx], self.onehot[idx], self.groups[idx]
        logp = torch.log_softmax(hb @ theta.T, dim=1)
        per = -(logp * yb).sum(1)
        losses, cnt = group_mean_losses(per, gb, self.n_groups)
        self.q = dro_step(self.q, losses, self.bonus, self.eta)
        coef = (self.q / cnt.clamp_min(1.0))[gb]  # d(q . loss_g) / d CE_i
        return ((logp.exp() - yb) * coef[:, None]).T @ hb


def ema_update(state: torch.Tensor, batch_joint: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * state + (1 - beta) * batch_joint`` (the uncorrected moving average)."""
    return state * beta + batch_joint * (1.0 - beta)


class LogitAdjusted:
    """uLA's logit-adjusted cross-entropy ``CE(theta [h, 1] + tau log p(y | b(x)), y)``.

    Each batch's joint ``J[b, y]`` enters the moving average ``M`` (rate ``beta``) before
    the batch's offsets are computed from ``M``; the offsets of row ``i`` are
    ``tau log p(y | b_i)`` with ``b_i`` the bias model's prediction, ``p(y | b)`` the
    row-normalized ``M`` clamped at 1e-8 before the log.

    The batch joint and the average follow one of two estimators:

    * ``bias_prob`` given (the authors' ``compute_confusion_matrix`` and ``EMA`` of
      ``utils/misc.py``, uLA's default): ``J[b, y] = mean_i q_i[b] [y_i = y]`` from the
      bias model's soft probabilities ``q`` (N, C_b); the average starts at the first
      batch's joint (``M_1 = J_1``, then ``M_t = beta M_{t-1} + (1 - beta) J_t``);
    * ``bias_prob=None`` (a variant kept as an option): ``J`` counts the hard predictions
      (counts / batch size); ``M`` starts at zero and is bias-corrected
      (``M_t / (1 - beta^t)``, as Adam's moments).

    ha : (N, d+1); y, bias_pred : (N,); n_bias : number of bias classes; bias_prob : (N, n_bias), optional.
    """

    def __init__(self, ha: torch.Tensor, y: torch.Tensor, n_classes: int, bias_pred: torch.Tensor, n_bias: int,
                 tau: float, beta: float, bias_prob: torch.Tensor | None = None) -> None:
        self.ha, self.y, self.c = ha, y, n_classes
        self.onehot = torch.nn.functional.one_hot(y, n_classes).to(ha.dtype)
        self.bias_pred, self.tau, self.beta = bias_pred, tau, beta
        self.bias_prob = None if bias_prob is None else bias_prob.to(torch.float64)
        self.state = torch.zeros(n_bias, n_classes, dtype=torch.float64)
        self.steps = 0

    def _batch_joint(self, idx: Rows) -> torch.Tensor:
        """The batch's joint ``p(b, y)`` (n_bias, C)."""
        yb = self.y[idx]
        b = yb.shape[0]
        if self.bias_prob is not None:
            return self.bias_prob[idx].T @ self.onehot[idx].to(torch.float64) / b
        return torch.zeros(self.state.numel(), dtype=torch.float64).index_add_(
            0, self.bias_pred[idx] * self.c + yb, torch.ones(b, dtype=torch.float64)).view(-1, self.c) / b

    def gradient(self, theta: torch.Tensor, idx: Rows) -> torch.Tensor:
        batch = self._batch_joint(idx)
        if self.bias_prob is not None and self.steps == 0:
            self.state = batch
        else:
            self.state = ema_update(self.state, batch, self.beta)
        self.steps += 1
        joint = self.joint()
        cond = joint / joint.sum(1, keepdim=True).clamp_min(1e-300)
        offsets = (self.tau * cond.clamp_min(_PROB_FLOOR).log()).to(self.ha.dtype)[self.bias_pred[idx]]  # (B, C)
        hb = self.ha[idx]
        p = torch.softmax(hb @ theta.T + offsets, dim=1)
        return ((p - self.onehot[idx]).T @ hb) / hb.shape[0]

    def joint(self) -> torch.Tensor:
        """The moving joint ``p(b, y)`` (n_bias, C) after the steps taken (bias-corrected for the hard variant)."""
        if self.bias_prob is not None or not self.steps:
            return self.state
        return self.state / (1.0 - self.beta ** self.steps)


class AFRObjective:
    """AFR's ``sum_i w_i CE_i + lam ||theta - theta0||^2`` on the rows of each batch.

    ha : (N, d+1); y : (N,); weights : (N,) row weights (AFR's sum to 1); theta0 : (C, d+1)
    the anchor. ``values`` lists the objective at ``theta`` before each step (meaningful for
    full-batch steps, as AFR takes them).
    """

    def __init__(self, ha: torch.Tensor, y: torch.Tensor, n_classes: int, weights: torch.Tensor,
                 theta0: torch.Tensor, lam: float) -> None:
        self.ha, self.onehot = ha, torch.nn.functional.one_hot(y, n_classes).to(ha.dtype)
        self.weights, self.theta0, self.lam = weights, theta0, lam
        self.values: list[float] = []

    def gradient(self, theta: torch.Tensor, idx: Rows) -> torch.Tensor:
        hb, yb, wb = self.ha[idx], self.onehot[idx], self.weights[idx]
        logp = torch.log_softmax(hb @ theta.T, dim=1)
        diff = theta - self.theta0
        self.values.append(float(-(wb * (logp * yb).sum(1)).sum() + self.lam * (diff * diff).sum()))
        return ((logp.exp() - yb) * wb[:, None]).T @ hb + (2.0 * self.lam) * diff


def full_batch_sampler() -> Callable[[], Rows]:
    """A sampler whose every epoch is one full-batch step over all rows."""
    return lambda: ALL_ROWS


def permutation_sampler(n: int, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """A sampler drawing a uniform permutation of ``n`` rows each epoch from ``generator``."""
    return lambda: torch.randperm(n, generator=generator)


def weighted_sampler(weights: torch.Tensor, generator: torch.Generator,
                     n: int | None = None) -> Callable[[], torch.Tensor]:
    """A sampler drawing ``n`` (default ``len(weights)``) rows with replacement in proportion to ``weights``."""
    k = weights.shape[0] if n is None else n
    return lambda: torch.multinomial(weights, k, replacement=True, generator=generator)

