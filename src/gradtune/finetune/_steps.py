"""The torch epoch loops of :func:`gradtune.finetune_linear` (no autograd, no per-sample loop).

Each function runs all optimizer steps of one epoch on already-validated tensors,
with the closed-form cross-entropy gradient of a linear layer and the optimizer
updates written out as tensor operations. :mod:`gradtune.finetune._fused_steps`
holds compiled twins of the two loops, used when numba is installed.

Shapes: N samples, d features, C classes.
"""

from __future__ import annotations

import torch

from gradtune.objectives.schedules import scheduled_lr

__all__ = ["batch_loss_weights", "epoch_steps", "epoch_steps_dual"]

def batch_loss_weights(n: int, bs: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(N,) weight of each epoch position in the epoch loss: 1 / (size of its batch)."""
    sizes = torch.full((n,), float(bs), dtype=dtype, device=device)
    sizes[(n // bs) * bs:] = float(n - (n // bs) * bs or bs)
    return sizes.reciprocal_()


def epoch_steps(theta: torch.Tensor, buf: torch.Tensor, sq: torch.Tensor, ha: torch.Tensor,
                 onehot_t: torch.Tensor, order: torch.Tensor, weights: torch.Tensor | None,
                 anchor: torch.Tensor | None, pos_w: torch.Tensor, bs: int, step: int, total: int,
                 base_lr: float, schedule: int, adamw: bool, wd: float, mom: float, b1: float, b2: float,
                 eps: float, pull: float, train_bias: bool) -> tuple[int, float]:
    """All optimizer steps of one epoch (torch); returns (next step, sum over batches of the mean batch loss).

    theta, buf, sq : (C, d+1) head and optimizer state, updated in place.
    ha : (N, d+1) features with a ones column; onehot_t : (C, N) one-hot labels.
    order : (N,) this epoch's sample order; weights : (N,) loss weights or None;
    pos_w : (N,) see :func:`batch_loss_weights`. The epoch's rows are gathered once,
    so a step slices views. Follows torch.optim.SGD (momentum, dampening 0, coupled
    weight decay) and torch.optim.AdamW (decoupled weight decay, bias-corrected moments).
    """
    n = order.shape[0]
    d = theta.shape[1] - 1
    h_ep = ha.index_select(0, order)  # (N, d+1)
    y_ep = onehot_t.index_select(1, order)  # (C, N)
    w_ep = None if weights is None else weights.index_select(0, order)
    p_y = torch.empty(n, dtype=theta.dtype, device=theta.device)
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        hb = h_ep[start:stop]
        yb = y_ep[:, start:stop]
        g = torch.softmax(torch.mm(theta, hb.t()), 0)  # (C, B): the fast layout for small C
        torch.sum(g * yb, 0, out=p_y[start:stop])
        g.sub_(yb)  # p - e_y
        if w_ep is None:
            scale = 1.0 / (stop - start)
        else:
            wb = w_ep[start:stop]
            g.mul_(wb)
            scale = 1.0 / float(wb.sum())
        lr = scheduled_lr(step, total, base_lr, schedule)
        if adamw or wd == 0.0:
            grad = torch.mm(g, hb).mul_(scale)
        else:
            grad = torch.addmm(theta, g, hb, beta=wd, alpha=scale)  # + coupled weight decay
        if not train_bias:
            grad[:, d] = 0.0
        if anchor is not None:
            grad.add_(theta - anchor, alpha=pull)
        if adamw:
            t = step + 1
            theta.mul_(1.0 - lr * wd)
            buf.mul_(b1).add_(grad, alpha=1.0 - b1)
            sq.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            denom = (sq / (1.0 - b2 ** t)).sqrt_().add_(eps)
            theta.addcdiv_(buf, denom, value=-lr / (1.0 - b1 ** t))
        elif mom != 0.0:
            if step == 0:
                buf.copy_(grad)
            else:
                buf.mul_(mom).add_(grad)
            theta.add_(buf, alpha=-lr)
        else:
            theta.add_(grad, alpha=-lr)
        if not train_bias:
            theta[:, d] = 0.0
        step += 1
    return step, -float(p_y.log_().mul_(pos_w).sum())


def epoch_steps_dual(a_coef: torch.Tensor, buf_a: torch.Tensor, alpha: float, buf_alpha: float,
                      gram: torch.Tensor, z0_t: torch.Tensor, onehot_t: torch.Tensor, order: torch.Tensor,
                      weights: torch.Tensor | None, pos_w: torch.Tensor, bs: int, step: int, total: int,
                      base_lr: float, schedule: int, wd: float, mom: float, pull: float
                      ) -> tuple[int, float, float, float]:
    """SGD epoch in the dual (sample) space, for fine-tuning sets with fewer rows than features.

    Every SGD update of a linear head is a combination of the rows of ``ha`` plus a
    multiple of the start ``theta0``, so ``theta = alpha * theta0 + a_coef @ ha``
    with ``a_coef`` of shape (C, N). Logits of a batch are then
    ``alpha * z0_t[:, idx] + a_coef @ gram[idx].T`` with ``gram = ha @ ha.T`` (N, N),
    so each step touches N instead of d + 1 numbers per sample. ``alpha`` and its
    momentum buffer are Python floats. The pull toward the start (``pull`` = 2 * l2)
    is only valid when the anchor is ``theta0`` itself. Returns (next step, loss sum
    as in :func:`epoch_steps`, alpha, buf_alpha).
    """
    n = order.shape[0]
    g_ep = gram.index_select(0, order)  # (N, N): row i is the epoch's i-th sample
    z0_ep = z0_t.index_select(1, order)
    y_ep = onehot_t.index_select(1, order)
    w_ep = None if weights is None else weights.index_select(0, order)
    p_y = torch.empty(n, dtype=a_coef.dtype, device=a_coef.device)
    first_mom = mom != 0.0
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        z = torch.mm(a_coef, g_ep[start:stop].t())  # (C, B)
        z.add_(z0_ep[:, start:stop], alpha=alpha)
        g = torch.softmax(z, 0)
        yb = y_ep[:, start:stop]
        torch.sum(g * yb, 0, out=p_y[start:stop])
        g.sub_(yb)
        if w_ep is None:
            scale = 1.0 / (stop - start)
        else:
            wb = w_ep[start:stop]
            g.mul_(wb)
            scale = 1.0 / float(wb.sum())
        lr = scheduled_lr(step, total, base_lr, schedule)
        # buf_a = mom * buf_a + grad_a (just grad_a on the first step or without momentum),
        # grad_a = a_coef * (wd + pull) plus the batch's residuals at its rows (repeats add up).
        keep = mom if (first_mom and step > 0) else 0.0
        buf_a.mul_(keep).add_(a_coef, alpha=wd + pull).index_add_(1, order[start:stop], g, alpha=scale)
        a_coef.add_(buf_a, alpha=-lr)
        grad_alpha = wd * alpha + pull * (alpha - 1.0)
        buf_alpha = keep * buf_alpha + grad_alpha
        alpha = alpha - lr * buf_alpha
        step += 1
    return step, -float(p_y.log_().mul_(pos_w).sum()), alpha, buf_alpha
