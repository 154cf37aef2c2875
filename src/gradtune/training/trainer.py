"""Full-network ERM training with pluggable loss and sampling, atomic checkpoints and resume.

:func:`train` trains every parameter of a classifier on the training split of a
:class:`~gradtune.data.base.GroupedDataset` with the settings of a :class:`TrainConfig`
(the paper's Table 3 values: :meth:`TrainConfig.preset`, read from the packaged configs). By default the sampler is
class-balanced (the paper's "ERM" row): each draw picks a class uniformly, then a sample
of that class.

Hooks for the baselines:

* ``loss_fn(logits (B, C), labels (B,), groups (B,), indices (B,)) -> scalar`` replaces
  the mean cross-entropy (Group DRO plugs in its reweighted loss; an object with
  ``state_dict`` / ``load_state_dict`` has its state checkpointed too);
* ``sample_weights`` (one per training sample) replaces the configured sampler (JTT's
  upsampling, group-balanced sampling by hand, ...); ``TrainConfig.samples_per_epoch``
  sets the epoch length.

Reproducibility and resume
--------------------------
The global torch RNG is never reseeded for the caller: training runs inside
``torch.random.fork_rng`` and, within it, reseeds from (seed, rank, epoch) at each epoch
(dropout), while sampling and augmentation draw from generators seeded by (seed, epoch)
and (seed, epoch, sample index). After every epoch rank 0 writes ``last.pt`` atomically
(temporary file, then ``os.replace``) with the model, optimizer, scheduler, loss state,
epoch, history and sampler seed; rerunning with the same ``checkpoint_dir`` resumes from it
and reaches the same weights as an uninterrupted run.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel and
each rank trains on its shard of every global batch (``batch_size`` is the global batch);
see :mod:`gradtune.models.distributed`. Settings are in
:mod:`gradtune.training.config`, checkpoints in :mod:`gradtune.models.checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from gradtune._validation import GradTuneInputError, load_state_checked
from gradtune.data.base import GroupedDataset
from gradtune.models import distributed as gdist
from gradtune.models.checkpoint import LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from gradtune.models.classifier import unwrap_model
from gradtune.models.preprocess import Preprocess, SampleDataset, make_preprocess
from gradtune.objectives.sampling import inverse_frequency_weights
from gradtune.objectives.schedules import lr_factor
from gradtune.training.config import (
    RUN_FIELDS,
    SAMPLERS,
    EpochEnd,
    LossFn,
    TrainConfig,
    TrainResult,
    cross_entropy_loss,
)

logger = logging.getLogger(__name__)

__all__ = ["make_sampler_weights", "seeded_scope", "check_resumable", "train"]


def make_sampler_weights(sampler: str, labels: np.ndarray, groups: np.ndarray) -> np.ndarray | None:
    """Per-sample draw weights (n,) for a named sampler; None for 'uniform' (a shuffled pass)."""
    if sampler == "class_balanced":
        return inverse_frequency_weights(labels)
    if sampler == "group_balanced":
        return inverse_frequency_weights(groups)
    if sampler == "uniform":
        return None
    raise GradTuneInputError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")


class _Schedule:
    """Picklable LambdaLR multiplier (its attributes land in the scheduler state)."""

    def __init__(self, total_steps: int, schedule: str, warmup_steps: int) -> None:
        self.total_steps, self.schedule, self.warmup_steps = int(total_steps), schedule, int(warmup_steps)

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.schedule, self.warmup_steps)


@contextlib.contextmanager
def seeded_scope(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run a block with torch's global RNG seeded by ``seed``, restoring the caller's state after.

    For code that can only draw from the global generator (module initialization,
    dropout). The caller's random state is untouched once the block exits.
    """
    devices: list[int] = []
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) & ((1 << 63) - 1))
        yield


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GradTuneInputError("the model has no trainable parameters (all requires_grad=False)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def check_resumable(ckpt: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = ckpt.get("config") or {}
    current = config.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in RUN_FIELDS
             if k in saved and saved[k] != current[k]]
    if diffs:
        raise GradTuneInputError(
            f"cannot resume from {str(path)!r}: the run settings differ ({'; '.join(diffs)}). "
            "Use the same settings, or another checkpoint_dir for a new run."
        )


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def train(model: nn.Module, data: GroupedDataset, config: TrainConfig, *,
          preprocess: Preprocess | None = None, indices: np.ndarray | None = None,
          loss_fn: LossFn | None = None, sample_weights: np.ndarray | None = None,
          callbacks: Sequence[Callable[[EpochEnd], None]] = (), resume: bool = True,
          meta: dict[str, Any] | None = None) -> TrainResult:
    """Train all of ``model``'s parameters on rows of ``data`` (the official train split by default).

    Parameters
    ----------
    model : nn.Module
        A classifier mapping a batch (as built by ``preprocess.collate``) to (B, C) logits.
    data : GroupedDataset
    config : TrainConfig
    preprocess : Preprocess, optional
        Default :func:`make_preprocess` (images for ResNets, tokens for text models).
    indices : np.ndarray of shape (n,), optional
        Rows of ``data`` to train on; default ``data.indices('train')``.
    loss_fn : LossFn, optional
        Default mean cross-entropy. Its ``state_dict()``, if any, is checkpointed.
    sample_weights : np.ndarray of shape (n,), optional
        Per-row draw weights (aligned with ``indices``), replacing ``config.sampler``.
    callbacks : sequence of callables
        Called with an :class:`EpochEnd` after each epoch's checkpoint is written, on
        every rank. An exception stops training (the checkpoint is kept).
    resume : bool, default=True
        Continue from ``config.checkpoint_dir/last.pt`` if it exists; False refuses to
        overwrite an existing checkpoint.
    meta : dict, optional
        Plain values stored in every checkpoint (dataset name, root, ...).

    Returns
    -------
    TrainResult

    Raises
    ------
    GradTuneInputError
        On an empty training set, mismatched weights, a batch size not divisible by the
        number of ranks, a non-finite loss, or a checkpoint from different settings.
    """
    info = gdist.init_distributed() if gdist.env_world_size() > 1 else gdist.get_dist_info()
    device = torch.device(config.device) if config.device else info.device
    idx = data.indices("train") if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise GradTuneInputError("the training set is empty (no rows in split 'train' or in indices)")
    if config.batch_size % info.world_size:
        raise GradTuneInputError(
            f"batch_size {config.batch_size} is the global batch and must be divisible by the "
            f"{info.world_size} processes; change batch_size or --nproc_per_node"
        )
    labels, groups = data.labels[idx], data.groups[idx]
    if sample_weights is not None:
        weights: np.ndarray | None = np.asarray(sample_weights, dtype=np.float64)
        if weights.shape != idx.shape:
            raise GradTuneInputError(f"sample_weights must have one weight per training row "
                                     f"({idx.size}), got shape {weights.shape}")
    else:
        weights = make_sampler_weights(config.sampler, labels, groups)
    loss_fn = loss_fn or cross_entropy_loss
    preprocess = preprocess or make_preprocess(model, data)

    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    last_path = ckpt_dir / LAST_CHECKPOINT if ckpt_dir else None
    ckpt: dict[str, Any] | None = None
    if last_path is not None and last_path.exists():
        if not resume:
            raise GradTuneInputError(
                f"{str(last_path)!r} already exists; pass resume=True (CLI: --resume) to continue "
                "that run, or choose another checkpoint_dir/--out"
            )
        ckpt = load_checkpoint(last_path)
        check_resumable(ckpt, config, last_path)

    inner = unwrap_model(model).to(device)
    if ckpt is not None:
        load_state_checked(inner, ckpt["model"], f"checkpoint {str(last_path)!r} (--resume)")
    start_epoch = int(ckpt["epoch"]) if ckpt is not None else 0
    history: list[dict[str, float]] = list(ckpt.get("history", [])) if ckpt is not None else []
    if start_epoch >= config.epochs:
        return TrainResult(inner.eval(), history, last_path, start_epoch)

    per_rank_batch = config.batch_size // info.world_size
    sampler = gdist.ShardedSampler(len(idx), weights, config.samples_per_epoch, seed=config.seed,
                                   rank=info.rank, world_size=info.world_size)
    dataset = SampleDataset(data, idx, preprocess, train=True, seed=config.seed)
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
    total_steps = steps_per_epoch * config.epochs

    train_model: nn.Module = inner
    if info.is_distributed:
        if config.sync_batchnorm:
            inner = nn.SyncBatchNorm.convert_sync_batchnorm(inner)
        from gradtune.models.text import TextClassifier

        unused = isinstance(inner, TextClassifier) and inner.pooling != "pooler"
        train_model = nn.parallel.DistributedDataParallel(
            inner, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused)
    optimizer = _make_optimizer(inner, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _Schedule(total_steps, config.schedule, config.warmup_steps))
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("loss_fn") is not None and hasattr(loss_fn, "load_state_dict"):
            loss_fn.load_state_dict(ckpt["loss_fn"])

    def loss_state() -> dict | None:
        return loss_fn.state_dict() if hasattr(loss_fn, "state_dict") else None

    meta = dict(meta or {})
    meta.setdefault("n_train", int(idx.size))
    meta.setdefault("world_size", info.world_size)
    use_bf16 = config.precision == "bf16" and device.type == "cuda"
    show = config.progress and info.is_main

    with seeded_scope(config.seed, device):
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(gdist.mix_seed(config.seed, info.rank, epoch, 0xD0))
            if device.type == "cuda":
                torch.cuda.manual_seed(gdist.mix_seed(config.seed, info.rank, epoch, 0xD1))
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler,
                                num_workers=config.num_workers, collate_fn=dataset.collate,
                                pin_memory=device.type == "cuda", drop_last=False)
            train_model.train()
            t0 = time.perf_counter()
            stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
            bar = _progress(loader, show, f"epoch {epoch + 1}/{config.epochs}")
            for step, (x, y, g, rows) in enumerate(bar):
                x = _to_device(x, device)
                y, g, rows = y.to(device), g.to(device), rows.to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                    logits = train_model(x)
                loss = loss_fn(logits.float(), y, g, rows)
                if not torch.isfinite(loss):
                    raise GradTuneInputError(
                        f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        f"lower the learning rate (now {scheduler.get_last_lr()[0]:.3g}) or set grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(inner.parameters(), float(config.grad_clip))
                optimizer.step()
                scheduler.step()
                n = y.shape[0]
                stats += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n],
                                      dtype=torch.float64)
                if show and hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{stats[0].item() / stats[2].item():.4f}")
            stats = gdist.all_reduce_sum(stats)
            metrics = {"epoch": epoch + 1, "loss": stats[0].item() / max(stats[2].item(), 1.0),
                       "accuracy": stats[1].item() / max(stats[2].item(), 1.0),
                       "lr": float(scheduler.get_last_lr()[0]), "seconds": time.perf_counter() - t0}
            history.append(metrics)
            if show:
                _log(f"epoch {epoch + 1}/{config.epochs}: loss {metrics['loss']:.4f} "
                     f"acc {metrics['accuracy']:.4f} lr {metrics['lr']:.3g} ({metrics['seconds']:.1f} s)")
            if last_path is not None:
                if info.is_main:
                    save_checkpoint(last_path, inner, epoch=epoch + 1, config=config, optimizer=optimizer,
                                    scheduler=scheduler, loss_state=loss_state(), history=history, meta=meta)
                    if epoch + 1 in config.keep_epochs:
                        save_checkpoint(last_path.parent / f"epoch_{epoch + 1:03d}.pt", inner,
                                        epoch=epoch + 1, config=config, history=history, meta=meta)
                    if epoch + 1 == config.epochs:
                        _write_json(last_path.parent / "done.json",
                                    {"epochs": config.epochs, "history": history, "config": config.to_dict()})
                gdist.barrier()
            for cb in callbacks:
                cb(EpochEnd(epoch + 1, metrics, inner, last_path))
    return TrainResult(inner.eval(), history, last_path, start_epoch)


def _progress(loader: DataLoader, show: bool, desc: str) -> Any:
    if not show:
        return loader
    from gradtune._progress import progress

    # off a terminal: a line every 10 s within a long epoch; the epoch's own line follows it
    return progress(loader, desc=desc, unit="batch", step=None, final=False)


def _log(message: str) -> None:
    logger.info("%s", message)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
