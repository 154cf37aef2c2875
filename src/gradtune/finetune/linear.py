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

from gradtune._errors import DivergenceError
from gradtune._params import check_fields, param, text_overrides
from gradtune._threads import MAX_THREADS, torch_threads
from gradtune._validation import (
    GradTuneInputError,
    all_finite,
    check_features,
    check_labels,
    make_generator,
)
from gradtune.finetune import _steps
from gradtune.finetune._steps import batch_loss_weights
from gradtune.objectives.choices import FINETUNE_SAMPLERS, OPTIMIZERS, SCHEDULES
from gradtune.objectives.sampling import class_balance_weights, epoch_order
from gradtune.objectives.schedules import SCHEDULE_CODE, scheduled_lr

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune_linear", "epoch_batches", "lr_at", "sgd_step_"]

SAMPLERS = FINETUNE_SAMPLERS
MAX_EPOCHS = 10_000_000
"""More epochs than any last-layer fit needs; the bound keeps step counts in integer range."""


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

    epochs: int = param(500, "passes over the fine-tuning set", ge=0, le=MAX_EPOCHS)
    batch_size: int | None = param(32, "samples per step (None: full batch)", kind="int", ge=1, optional=True,
                                   text=16)
    optimizer: str = param("sgd", "the optimizer", choices=OPTIMIZERS, text="adamw")
    lr: float = param(3e-3, "initial learning rate", gt=0, text=1e-5)
    momentum: float = param(0.9, "SGD momentum", ge=0)
    weight_decay: float = param(1e-4, "L2 weight decay", ge=0)
    schedule: str = param("cosine", "learning-rate decay over all steps", choices=SCHEDULES, text="linear")
    sampler: str = param("class_balanced", "how each epoch draws its rows", choices=SAMPLERS)
    reset: bool = param(False, "re-initialize the head before training")
    l2_to_init: float = param(0.0, "pull toward the starting head", ge=0)
    betas: tuple[float, float] = param((0.9, 0.999), "AdamW's betas", ge=0, lt=1, length=2)
    eps: float = param(1e-8, "AdamW's epsilon", gt=0)
    num_threads: int | None = param(1, "torch threads inside the loop (None: leave torch's setting)", kind="int",
                                    ge=1, le=MAX_THREADS, optional=True)
    snapshot_epochs: tuple[int, ...] = param((), "epochs after which a copy of the head is kept", item="int", ge=1)
    dual: str = param("auto", "run SGD in the sample space", choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        check_fields(self)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.snapshot_epochs = tuple(int(e) for e in self.snapshot_epochs)
        for e in self.snapshot_epochs:
            if e > self.epochs:
                raise GradTuneInputError(f"snapshot_epochs must lie in 1..epochs={self.epochs}, got {e}")

    @classmethod
    def for_text(cls, **overrides: Any) -> FinetuneConfig:
        """The paper's text setting: AdamW, lr 1e-5, linear schedule, batch 16."""
        base = text_overrides(cls)
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
    return scheduled_lr(step, total, base_lr, SCHEDULE_CODE[schedule])  # linear: to zero, no warm-up


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


def epoch_batches(labels: torch.Tensor, batch_size: int, sampler: str, generator: torch.Generator,
                  sample_weight: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One epoch of index batches: N indices split into ceil(N / batch_size) batches."""
    weights = sample_weight.to(torch.float64) if sampler == "weighted" else None
    return list(epoch_order(labels, sampler, generator, weights).split(batch_size))


def _mean_loss(theta: torch.Tensor, ha: torch.Tensor, y: torch.Tensor) -> float:
    z_t = theta @ ha.T  # (C, N)
    return float((torch.logsumexp(z_t, 0) - z_t.gather(0, y[None, :]).squeeze(0)).mean())


_fused_cache: list[Any] = []


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A CPU tensor as a C-contiguous numpy array (no copy when it already is one)."""
    return None if t is None else np.ascontiguousarray(t.numpy())


def _compiled_steps() -> Any:
    """The compiled epoch kernels if numba imports, else None. Imported on first use only."""
    if not _fused_cache:
        from gradtune.finetune import _fused_steps as mod

        _fused_cache.append(mod)
    return _fused_cache[0] if _fused_cache[0].available() else None


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
        full_idx = torch.arange(n, device=h.device)
        onehot_t = torch.nn.functional.one_hot(y, c).to(h.dtype).T.contiguous()  # (C, N)
        class_w = class_balance_weights(y) if cfg.sampler == "class_balanced" else None
        pos_w = batch_loss_weights(n, bs, h.device, h.dtype)
        train_losses: list[float] = []
        # The dual path pays an (N, N) Gram matrix once and then works on N numbers per
        # sample instead of d + 1; it applies to SGD with a trained bias, and to the L2
        # pull only when the pull's anchor is the starting point.
        dual = (cfg.optimizer == "sgd" and bias is not None and 2 * n <= d and cfg.epochs > 0
                and (anchor is None or not cfg.reset) and cfg.dual in ("auto", "on")) or cfg.dual == "on"
        if dual and (cfg.optimizer != "sgd" or bias is None or (anchor is not None and cfg.reset)):
            raise GradTuneInputError("dual='on' needs optimizer='sgd', a bias, and no l2_to_init with reset")
        # The compiled kernels (numba, optional) take numpy views of the same CPU tensors.
        fused = (_compiled_steps() if h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)
                 and cfg.epochs > 0 else None)
        sched, pull, adamw = SCHEDULE_CODE[cfg.schedule], 2.0 * cfg.l2_to_init, cfg.optimizer == "adamw"
        state = {"step": 0, "alpha": 1.0, "buf_alpha": 0.0}  # alpha: theta0's coefficient in the dual
        if dual:
            theta0 = theta
            gram = ha @ ha.T  # (N, N)
            z0_t = theta0 @ ha.T  # (C, N)
            a_coef = torch.zeros(c, n, dtype=h.dtype, device=h.device)
            buf_a = torch.zeros_like(a_coef)
            if fused is not None:
                np_args = (a_coef.numpy(), buf_a.numpy(), gram.numpy(), z0_t.numpy(), _np(y), _np(loss_weight))

            def run_epoch(order: torch.Tensor) -> float:
                if fused is not None:
                    an, bn, gn, zn, yn, wn = np_args
                    out = fused.epoch_dual(an, bn, state["alpha"], state["buf_alpha"], gn, zn, yn, order.numpy(),
                                           wn, bs, state["step"], total, cfg.lr, sched, wd, mom, pull)
                else:
                    out = _steps.epoch_steps_dual(a_coef, buf_a, state["alpha"], state["buf_alpha"], gram, z0_t,
                                            onehot_t, order, loss_weight, pos_w, bs, state["step"], total,
                                            cfg.lr, sched, wd, mom, pull)
                state["step"], loss, state["alpha"], state["buf_alpha"] = out
                return loss

            def current() -> torch.Tensor:
                return theta0 * state["alpha"] + a_coef @ ha
        else:
            if fused is not None:
                np_args = (theta.numpy(), buf.numpy(), sq.numpy(), ha.numpy(), _np(y), _np(loss_weight),
                           _np(anchor))

            def run_epoch(order: torch.Tensor) -> float:
                if fused is not None:
                    tn, bn, sn, hn, yn, wn, an = np_args
                    state["step"], loss = fused.epoch_primal(tn, bn, sn, hn, yn, order.numpy(), wn, an, bs,
                                                             state["step"], total, cfg.lr, sched, adamw, wd, mom,
                                                             b1, b2, cfg.eps, pull, bias is not None)
                else:
                    state["step"], loss = _steps.epoch_steps(theta, buf, sq, ha, onehot_t, order, loss_weight, anchor,
                                                       pos_w, bs, state["step"], total, cfg.lr, sched, adamw, wd,
                                                       mom, b1, b2, cfg.eps, pull, bias is not None)
                return loss

            def current() -> torch.Tensor:
                return theta
        for epoch in range(1, cfg.epochs + 1):
            if cfg.batch_size is None and cfg.sampler == "uniform":
                order = full_idx
            else:
                order = epoch_order(y, cfg.sampler, gen, sw if cfg.sampler == "weighted" else class_w)
            train_losses.append(run_epoch(order) / steps_per_epoch)
            if math.isnan(train_losses[-1]):  # +inf alone is a saturated but finite head
                raise DivergenceError(
                    f"fine-tuning diverged at epoch {epoch} of {cfg.epochs}: the training loss is "
                    f"{train_losses[-1]}; lower the learning rate (lr={cfg.lr:g})")
            if epoch in snap:
                t = current()
                snapshots[epoch] = (t[:, :d].clone(), t[:, d].clone())
        theta = current()
        final_loss = _mean_loss(theta, ha, y)
        if not all_finite(theta) or math.isnan(final_loss):
            raise DivergenceError(f"fine-tuning diverged: the head after {cfg.epochs} epochs holds non-finite "
                                  f"values (loss {final_loss}); lower the learning rate (lr={cfg.lr:g})")
    return FinetuneResult(theta[:, :d].contiguous(), theta[:, d].contiguous(),
                          np.asarray(train_losses), initial_loss, final_loss, snapshots)
