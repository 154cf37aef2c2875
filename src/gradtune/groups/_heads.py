"""A stack of T linear heads trained at once by minibatch Adam, without autograd.

Group inference trains small linear probes (two XRM twins, one GCE probe) on fixed
features. Each head ``t`` has weight ``W[t]`` (C, d) and bias ``b[t]`` (C,); one step
gathers each head's own batch, computes the logits of all heads with one batched
matrix product, the loss gradient w.r.t. the logits in closed form, the parameter
gradients with a second batched product, and applies Adam to the whole stack. The
update is ``torch.optim.Adam``'s (no weight decay, no amsgrad), written out so that
the stack needs no autograd graph.

Private: callers validate their inputs first. Shapes: N rows, d features, C classes,
T heads, S steps, B rows per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["AdamState", "ce_logit_grad", "gce_logit_grad", "stack_logits", "train_heads"]

# (logits (T, C, B), labels (T, B)) -> per-sample gradient of each sample's loss w.r.t. its
# logits, (T, C, B). Logits are laid out classes-first: ``W @ x_batch.T`` is several times
# faster than ``x_batch @ W.T`` for a handful of classes.
LogitGrad = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called after every step with (step number from 1, weight, bias); may change the labels.
StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]


def ce_logit_grad(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of ``CE(z, y)`` w.r.t. the logits: ``softmax(z) - onehot(y)``.

    Parameters
    ----------
    z : Tensor of shape (T, C, B)
        Logits, classes on axis 1.
    y : int64 Tensor of shape (T, B)

    Returns
    -------
    Tensor of shape (T, C, B)
    """
    g = torch.softmax(z, dim=1)
    return g.scatter_add_(1, y.unsqueeze(1), torch.full_like(g[:, :1], -1.0))


def gce_logit_grad(z: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Gradient of the generalized cross-entropy ``(1 - p_y^q) / q`` w.r.t. the logits.

    ``d/dz_k (1 - p_y^q) / q = -p_y^(q-1) * p_y (1[k=y] - p_k) = p_y^q (p_k - 1[k=y])``:
    the cross-entropy gradient scaled by ``p_y^q``, which shrinks the pull of samples
    the head finds hard. ``p_y^q`` is taken as ``exp(q log p_y)`` from the log-softmax,
    so it stays accurate when ``p_y`` is tiny.

    Parameters
    ----------
    z : Tensor of shape (T, C, B)
        Logits, classes on axis 1.
    y : int64 Tensor of shape (T, B)
    q : float in (0, 1]

    Returns
    -------
    Tensor of shape (T, C, B)
    """
    logp = torch.log_softmax(z, dim=1)
    w = torch.exp(q * logp.gather(1, y.unsqueeze(1)))                  # (T, 1, B)
    g = logp.exp_()
    g.scatter_add_(1, y.unsqueeze(1), torch.full_like(w, -1.0))
    return g.mul_(w)


def stack_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Every head's logits on every row of ``x`` (N, d): shape (T, N, C).

    Computed as one ``(T*C, d) @ (d, N)`` product (the fast layout for few classes).
    """
    t, c, d = weight.shape
    z = (weight.reshape(t * c, d) @ x.T).reshape(t, c, -1)
    return z.transpose(1, 2) + bias[:, None, :]


@dataclass
class AdamState:
    """Adam's moment estimates for a head stack, shapes as the parameters."""

    m_w: torch.Tensor
    v_w: torch.Tensor
    m_b: torch.Tensor
    v_b: torch.Tensor
    step: int = 0

    @classmethod
    def zeros_like(cls, weight: torch.Tensor, bias: torch.Tensor) -> AdamState:
        return cls(torch.zeros_like(weight), torch.zeros_like(weight),
                   torch.zeros_like(bias), torch.zeros_like(bias))


def _adam_update_(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int,
                  lr: float, beta1: float, beta2: float, eps: float) -> None:
    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    bias1 = 1.0 - beta1 ** step
    bias2_sqrt = (1.0 - beta2 ** step) ** 0.5
    denom = (v.sqrt() / bias2_sqrt).add_(eps)
    p.addcdiv_(m, denom, value=-lr / bias1)


def train_heads(
    x: torch.Tensor,
    labels: torch.Tensor,
    batches: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    logit_grad: LogitGrad,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    class_balanced: bool = False,
    hook: StepHook | None = None,
) -> None:
    """Train the head stack in place, one Adam step per row of ``batches``.

    Parameters
    ----------
    x : Tensor of shape (N, d)
        Features, floating, the dtype of ``weight``.
    labels : int64 Tensor of shape (N,)
        Training labels, read at every step (``hook`` may change them in place).
    batches : int64 Tensor of shape (S, T, B)
        ``batches[s, t]`` are the rows head ``t`` trains on at step ``s``.
    weight : Tensor of shape (T, C, d), updated in place
    bias : Tensor of shape (T, C), updated in place
    logit_grad : callable
        ``(z (T, B, C), y (T, B)) -> (T, B, C)`` per-sample loss gradients w.r.t. the logits.
    lr, betas, eps : float
        Adam's step size, moment decay rates and denominator guard.
    class_balanced : bool, default=False
        With False each head minimizes the batch mean of the loss; with True, the mean
        over the classes present in its batch of each class's mean loss.
    hook : callable, optional
        Called as ``hook(s, weight, bias)`` after step ``s`` (1-based).
    """
    n_steps, n_heads, b = batches.shape
    c, d = weight.shape[1], weight.shape[2]
    state = AdamState.zeros_like(weight, bias)
    beta1, beta2 = betas
    xb = torch.empty(n_heads * b, d, dtype=x.dtype)   # reused: no large allocation per step
    xb3 = xb.view(n_heads, b, d)
    for s in range(n_steps):
        idx = batches[s]                                  # (T, B)
        torch.index_select(x, 0, idx.reshape(-1), out=xb)
        yb = labels[idx]                                  # (T, B)
        z = torch.bmm(weight, xb3.transpose(1, 2)).add_(bias.unsqueeze(2))   # (T, C, B)
        g = logit_grad(z, yb)                             # (T, C, B)
        if class_balanced:
            counts = torch.zeros(n_heads, c, dtype=g.dtype).scatter_add_(
                1, yb, torch.ones_like(yb, dtype=g.dtype))                      # (T, C)
            present = (counts > 0).sum(dim=1, keepdim=True).to(g.dtype)
            g = g / (counts.gather(1, yb) * present).unsqueeze(1)
        else:
            g = g / b
        grad_w = torch.bmm(g, xb3)                        # (T, C, d)
        grad_b = g.sum(dim=2)                             # (T, C)
        state.step += 1
        _adam_update_(weight, grad_w, state.m_w, state.v_w, state.step, lr, beta1, beta2, eps)
        _adam_update_(bias, grad_b, state.m_b, state.v_b, state.step, lr, beta1, beta2, eps)
        if hook is not None:
            hook(s + 1, weight, bias)


def epoch_batches(members: torch.Tensor, n_steps: int, batch_size: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Batches drawn by reshuffled passes over ``members`` (M,): shape (n_steps, batch_size).

    Each pass is a fresh random permutation; passes are laid end to end, so a batch may
    straddle two passes. One ``argsort`` of uniform draws makes every pass at once.
    """
    m = members.shape[0]
    n_passes = -(-n_steps * batch_size // m)
    order = torch.rand(n_passes, m, generator=generator).argsort(dim=1)
    return members[order.reshape(-1)[: n_steps * batch_size]].reshape(n_steps, batch_size)
