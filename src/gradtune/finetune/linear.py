"""Continue training (or retrain) a linear head on a small set of feature vectors.

This is GradTune's third phase and the engine of every last-layer baseline. The
loop uses pre-sampled index batches and the closed-form cross-entropy gradient
of a linear layer (``(p - e_y) [h, 1]``), with optimizers written out as tensor
updates that follow ``torch.optim.SGD`` / ``torch.optim.AdamW`` exactly (tested
against them). No DataLoader, no autograd and no per-sample loop in the hot path.

Shapes: N samples, d features, C classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from gradtune._threads import torch_threads
from gradtune._validation import (
    GradTuneInputError,
    check_choice,
    check_features,
    check_labels,
    check_nonneg_float,
    check_positive_int,
    make_generator,
)

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune_linear", "epoch_batches", "epoch_order",
           "class_balance_weights", "lr_at", "sgd_step_"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear", "constant")
SAMPLERS = ("class_balanced", "uniform", "weighted")


@dataclass
class FinetuneConfig:
    """Hyperparameters of last-layer fine-tuning; defaults are the paper's (Table 3, vision).

    Parameters
    ----------
    epochs : int, default=500
        Passes over the fine-tuning set (the paper uses 500 for every dataset).
    batch_size : int or None, default=32
        Samples per step (Waterbirds 32, CelebA 100, text 16). None: full batch.
    optimizer : {'sgd', 'adamw'}, default='sgd'
    lr : float, default=3e-3
        Initial learning rate (vision 3e-3, text 1e-5).
    momentum : float, default=0.9
        SGD momentum. The paper names SGD without a momentum value; 0.9 is what the
        last-layer works it follows (DFR, SELF) use.
    weight_decay : float, default=1e-4
        L2 weight decay (coupled for SGD, decoupled for AdamW, as in torch.optim).
    schedule : {'cosine', 'linear', 'constant'}, default='cosine'
        Learning-rate decay over all steps (per step, to zero at the end).
    sampler : {'class_balanced', 'uniform', 'weighted'}, default='class_balanced'
        'class_balanced' draws each epoch's N samples with replacement with
        probability 1/n_class (as ``WeightedRandomSampler``); 'uniform' shuffles;
        'weighted' draws with replacement proportional to ``sample_weight``.
    reset : bool, default=False
        Re-initialize the head before training ("retrain") instead of continuing
        from the given weights ("fine-tune", the paper's choice).
    l2_to_init : float, default=0.0
        Strength of a pull ``l2_to_init * ||theta - theta_0||^2`` toward the starting
        head (AFR's regularizer; a guard against forgetting). 0 disables it.
    betas, eps : AdamW constants.
    num_threads : int or None, default=1
        torch threads inside the loop. Tiny steps run fastest and most steadily on
        one thread; None leaves torch's setting alone.
    snapshot_epochs : tuple of int, default=()
        Epochs (1-based, after that epoch) at which to keep a copy of the head,
        so a selection rule can choose the number of epochs without rerunning.
    dual : {'auto', 'on', 'off'}, default='auto'
        Run SGD in the sample space (a Gram matrix of the N rows) instead of the
        feature space. Same updates, fewer numbers per step when N is well below d;
        'auto' uses it for SGD with a bias when 2 N <= d.
    """

    epochs: int = 500
    batch_size: int | None = 32
    optimizer: str = "sgd"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    sampler: str = "class_balanced"
    reset: bool = False
    l2_to_init: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    num_threads: int | None = 1
    snapshot_epochs: tuple[int, ...] = field(default_factory=tuple)
    dual: str = "auto"

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs", allow_zero=True)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_choice(self.sampler, "sampler", SAMPLERS)
        check_choice(self.dual, "dual", ("auto", "on", "off"))
        check_nonneg_float(self.lr, "lr", positive=True)
        check_nonneg_float(self.momentum, "momentum")
        check_nonneg_float(self.weight_decay, "weight_decay")
        check_nonneg_float(self.l2_to_init, "l2_to_init")
        self.snapshot_epochs = tuple(int(e) for e in self.snapshot_epochs)
        for e in self.snapshot_epochs:
            if not 1 <= e <= self.epochs:
                raise GradTuneInputError(f"snapshot_epochs must lie in 1..epochs={self.epochs}, got {e}")

    @classmethod
    def for_text(cls, **overrides: Any) -> FinetuneConfig:
        """The paper's text setting: AdamW, lr 1e-5, linear schedule, batch 16."""
        base = dict(optimizer="adamw", lr=1e-5, schedule="linear", batch_size=16)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    """Output of :func:`finetune_linear`.

    weight : Tensor (C, d); bias : Tensor (C,);
    losses : np.ndarray (epochs,) training loss of each epoch: the mean over its
        batches of the batch's mean cross-entropy (no weights, no regularizer);
    initial_loss, final_loss : float, mean cross-entropy on the whole
        fine-tuning set before and after training;
    snapshots : dict epoch -> (weight, bias) for ``config.snapshot_epochs``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    losses: np.ndarray
    initial_loss: float
    final_loss: float
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def as_linear(self) -> torch.nn.Linear:
        c, d = self.weight.shape
        layer = torch.nn.Linear(d, c)
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            layer.bias.copy_(self.bias)
        return layer


def lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """Learning rate for 0-based ``step`` out of ``total`` steps."""
    if total <= 0:
        return base_lr
    return _scheduled_lr(step, total, base_lr, _SCHEDULE_CODE[schedule])  # linear: to zero, no warm-up


def sgd_step_(theta: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, first: bool, *,
              lr: float, momentum: float) -> torch.Tensor:
    """One ``torch.optim.SGD`` step (no dampening, no Nesterov) on ``theta`` in place.

    ``grad`` already includes any weight decay; ``buf`` is the momentum buffer, started
    from ``grad`` when ``first``. Returns the buffer to pass to the next step.
    """
    if momentum:
        buf = grad.clone() if first else buf.mul_(momentum).add_(grad)
        grad = buf
    theta.add_(grad, alpha=-lr)
    return buf


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """One epoch's sample order, shape (N,).

    'uniform' is a permutation; 'class_balanced' and 'weighted' draw N indices with
    replacement with probability proportional to ``weights`` (for class balance,
    ``1 / n_class`` of each sample's class, see :func:`class_balance_weights`).
    """
    n = labels.shape[0]
    if sampler == "uniform":
        return torch.randperm(n, generator=generator, device=generator.device)
    if weights is None:
        weights = class_balance_weights(labels)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def class_balance_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample sampling weight ``1 / count(class)``, shape (N,), float64."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].to(torch.float64)


def epoch_batches(labels: torch.Tensor, batch_size: int, sampler: str, generator: torch.Generator,
                  sample_weight: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One epoch of index batches: N indices split into ceil(N / batch_size) batches."""
    weights = sample_weight.to(torch.float64) if sampler == "weighted" else None
    return list(epoch_order(labels, sampler, generator, weights).split(batch_size))


def _mean_loss(theta: torch.Tensor, ha: torch.Tensor, y: torch.Tensor) -> float:
    z_t = theta @ ha.T  # (C, N)
    return float((torch.logsumexp(z_t, 0) - z_t.gather(0, y[None, :]).squeeze(0)).mean())


_SCHEDULE_CODE = {"constant": 0, "cosine": 1, "linear": 2}


def _scheduled_lr(step: int, total: int, base_lr: float, schedule: int) -> float:
    """:func:`lr_at` with the schedule as an integer code (scriptable)."""
    if schedule == 1:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    if schedule == 2:
        return base_lr * (1.0 - step / total)
    return base_lr


def _epoch_steps(theta: torch.Tensor, buf: torch.Tensor, sq: torch.Tensor, ha: torch.Tensor,
                 onehot_t: torch.Tensor, order: torch.Tensor, weights: torch.Tensor | None,
                 anchor: torch.Tensor | None, loss_acc: torch.Tensor,
                 bs: int, step: int, total: int, base_lr: float, schedule: int, adamw: bool,
                 wd: float, mom: float, b1: float, b2: float, eps: float, pull: float,
                 train_bias: bool) -> int:
    """All optimizer steps of one epoch; returns the next step index.

    theta, buf, sq : (C, d+1) head and optimizer state, updated in place.
    ha : (N, d+1) features with a ones column; onehot_t : (C, N) one-hot labels.
    order : (N,) this epoch's sample order; weights : (N,) loss weights or None.
    loss_acc : (1,) accumulates the sum over batches of the mean batch loss.
    Follows torch.optim.SGD (momentum, dampening 0, coupled weight decay) and
    torch.optim.AdamW (decoupled weight decay, bias-corrected moments).
    """
    n = order.shape[0]
    d = theta.shape[1] - 1
    for start in range(0, n, bs):
        idx = order[start:start + bs]
        hb = ha.index_select(0, idx)  # (B, d+1)
        yb = onehot_t.index_select(1, idx)  # (C, B)
        g = torch.softmax(torch.mm(theta, hb.t()), 0)  # (C, B): the fast layout for small C
        loss_acc.sub_(torch.log((g * yb).sum(0)).mean())
        g.sub_(yb)  # p - e_y
        if weights is None:
            scale = 1.0 / hb.shape[0]
        else:
            wb = weights.index_select(0, idx)
            g.mul_(wb)
            scale = 1.0 / float(wb.sum())
        lr = _scheduled_lr(step, total, base_lr, schedule)
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
    return step


def _epoch_steps_dual(a_coef: torch.Tensor, buf_a: torch.Tensor, alpha: float, buf_alpha: float,
                      gram: torch.Tensor, z0_t: torch.Tensor, onehot_t: torch.Tensor, order: torch.Tensor,
                      weights: torch.Tensor | None, loss_acc: torch.Tensor, bs: int, step: int, total: int,
                      base_lr: float, schedule: int, wd: float, mom: float, pull: float
                      ) -> tuple[int, float, float]:
    """SGD epoch in the dual (sample) space, for fine-tuning sets with fewer rows than features.

    Every SGD update of a linear head is a combination of the rows of ``ha`` plus a
    multiple of the start ``theta0``, so ``theta = scal[0] * theta0 + a_coef @ ha``
    with ``a_coef`` of shape (C, N). Logits of a batch are then
    ``alpha * z0_t[:, idx] + a_coef @ gram[idx].T`` with ``gram = ha @ ha.T`` (N, N),
    so each step touches N instead of d + 1 numbers per sample. ``alpha`` and its
    momentum buffer are Python floats (kept out of tensors: TorchScript would store
    them at fp32). The pull toward the start (``pull`` = 2 * l2) is only valid when
    the anchor is ``theta0`` itself. Returns (next step, alpha, buf_alpha).
    """
    n = order.shape[0]
    for start in range(0, n, bs):
        idx = order[start:start + bs]
        z = torch.mm(a_coef, gram.index_select(0, idx).t())  # (C, B)
        z.add_(z0_t.index_select(1, idx), alpha=alpha)
        g = torch.softmax(z, 0)
        yb = onehot_t.index_select(1, idx)
        loss_acc.sub_(torch.log((g * yb).sum(0)).mean())
        g.sub_(yb)
        if weights is None:
            scale = 1.0 / idx.shape[0]
        else:
            wb = weights.index_select(0, idx)
            g.mul_(wb)
            scale = 1.0 / float(wb.sum())
        lr = _scheduled_lr(step, total, base_lr, schedule)
        grad_a = a_coef * (wd + pull)
        grad_a.index_add_(1, idx, g, alpha=scale)
        grad_alpha = wd * alpha + pull * (alpha - 1.0)
        if mom != 0.0:
            if step == 0:
                buf_a.copy_(grad_a)
                buf_alpha = grad_alpha
            else:
                buf_a.mul_(mom).add_(grad_a)
                buf_alpha = mom * buf_alpha + grad_alpha
            a_coef.add_(buf_a, alpha=-lr)
            alpha = alpha - lr * buf_alpha
        else:
            a_coef.add_(grad_a, alpha=-lr)
            alpha = alpha - lr * grad_alpha
        step += 1
    return step, alpha, buf_alpha


_SCRIPTED: dict[str, Any] = {}


def _kernel(name: str) -> Any:
    """An epoch kernel compiled with TorchScript once (removes Python overhead per step,
    ~1.5x faster on small heads); falls back to plain Python if scripting fails."""
    if name not in _SCRIPTED:
        fn = _epoch_steps if name == "primal" else _epoch_steps_dual
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _SCRIPTED[name] = torch.jit.script(fn)
        except Exception:  # noqa: BLE001 - any scripting failure means: use Python
            _SCRIPTED[name] = fn
    return _SCRIPTED[name]


def finetune_linear(
    features: Any,
    labels: Any,
    weight: Any,
    bias: Any,
    config: FinetuneConfig | None = None,
    *,
    seed: int | torch.Generator,
    sample_weight: Any = None,
) -> FinetuneResult:
    """Fine-tune (or retrain) the linear head ``z = W h + b`` on ``(features, labels)``.

    Parameters
    ----------
    features : array-like of shape (N, d)
        Features of the fine-tuning set (the layer's inputs).
    labels : array-like of shape (N,)
        Class labels in ``0..C-1``.
    weight : array-like of shape (C, d)
        Starting weight (the ERM head). Not modified.
    bias : array-like of shape (C,) or None
        Starting bias; None means a layer without bias (it stays zero).
    config : FinetuneConfig, optional
        Hyperparameters; defaults to the paper's vision setting.
    seed : int or torch.Generator
        Randomness of the sampler (and of the re-initialization when ``reset``).
    sample_weight : array-like of shape (N,), optional
        Non-negative per-sample loss weights; each batch's loss is
        ``sum w_i CE_i / sum w_i``. Required when ``config.sampler == 'weighted'``
        (then they are sampling weights and the loss is unweighted).

    Returns
    -------
    FinetuneResult
    """
    cfg = config or FinetuneConfig()
    h = check_features(features, "features")
    n, d = h.shape
    if n == 0:
        raise GradTuneInputError("the fine-tuning set is empty")
    w0 = check_features(weight, "weight").to(device=h.device, dtype=h.dtype)
    if w0.shape[1] != d:
        raise GradTuneInputError(f"weight has shape {tuple(w0.shape)}; expected (C, {d}) to match features")
    c = w0.shape[0]
    if bias is None:
        b0 = torch.zeros(c, dtype=h.dtype, device=h.device)
    else:
        b0 = check_features(bias, "bias", ndim=1).to(device=h.device, dtype=h.dtype)
        if b0.shape != (c,):
            raise GradTuneInputError(f"bias has shape {tuple(b0.shape)}; expected ({c},)")
    y = check_labels(labels, c, n=n).to(h.device)
    sw = None
    if sample_weight is not None:
        sw = check_features(sample_weight, "sample_weight", ndim=1).to(device=h.device, dtype=h.dtype)
        if sw.shape != (n,) or bool((sw < 0).any()) or float(sw.sum()) <= 0:
            raise GradTuneInputError("sample_weight must be (N,), non-negative, with a positive sum")
    if cfg.sampler == "weighted" and sw is None:
        raise GradTuneInputError("sampler='weighted' needs sample_weight")
    gen = make_generator(seed, device=h.device)

    with torch_threads(cfg.num_threads), torch.no_grad():
        ha = torch.cat([h, torch.ones(n, 1, dtype=h.dtype, device=h.device)], dim=1)  # (N, d+1)
        theta_init = torch.cat([w0, b0[:, None]], dim=1)  # (C, d+1)
        if cfg.reset:
            bound = 1.0 / math.sqrt(d)  # nn.Linear's default initialization
            theta = (torch.rand(c, d + 1, generator=gen, device=h.device, dtype=h.dtype) * 2 - 1) * bound
            if bias is None:
                theta[:, d] = 0.0
        else:
            theta = theta_init.clone()
        anchor = theta_init if cfg.l2_to_init > 0 else None
        loss_weight = None if cfg.sampler == "weighted" else sw
        bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
        steps_per_epoch = math.ceil(n / bs)
        total = steps_per_epoch * cfg.epochs
        buf = torch.zeros_like(theta)
        sq = torch.zeros_like(theta)
        wd, mom = cfg.weight_decay, cfg.momentum
        b1, b2 = cfg.betas
        initial_loss = _mean_loss(theta, ha, y)
        snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        snap = set(cfg.snapshot_epochs)
        step = 0
        full_idx = torch.arange(n, device=h.device)
        onehot_t = torch.nn.functional.one_hot(y, c).to(h.dtype).T.contiguous()  # (C, N)
        class_w = class_balance_weights(y) if cfg.sampler == "class_balanced" else None
        loss_acc = torch.zeros(1, dtype=h.dtype, device=h.device)
        train_losses: list[float] = []
        # The dual path pays an (N, N) Gram matrix once and then works on N numbers per
        # sample instead of d + 1; it applies to SGD with a trained bias, and to the L2
        # pull only when the pull's anchor is the starting point.
        dual = (cfg.optimizer == "sgd" and bias is not None and 2 * n <= d and cfg.epochs > 0
                and (anchor is None or not cfg.reset) and cfg.dual in ("auto", "on")) or cfg.dual == "on"
        if dual:
            if cfg.optimizer != "sgd" or bias is None or (anchor is not None and cfg.reset):
                raise GradTuneInputError("dual='on' needs optimizer='sgd', a bias, and no l2_to_init with reset")
            theta0 = theta
            gram = ha @ ha.T  # (N, N)
            z0_t = theta0 @ ha.T  # (C, N)
            a_coef = torch.zeros(c, n, dtype=h.dtype, device=h.device)
            buf_a = torch.zeros_like(a_coef)
            scal = [1.0, 0.0]  # alpha, its momentum buffer
            kernel = _kernel("dual")

            def current() -> torch.Tensor:
                return theta0 * scal[0] + a_coef @ ha
        else:
            kernel = _kernel("primal")

            def current() -> torch.Tensor:
                return theta
        for epoch in range(1, cfg.epochs + 1):
            if cfg.batch_size is None and cfg.sampler == "uniform":
                order = full_idx
            else:
                order = epoch_order(y, cfg.sampler, gen, sw if cfg.sampler == "weighted" else class_w)
            loss_acc.zero_()
            if dual:
                step, scal[0], scal[1] = kernel(a_coef, buf_a, scal[0], scal[1], gram, z0_t, onehot_t, order,
                                                loss_weight, loss_acc, bs, step, total, cfg.lr,
                                                _SCHEDULE_CODE[cfg.schedule], wd, mom, 2.0 * cfg.l2_to_init)
            else:
                step = kernel(theta, buf, sq, ha, onehot_t, order, loss_weight, anchor, loss_acc, bs, step,
                              total, cfg.lr, _SCHEDULE_CODE[cfg.schedule], cfg.optimizer == "adamw", wd,
                              mom, b1, b2, cfg.eps, 2.0 * cfg.l2_to_init, bias is not None)
            train_losses.append(float(loss_acc) / steps_per_epoch)
            if epoch in snap:
                t = current()
                snapshots[epoch] = (t[:, :d].clone(), t[:, d].clone())
        theta = current()
        final_loss = _mean_loss(theta, ha, y)
    return FinetuneResult(theta[:, :d].contiguous(), theta[:, d].contiguous(),
                          np.asarray(train_losses), initial_loss, final_loss, snapshots)
