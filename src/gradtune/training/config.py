"""Settings and outcomes of a full-network training run: :class:`TrainConfig` (with the
paper's Table 3 presets), the loss hook, and what callbacks and callers receive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gradtune._config_files import read_toml, run_config_path
from gradtune._params import NOTHING, check_fields, override, param
from gradtune._validation import GradTuneInputError
from gradtune.finetune.linear import FinetuneConfig
from gradtune.objectives.choices import OPTIMIZERS, SCHEDULES, TRAIN_SAMPLERS

__all__ = ["OPTIMIZERS", "SCHEDULES", "SAMPLERS", "PRECISIONS", "TABLE3_DATASETS", "table3_preset", "RUN_FIELDS", "LossFn",
           "cross_entropy_loss", "TrainConfig", "EpochEnd", "TrainResult"]

SAMPLERS = TRAIN_SAMPLERS
PRECISIONS = ("fp32", "bf16")
_MAX_INT = 2**31 - 1

#: Datasets whose packaged run config holds the paper's Table 3 ERM settings in ``[erm]``.
TABLE3_DATASETS = ("waterbirds", "celeba", "multinli", "civilcomments")


def table3_preset(dataset: str) -> dict[str, Any]:
    """The ``[erm]`` table of ``dataset``'s packaged run config: the paper's Table 3 ERM settings."""
    key = dataset.lower()
    if key not in TABLE3_DATASETS:
        raise GradTuneInputError(f"no Table 3 preset for {dataset!r}; known: {sorted(TABLE3_DATASETS)}")
    return dict(read_toml(run_config_path(key))["erm"])

# Fields that define a run: a checkpoint made with other values cannot be resumed.
RUN_FIELDS = ("optimizer", "lr", "schedule", "warmup_steps", "batch_size", "weight_decay",
               "momentum", "betas", "epochs", "sampler", "samples_per_epoch", "seed", "grad_clip")



class LossFn(Protocol):
    """``loss_fn(logits (B, C), labels (B,), groups (B,), indices (B,)) -> scalar tensor``."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor: ...


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                       indices: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch (the ERM loss)."""
    return F.cross_entropy(logits, labels)


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
        A tqdm bar per epoch on rank 0 (off a terminal, a log line every 10 s), and a
        log line per epoch.
    """

    # the optimizer settings are FinetuneConfig's declarations (the paper's vision setting)
    optimizer: str = override(FinetuneConfig, "optimizer", text=NOTHING)
    lr: float = override(FinetuneConfig, "lr", doc="initial learning rate of the whole network", text=NOTHING)
    schedule: str = override(FinetuneConfig, "schedule", text=NOTHING)
    warmup_steps: int = param(0, "linear warm-up steps", ge=0)
    batch_size: int = override(FinetuneConfig, "batch_size", kind="int", optional=False, ge=1, le=_MAX_INT,
                               text=NOTHING)
    weight_decay: float = override(FinetuneConfig, "weight_decay")
    momentum: float = override(FinetuneConfig, "momentum")
    betas: tuple[float, float] = override(FinetuneConfig, "betas")
    epochs: int = param(100, "passes over the training set", ge=1, le=_MAX_INT)
    sampler: str = override(FinetuneConfig, "sampler", choices=SAMPLERS)
    samples_per_epoch: int | None = param(None, "rows drawn per epoch (None: the training set's size)", kind="int",
                                          ge=1)
    seed: int = param(0, "seed of the initialization, sampler and augmentation", ge=0)
    checkpoint_dir: str | None = param(None, "folder of the per-epoch checkpoints", kind="str")
    keep_epochs: tuple[int, ...] = param((), "epochs whose checkpoints are kept", item="int")
    grad_clip: float | None = param(None, "gradient-norm clip (None: none)", kind="float", gt=0)
    num_workers: int = param(0, "DataLoader workers", ge=0)
    precision: str = param("fp32", "the autocast precision", choices=PRECISIONS)
    sync_batchnorm: bool = param(False, "synchronize batch-norm statistics across processes")
    device: str | None = param(None, "the device (None: cuda:LOCAL_RANK if available, else CPU)", kind="str")
    progress: bool = param(True, "a progress bar per epoch on rank 0")

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint_dir, Path):
            self.checkpoint_dir = str(self.checkpoint_dir)
        check_fields(self, prefix="TrainConfig.")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.keep_epochs = tuple(int(e) for e in self.keep_epochs)

    @classmethod
    def preset(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """The paper's Table 3 ERM settings for ``dataset`` (class-balanced), with overrides."""
        return cls(**{**table3_preset(dataset), **overrides})

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
