"""The ERM model of the offline benchmarks: a small MLP on frozen features.

``x -> standardize -> [Linear -> ReLU] * len(hidden) -> Linear head``, trained by
class-balanced ERM (the paper's "ERM" row): each epoch draws N training rows with
replacement with probability ``1 / count(class)``, mini-batches, AdamW, cross-entropy,
a fixed number of epochs and no early stopping (so no validation or test data is
used to train or select the model).

The last layer is an ordinary linear head ``z = W h + b``; its inputs ``h`` (the
"penultimate features", the last ReLU's outputs) are what GradTune's gradient norms
and every last-layer method work on. :func:`train_erm_mlp` returns ``h`` for every
row, ``W``, ``b`` and the logits, with ``logits == h @ W.T + b``.

Randomness (initialization and sampling) comes only from a ``torch.Generator``
seeded with the ``seed`` argument; the global RNGs are neither used nor reseeded.
Parameters are plain tensors (no ``nn.Linear``, whose constructor draws from the global
RNG), initialized as ``nn.Linear`` does: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
Training runs on one torch thread by default: it is fast for these sizes and makes the
result independent of the machine's core count.

Shapes: N rows, d input features, h_k hidden units, C classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gradtune._threads import check_num_threads
from gradtune._validation import (
    GradTuneInputError,
    check_choice,
    check_features,
    check_labels,
    check_nonneg_float,
    check_positive_int,
    make_generator,
)
from gradtune.objectives.sampling import epoch_order

__all__ = ["MLPConfig", "ERMResult", "train_erm_mlp", "mlp_forward"]


@dataclass
class MLPConfig:
    """Architecture and training of the ERM MLP.

    Parameters
    ----------
    hidden : tuple of int, default (128,)
        Hidden layer widths; the last one is the head's input dimension.
    epochs : int, default 20
        Passes over the (resampled) training set; fixed, no early stopping.
    batch_size : int, default 64
    lr : float, default 1e-3
        AdamW learning rate (constant).
    weight_decay : float, default 1e-4
        AdamW (decoupled) weight decay.
    sampler : {'class_balanced', 'uniform'}, default 'class_balanced'
        'class_balanced' draws N rows per epoch with replacement, probability
        ``1 / count(class)``; 'uniform' shuffles.
    standardize : bool, default True
        Standardize inputs with the training rows' mean and standard deviation.
    num_threads : int or None, default 1
        torch threads while training and evaluating (None: leave torch's setting).
    """

    hidden: tuple[int, ...] = (128,)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    sampler: str = "class_balanced"
    standardize: bool = True
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden:
            raise GradTuneInputError("hidden must list at least one layer width")
        for h in self.hidden:
            check_positive_int(h, "hidden width")
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_nonneg_float(self.lr, "lr", positive=True)
        check_nonneg_float(self.weight_decay, "weight_decay")
        check_choice(self.sampler, "sampler", ("class_balanced", "uniform"))
        check_num_threads(self.num_threads)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


@dataclass
class ERMResult:
    """Output of :func:`train_erm_mlp` (numpy, float32).

    penultimate : (N, h_last) head inputs of every row; head_weight : (C, h_last);
    head_bias : (C,); logits : (N, C) = penultimate @ head_weight.T + head_bias;
    train_losses : (epochs,) mean training cross-entropy per epoch;
    input_mean, input_std : (d,) the standardization (zeros / ones if off);
    body : list of (weight (h_k, h_{k-1}), bias (h_k,)) of the hidden layers;
    early_logits : (N, C) logits of every row after ``early_epoch`` epochs, or None.
    """

    penultimate: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray
    logits: np.ndarray
    train_losses: np.ndarray
    input_mean: np.ndarray
    input_std: np.ndarray
    body: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    config: MLPConfig = field(default_factory=MLPConfig)
    early_logits: np.ndarray | None = None

    def transform(self, x: Any) -> np.ndarray:
        """Penultimate features of new rows ``x`` (M, d) -> (M, h_last)."""
        xt = check_features(x, "x")
        body = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in self.body]
        with torch.no_grad():
            z = (xt - torch.from_numpy(self.input_mean)) / torch.from_numpy(self.input_std)
            return mlp_forward(body, z).numpy()


def mlp_forward(body: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """Hidden layers: ``x (N, d) -> relu(... relu(x W1^T + b1) ...)`` of shape (N, h_last)."""
    for w, b in body:
        x = torch.relu(torch.addmm(b, x, w.t()))
    return x


def _init_linear(fan_in: int, fan_out: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    bound = 1.0 / math.sqrt(fan_in)
    w = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound
    b = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
    return w.requires_grad_(), b.requires_grad_()


def _adamw(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it on CPU (torch >= 2.4; faster for small MLPs)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train_erm_mlp(features: Any, labels: Any, train_idx: Any, *, seed: int | torch.Generator,
                  n_classes: int | None = None, config: MLPConfig | None = None,
                  early_epoch: int | None = None) -> ERMResult:
    """Train the MLP by class-balanced ERM on ``train_idx`` and run it on every row.

    Parameters
    ----------
    features : array-like of shape (N, d)
        Inputs of all rows (frozen encoder features or tabular features).
    labels : array-like of shape (N,)
        Class ids in ``0..C-1`` (only the training rows' labels are used).
    train_idx : array-like of int, shape (n_train,)
        Rows to train on.
    seed : int or torch.Generator
        Source of the initialization and of the sampling order.
    n_classes : int, optional
        C (default: ``max(label) + 1``).
    config : MLPConfig, optional
    early_epoch : int, optional
        Also record every row's logits after this many epochs (``1..epochs``), as
        SELF's early checkpoint. Training is the same with or without it.

    Returns
    -------
    ERMResult
        Penultimate features, head and logits of all N rows.
    """
    cfg = config or MLPConfig()
    if isinstance(features, np.ndarray) and not features.flags.writeable:
        features = features.copy()  # torch warns on read-only arrays (pandas / np.load)
    if isinstance(labels, np.ndarray) and not labels.flags.writeable:
        labels = labels.copy()
    x = check_features(features, "features").to(torch.float32)
    n, d = x.shape
    y = check_labels(labels, n_classes, n=n)
    c = int(n_classes) if n_classes is not None else int(y.max()) + 1
    tr = torch.as_tensor(np.asarray(train_idx, dtype=np.int64))
    if tr.ndim != 1 or tr.numel() == 0 or int(tr.min()) < 0 or int(tr.max()) >= n:
        raise GradTuneInputError(f"train_idx must be a non-empty 1-D array of row ids in [0, {n})")
    y_tr = y[tr]
    counts = torch.bincount(y_tr, minlength=c)
    if int((counts > 0).sum()) < 2:
        raise GradTuneInputError("the training rows hold fewer than 2 classes")
    if early_epoch is not None and not (isinstance(early_epoch, int) and 1 <= early_epoch <= cfg.epochs):
        raise GradTuneInputError(f"early_epoch must be an int in 1..{cfg.epochs} (the training "
                                 f"epochs), got {early_epoch!r}")
    gen = make_generator(seed)
    early = None

    old_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        if cfg.standardize:
            mean = x[tr].mean(0)
            std = x[tr].std(0, unbiased=False)
            std = torch.where(std > 1e-8, std, torch.ones_like(std))
        else:
            mean, std = torch.zeros(d), torch.ones(d)
        xs = (x - mean) / std
        x_tr = xs[tr]
        widths = (d,) + cfg.hidden
        body = [_init_linear(widths[i], widths[i + 1], gen) for i in range(len(cfg.hidden))]
        head_w, head_b = _init_linear(widths[-1], c, gen)
        params = [p for layer in body for p in layer] + [head_w, head_b]
        opt = _adamw(params, cfg.lr, cfg.weight_decay)
        n_tr = tr.numel()
        losses = []
        for _ in range(cfg.epochs):
            order = epoch_order(y_tr, cfg.sampler, gen)  # (n_train,) this epoch's rows
            total = 0.0
            for start in range(0, n_tr, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                h = mlp_forward(body, x_tr[idx])
                loss = F.cross_entropy(torch.addmm(head_b, h, head_w.t()), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            losses.append(total / n_tr)
            if len(losses) == early_epoch:
                with torch.no_grad():
                    early = torch.addmm(head_b, mlp_forward(body, xs), head_w.t())
        with torch.no_grad():
            h_all = mlp_forward(body, xs)
            logits = torch.addmm(head_b, h_all, head_w.t())
    finally:
        torch.set_num_threads(old_threads)

    def np32(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().astype(np.float32, copy=True)

    return ERMResult(np32(h_all), np32(head_w), np32(head_b), np32(logits),
                     np.asarray(losses), np32(mean), np32(std),
                     [(np32(w), np32(b)) for w, b in body], cfg,
                     None if early is None else np32(early))
