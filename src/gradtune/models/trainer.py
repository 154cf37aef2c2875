"""Full-network ERM training with pluggable loss and sampling, atomic checkpoints and resume.

:func:`train` trains every parameter of a classifier on the training split of a
:class:`~gradtune.data.base.GroupedDataset` with the settings of a :class:`TrainConfig`
(the paper's Table 3 values are in :data:`TABLE3_PRESETS`). By default the sampler is
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
see :mod:`gradtune.models.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gradtune._io import atomic_write
from gradtune._validation import GradTuneInputError, load_state_checked
from gradtune.data.base import GroupedDataset
from gradtune.models import distributed as gdist
from gradtune.models.classifier import model_from_spec, model_spec, unwrap_model

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SAMPLERS",
    "TABLE3_PRESETS",
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "TrainResult",
    "EpochEnd",
    "LossFn",
    "Preprocess",
    "SampleDataset",
    "TensorPreprocess",
    "cross_entropy_loss",
    "make_preprocess",
    "make_sampler_weights",
    "lr_factor",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "seeded_scope",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear", "constant")
SAMPLERS = ("class_balanced", "group_balanced", "uniform")
PRECISIONS = ("fp32", "bf16")
CHECKPOINT_FORMAT = "gradtune-checkpoint-v1"
LAST_CHECKPOINT = "last.pt"

TABLE3_PRESETS: dict[str, dict[str, Any]] = {
    "waterbirds": {"optimizer": "sgd", "lr": 3e-3, "schedule": "cosine", "batch_size": 32,
                   "weight_decay": 1e-4, "epochs": 100},
    "celeba": {"optimizer": "sgd", "lr": 3e-3, "schedule": "cosine", "batch_size": 100,
               "weight_decay": 1e-4, "epochs": 20},
    "civilcomments": {"optimizer": "adamw", "lr": 1e-5, "schedule": "linear", "batch_size": 16,
                      "weight_decay": 1e-4, "epochs": 10},
    "multinli": {"optimizer": "adamw", "lr": 1e-5, "schedule": "linear", "batch_size": 16,
                 "weight_decay": 1e-4, "epochs": 10},
}
"""ERM hyperparameters of the paper's Table 3 (class-balanced sampling, SGD momentum 0.9)."""

# Fields that define a run: a checkpoint made with other values cannot be resumed.
_RUN_FIELDS = ("optimizer", "lr", "schedule", "warmup_steps", "batch_size", "weight_decay",
               "momentum", "betas", "epochs", "sampler", "samples_per_epoch", "seed", "grad_clip")


class LossFn(Protocol):
    """``loss_fn(logits (B, C), labels (B,), groups (B,), indices (B,)) -> scalar tensor``."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor: ...


class Preprocess(Protocol):
    """Turns one raw input into a model-ready sample, and a list of samples into a batch."""

    def __call__(self, raw: Any, train: bool = False, generator: torch.Generator | None = None) -> Any: ...

    def collate(self, samples: list[Any]) -> Any: ...


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                       indices: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch (the ERM loss)."""
    return F.cross_entropy(logits, labels)


# ------------------------------------------------------------------------------ config
@dataclass
class TrainConfig:
    """Hyperparameters of one full-network training run.

    Parameters
    ----------
    optimizer : {'sgd', 'adamw'}, default='sgd'
    lr : float, default=3e-3
        Initial learning rate.
    schedule : {'cosine', 'linear', 'constant'}, default='cosine'
        Per-step decay from ``lr`` to 0 over all steps (after ``warmup_steps``).
    warmup_steps : int, default=0
        Linear warm-up steps from 0 to ``lr``.
    batch_size : int, default=32
        Global batch size (split evenly over ranks under torchrun).
    weight_decay : float, default=1e-4
    momentum : float, default=0.9
        SGD momentum (ignored by AdamW).
    betas : (float, float), default=(0.9, 0.999)
        AdamW betas.
    epochs : int, default=100
    sampler : {'class_balanced', 'group_balanced', 'uniform'}, default='class_balanced'
        Draws with replacement at 1/n_class (1/n_group), or a shuffled pass. Overridden
        by explicit ``sample_weights`` given to :func:`train`.
    samples_per_epoch : int, optional
        Draws per epoch; default the size of the training set.
    seed : int, default=0
    checkpoint_dir : str, optional
        Where ``last.pt`` (and ``epoch_XXX.pt`` for ``keep_epochs``) are written; None
        keeps nothing on disk (no resume).
    keep_epochs : tuple of int, default=()
        Also keep the checkpoints after these epochs (1-based), e.g. JTT's epoch T or
        SELF's early-stopping checkpoint.
    grad_clip : float, optional
        Clip the global gradient norm to this value.
    num_workers : int, default=0
        DataLoader worker processes.
    precision : {'fp32', 'bf16'}, default='fp32'
        ``'bf16'`` runs forward passes under CUDA autocast (ignored on CPU).
    sync_batchnorm : bool, default=False
        Convert BatchNorm to SyncBatchNorm under DDP.
    device : str, optional
        Default ``cuda:LOCAL_RANK`` if CUDA is available, else CPU.
    progress : bool, default=True
        A tqdm bar per epoch on rank 0.
    """

    optimizer: str = "sgd"
    lr: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    batch_size: int = 32
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 100
    sampler: str = "class_balanced"
    samples_per_epoch: int | None = None
    seed: int = 0
    checkpoint_dir: str | None = None
    keep_epochs: tuple[int, ...] = ()
    grad_clip: float | None = None
    num_workers: int = 0
    precision: str = "fp32"
    sync_batchnorm: bool = False
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        def choice(name: str, options: Sequence[str]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise GradTuneInputError(f"TrainConfig.{name} must be one of {list(options)}, got {value!r}")

        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("sampler", SAMPLERS)
        choice("precision", PRECISIONS)
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v < 2**31:
                raise GradTuneInputError(f"TrainConfig.{name} must be an integer in 1..2**31-1, got {v!r}")
        for name in ("warmup_steps", "num_workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise GradTuneInputError(f"TrainConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "weight_decay", "momentum"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise GradTuneInputError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.lr == 0:
            raise GradTuneInputError("TrainConfig.lr must be > 0")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise GradTuneInputError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if self.samples_per_epoch is not None and (int(self.samples_per_epoch) < 1):
            raise GradTuneInputError(f"TrainConfig.samples_per_epoch must be >= 1, got {self.samples_per_epoch}")
        if self.grad_clip is not None and not (float(self.grad_clip) > 0):
            raise GradTuneInputError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        self.keep_epochs = tuple(int(e) for e in self.keep_epochs)
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = str(self.checkpoint_dir)

    @classmethod
    def preset(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """The paper's Table 3 ERM settings for ``dataset`` (class-balanced), with overrides."""
        key = dataset.lower()
        if key not in TABLE3_PRESETS:
            raise GradTuneInputError(f"no Table 3 preset for {dataset!r}; known: {sorted(TABLE3_PRESETS)}")
        return cls(**{**TABLE3_PRESETS[key], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a TOML table); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise GradTuneInputError(f"unknown training setting(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), safe for JSON and weights-only checkpoints."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["keep_epochs"] = list(self.keep_epochs)
        return out


@dataclass
class EpochEnd:
    """What a callback receives after each epoch (and its checkpoint) is done.

    Attributes
    ----------
    epoch : int
        Epochs completed (1-based).
    metrics : dict
        ``loss`` (mean train loss), ``accuracy`` (train accuracy on the sampled
        batches), ``lr`` (at the end of the epoch), ``seconds``.
    model : nn.Module
        The (unwrapped) model being trained.
    checkpoint : Path or None
        The checkpoint written for this epoch.
    """

    epoch: int
    metrics: dict[str, float]
    model: nn.Module
    checkpoint: Path | None


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    model : nn.Module
        The trained model (unwrapped from DDP), in eval mode.
    history : list of dict
        One entry per epoch (see :class:`EpochEnd`).
    checkpoint : Path or None
        Path of the last checkpoint.
    resumed_from : int
        Epochs already done when this call started (0 for a fresh run).
    """

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    resumed_from: int = 0


# ----------------------------------------------------------------------- data plumbing
class TensorPreprocess:
    """Raw rows already model-ready (arrays/tensors): converted to tensors and stacked."""

    def __call__(self, raw: Any, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))

    def collate(self, samples: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(samples)


def make_preprocess(model: nn.Module, data: GroupedDataset | None = None, *,
                    image_root: str | os.PathLike | None = None) -> Preprocess:
    """The input pipeline matching a model: images for ResNets, tokens for text models, else tensors.

    For a text model whose dataset holds strings, the model's tokenizer is loaded (from
    local files) here.
    """
    from gradtune.models.resnet import ImagePreprocess, ResNet
    from gradtune.models.text import TextClassifier, TextPreprocess

    inner = unwrap_model(model)
    if isinstance(inner, ResNet):
        return ImagePreprocess(root=image_root)
    if isinstance(inner, TextClassifier):
        needs_tokenizer = data is not None and len(data) > 0 and isinstance(data.inputs[0], str)
        return TextPreprocess(inner.tokenizer if needs_tokenizer else None, inner.max_length)
    return TensorPreprocess()


class SampleDataset(Dataset):
    """Items ``(x, label, group, index)`` of selected rows of a GroupedDataset.

    Parameters
    ----------
    data : GroupedDataset
    indices : np.ndarray of shape (n,)
        Rows of ``data``; item ``j`` is row ``indices[j]`` and carries ``index = indices[j]``.
    preprocess : Preprocess
    train : bool
        Passes ``train=True`` and a generator seeded by (seed, epoch, row) to ``preprocess``.
    seed : int
    """

    def __init__(self, data: GroupedDataset, indices: np.ndarray, preprocess: Preprocess, *,
                 train: bool, seed: int = 0) -> None:
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.preprocess = preprocess
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Any, int, int, int]:
        row = int(self.indices[j])
        gen = None
        if self.train:
            gen = torch.Generator()
            gen.manual_seed(gdist.mix_seed(self.seed, self.epoch, row, 0xA06))
        x = self.preprocess(self.data.inputs[row], self.train, gen)
        return x, int(self.data.labels[row]), int(self.data.groups[row]), row

    def collate(self, items: list[tuple[Any, int, int, int]]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, ys, gs, idx = zip(*items, strict=True)
        return (self.preprocess.collate(list(xs)), torch.tensor(ys, dtype=torch.int64),
                torch.tensor(gs, dtype=torch.int64), torch.tensor(idx, dtype=torch.int64))


def make_sampler_weights(sampler: str, labels: np.ndarray, groups: np.ndarray) -> np.ndarray | None:
    """Per-sample draw weights (n,) for a named sampler; None for 'uniform' (a shuffled pass)."""
    if sampler == "class_balanced":
        return gdist.class_balanced_weights(labels)
    if sampler == "group_balanced":
        return gdist.group_balanced_weights(groups)
    if sampler == "uniform":
        return None
    raise GradTuneInputError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of the initial learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then cosine (0.5 (1 + cos(pi t))), linear
    (1 - t) or constant, where t runs from 0 to 1 over the remaining steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    return 1.0


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


# ------------------------------------------------------------------------- checkpoints
def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _cpu_state(state: Any) -> Any:
    """Tensors to CPU, numpy values to tensors / Python scalars (weights-only loadable)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, np.ndarray):
        return torch.from_numpy(np.array(state))
    if isinstance(state, np.generic):
        return state.item()
    if isinstance(state, dict):
        return {k: _cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_state(v) for v in state)
    return state


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, epoch: int, config: TrainConfig | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    loss_state: dict | None = None, history: list[dict] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then ``os.replace``).

    The file is a dict of plain values and tensors, readable with
    ``torch.load(path, weights_only=True)``: ``format``, ``epoch``, ``model`` (state dict),
    ``spec`` (rebuild spec or None), ``optimizer``, ``scheduler``, ``loss_fn``,
    ``config``, ``history``, ``sampler`` ({seed, epoch}: the sampling/augmentation
    generators are re-derived from these), ``meta``.
    """
    path = Path(path)
    inner = unwrap_model(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": _cpu_state(inner.state_dict()),
        "spec": model_spec(inner),
        "optimizer": _cpu_state(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loss_fn": _cpu_state(loss_state) if loss_state is not None else None,
        "config": config.to_dict() if config is not None else None,
        "history": list(history or []),
        "sampler": {"seed": config.seed if config is not None else None, "epoch": int(epoch)},
        "meta": dict(meta or {}),
    }
    _atomic_torch_save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a gradtune checkpoint with ``weights_only=True`` (on CPU).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    GradTuneInputError
        If it is not a gradtune checkpoint or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise GradTuneInputError(f"could not read checkpoint {str(path)!r} (truncated or not a "
                                 f"weights-only torch file): {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise GradTuneInputError(f"{str(path)!r} is not a gradtune checkpoint (format {CHECKPOINT_FORMAT}); "
                                 "write one with gradtune.models.trainer.train or save_checkpoint")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a checkpoint's model from its spec and load its weights; returns it in eval mode.

    Raises
    ------
    GradTuneInputError
        If the checkpoint has no model spec (build the model yourself and
        ``load_state_dict(load_checkpoint(path)['model'])``).
    """
    ckpt = load_checkpoint(path)
    if not ckpt.get("spec"):
        raise GradTuneInputError(
            f"checkpoint {str(path)!r} has no model spec; rebuild the architecture yourself and call "
            "model.load_state_dict(load_checkpoint(path)['model'])"
        )
    try:
        model = model_from_spec(ckpt["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise GradTuneInputError(f"checkpoint {str(path)!r} has an unusable model spec: {err}") from None
    load_state_checked(model, ckpt["model"], f"checkpoint {str(path)!r}")
    return model.to(device).eval()


# ----------------------------------------------------------------------------- training
def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GradTuneInputError("the model has no trainable parameters (all requires_grad=False)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _check_resumable(ckpt: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = ckpt.get("config") or {}
    current = config.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in _RUN_FIELDS
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
        _check_resumable(ckpt, config, last_path)

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
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return loader
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def _log(message: str) -> None:
    try:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(message, file=sys.stderr)


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
