"""Full-network robust baselines of the paper's Table 1 on the ERM trainer: JTT and Group DRO.

Both run through :func:`gradtune.training.trainer.train`, so they share its optimizers,
schedules, seeded sampling, atomic checkpoints, exact resume and torchrun support. The
third full-network row, class-balanced ERM, is the trainer's default and needs nothing here.

JTT (Liu et al., 2021) -- :func:`train_jtt`
    Stage 1 trains an identification model by ERM and stops after ``T`` epochs (or
    reuses an ERM run's epoch-``T`` checkpoint). Its *error set* is the training rows it
    misclassifies, computed in one eval-mode pass (no dropout, BatchNorm running
    statistics, evaluation transforms) with :func:`gradtune.models.encode.encode`
    and :func:`gradtune.objectives.jtt.jtt_error_set`. Stage 2 trains a fresh model *from
    the same (pretrained) initialization* on the training rows listed with repeats --
    every row once, every error row ``lambda`` times in total
    (:func:`gradtune.objectives.jtt.jtt_upsampled_indices`, the order of the authors'
    ``ConcatDataset([train] + [errors] * (lambda - 1))``) -- shuffled uniformly by
    default. JTT reads **no group labels**: the trainer hands group ids to the loss, but
    the cross-entropy ignores them, and the samplers used (uniform / class-balanced) and
    the error set use labels and predictions only (``error_set.json`` also records the
    error set's group composition, for reporting only).

Group DRO (Sagawa et al., 2020) -- :func:`train_group_dro`
    The trainer with :class:`gradtune.objectives.group_dro.GroupDROLoss` (per minibatch:
    ``q <- q * exp(eta * (loss_g + C / sqrt(n_g)))``, normalized, loss ``q . loss_g``)
    and group-balanced sampling (``1 / n_g`` with replacement). Group DRO **uses the
    training rows' group labels** (in the loss and in the sampler). Its regularization
    is "strong" weight decay (the authors: SGD, lr 1e-5, wd 1.0 on Waterbirds, 0.1 on
    CelebA), set in the ``[group_dro.train]`` tables of the packaged configs. Under
    torchrun the per-group losses are summed over the ranks before the ``q`` step, so
    every rank holds the same ``q`` and the gradient is that of the global batch.

On-disk layout of a JTT run (``out_dir``)::

    init.pt            the initialization both stages start from (weights only)
    stage1/last.pt     identification ERM (stops after epoch T; resumable)
    error_set.json     T, source checkpoint, error rows (dataset row ids), sizes
    stage2/last.pt     the final JTT model (resumable); stage2/done.json when finished

Rerunning :func:`train_jtt` with the same ``out_dir`` resumes wherever it stopped: a
finished stage 1 or error set is reused, and stage 2 continues from its ``last.pt``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradtune._io import atomic_write_json
from gradtune._validation import GradTuneInputError, check_nonneg_float, check_positive_int
from gradtune.data.base import GroupedDataset
from gradtune.models import distributed as gdist
from gradtune.models.checkpoint import LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from gradtune.models.encode import encode
from gradtune.models.preprocess import Preprocess
from gradtune.objectives.group_dro import GroupDROLoss, group_dro_update
from gradtune.objectives.jtt import jtt_error_set, jtt_upsampled_indices
from gradtune.training.config import EpochEnd, TrainConfig, TrainResult
from gradtune.training.trainer import check_resumable, seeded_scope, train

__all__ = [
    "ERROR_SET_FORMAT",
    "JTTResult",
    "GroupDROResult",
    "train_jtt",
    "train_group_dro",
]

ERROR_SET_FORMAT = "gradtune-jtt-error-set-v1"
INIT_CHECKPOINT = "init.pt"
ERROR_SET_FILE = "error_set.json"
STAGE1_DIR, STAGE2_DIR = "stage1", "stage2"


# --------------------------------------------------------------------------------- JTT
@dataclass
class JTTResult:
    """Outcome of :func:`train_jtt`.

    Attributes
    ----------
    model : nn.Module
        The stage-2 (final JTT) model, in eval mode.
    train_rows : np.ndarray of shape (N,), int64
        The training rows of ``data`` (stage 1's training set, where errors are counted).
    error_rows : np.ndarray of shape (E,), int64
        Rows of ``data`` the identification model misclassifies, increasing.
    upsampled_rows : np.ndarray of shape (N + (lambda - 1) E,), int64
        Stage 2's training list: ``train_rows``, then ``lambda - 1`` more copies of the
        error rows.
    stage1_checkpoint : Path
        The identification model's checkpoint (``stage1/last.pt`` or the reused ERM one).
    init_checkpoint : Path
        ``init.pt``, the initialization of both stages.
    stage2 : TrainResult
        The trainer's result for stage 2 (history, checkpoint, resumed_from).
    """

    model: nn.Module
    train_rows: np.ndarray
    error_rows: np.ndarray
    upsampled_rows: np.ndarray
    stage1_checkpoint: Path
    init_checkpoint: Path
    stage2: TrainResult


class _StopStage1(Exception):
    """Raised by the stage-1 callback after epoch T (the trainer keeps that checkpoint)."""


def _stop_after(T: int) -> Callable[[EpochEnd], None]:
    def callback(end: EpochEnd) -> None:
        if end.epoch >= T:
            raise _StopStage1(f"stage 1 reached epoch {T}")
    return callback


def _rows_digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def _dist_info() -> gdist.DistInfo:
    return gdist.init_distributed() if gdist.env_world_size() > 1 else gdist.get_dist_info()


def train_jtt(model_factory: Callable[[], nn.Module], data: GroupedDataset, config: TrainConfig, *,
              T: int, lam: int, out_dir: str | Path, seed: int, preprocess: Preprocess | None = None,
              stage2_config: TrainConfig | None = None, erm_checkpoint: str | Path | None = None,
              indices: np.ndarray | None = None, callbacks: Sequence[Callable[[EpochEnd], None]] = (),
              resume: bool = True, meta: dict[str, Any] | None = None,
              eval_batch_size: int = 256) -> JTTResult:
    """Just Train Twice on the full network, with both stages checkpointed and resumable.

    Parameters
    ----------
    model_factory : callable
        ``model_factory() -> nn.Module``: the (pretrained) initialization. It is called
        inside :func:`~gradtune.training.trainer.seeded_scope` (``seed``) for each model
        built; the first model's weights are saved to ``out_dir/init.pt`` and loaded
        into every later one, so stage 2 starts exactly where stage 1 started even if
        the factory draws random weights (a new head) differently on each call.
    data : GroupedDataset
    config : TrainConfig
        Stage 1 (identification ERM). Its ``epochs`` sets the length of the learning-rate
        schedule; training stops after ``T`` epochs, so the identification model is the
        epoch-``T`` checkpoint of an ERM run with these settings. ``seed`` and
        ``checkpoint_dir`` are replaced (``seed``, ``out_dir/stage1``).
    T : int >= 1
        Epoch of the identification model (the authors: Waterbirds 60, CelebA 1,
        MultiNLI 2, CivilComments 2).
    lam : int >= 1
        lambda: total times each error row appears in stage 2 (100, 50, 4, 6).
    out_dir : str or Path
        Run folder (layout in the module docstring).
    seed : int
        Seed of the initialization and of both stages' sampling and augmentation.
    preprocess : Preprocess, optional
        Input pipeline (training transforms in training, evaluation transforms for the
        error set); default :func:`~gradtune.models.preprocess.make_preprocess`.
    stage2_config : TrainConfig, optional
        Stage 2 settings; default ``config`` with ``sampler='uniform'`` (shuffled passes
        over the upsampled list, as the authors' ConcatDataset). A class-balanced sampler
        here would balance the *upsampled* list. ``seed`` and ``checkpoint_dir`` are
        replaced (``seed``, ``out_dir/stage2``).
    erm_checkpoint : str or Path, optional
        Reuse this ERM checkpoint (its ``epoch`` must equal ``T``, e.g. one kept with
        ``TrainConfig.keep_epochs``) as the identification model instead of training
        stage 1. Stage 2 then starts from ``model_factory()`` under ``seed``, which is
        that run's initialization only if it was built the same way.
    indices : np.ndarray of shape (N,), optional
        Training rows; default ``data.indices('train')``.
    callbacks : sequence of callables
        Passed to the trainer in both stages (``EpochEnd.checkpoint`` tells which).
    resume : bool, default=True
        False refuses to start if ``out_dir`` already holds a JTT run.
    meta : dict, optional
        Plain values stored in both stages' checkpoints.
    eval_batch_size : int, default=256
        Batch size of the error-set pass.

    Returns
    -------
    JTTResult

    Raises
    ------
    GradTuneInputError
        On invalid ``T`` / ``lam``, ``T`` beyond ``config.epochs``, an ERM checkpoint of
        another epoch, or an ``out_dir`` holding a run with other settings.
    """
    T = check_positive_int(T, "T (JTT's identification epoch)")
    lam = check_positive_int(lam, "lam (JTT's upsampling factor lambda)")
    seed = check_positive_int(seed, "seed", allow_zero=True)
    if erm_checkpoint is None and T > config.epochs:
        raise GradTuneInputError(
            f"T={T} is beyond the stage-1 schedule of {config.epochs} epochs; raise epochs or lower T")
    out = Path(out_dir)
    init_path, error_path = out / INIT_CHECKPOINT, out / ERROR_SET_FILE
    last1, last2 = out / STAGE1_DIR / LAST_CHECKPOINT, out / STAGE2_DIR / LAST_CHECKPOINT
    if not resume and any(p.exists() for p in (init_path, last1, error_path, last2)):
        raise GradTuneInputError(
            f"{str(out)!r} already holds a JTT run; pass resume=True (CLI: --resume) to continue it "
            "or choose another output folder")
    cfg1 = replace(config, seed=seed, checkpoint_dir=str(out / STAGE1_DIR))
    base2 = stage2_config if stage2_config is not None else replace(config, sampler="uniform")
    cfg2 = replace(base2, seed=seed, checkpoint_dir=str(out / STAGE2_DIR))
    rows = data.indices("train") if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0:
        raise GradTuneInputError(f"the training set is empty or not 1-d (shape {rows.shape})")
    info = _dist_info()
    meta = dict(meta or {})

    def fresh() -> nn.Module:
        with seeded_scope(seed):
            return model_factory()

    # One initialization for both stages, on disk so that a resumed run reuses it.
    # Decided on rank 0 and shared: a slow rank must not see the file rank 0 just wrote.
    if gdist.broadcast_object(not init_path.exists()):
        first = fresh()
        if info.is_main:
            save_checkpoint(init_path, first, epoch=0, meta={**meta, "jtt": "initialization", "seed": seed})
        gdist.barrier()
        del first
    init_state = load_checkpoint(init_path)["model"]

    def init_model() -> nn.Module:
        model = fresh()
        model.load_state_dict(init_state)
        return model

    source = Path(erm_checkpoint).resolve() if erm_checkpoint is not None else last1.resolve()
    digest = _rows_digest(rows)
    if error_path.exists():
        errors = _read_error_set(error_path, T=T, source=source, n=rows.size, digest=digest)
        if erm_checkpoint is None and last1.exists():
            check_resumable(load_checkpoint(last1), cfg1, last1)  # same stage-1 settings
    else:
        model1 = init_model()
        if erm_checkpoint is not None:
            ckpt = load_checkpoint(erm_checkpoint)
            if int(ckpt["epoch"]) != T:
                raise GradTuneInputError(
                    f"ERM checkpoint {str(erm_checkpoint)!r} is from epoch {ckpt['epoch']}, not T={T}; "
                    "keep the epoch-T checkpoint of the ERM run (keep_epochs / --keep-epochs) or omit it "
                    "to train stage 1")
            model1.load_state_dict(ckpt["model"])
        else:
            _run_stage1(model1, data, cfg1, T, last1, preprocess=preprocess, rows=rows,
                        callbacks=callbacks, meta={**meta, "method": "jtt-stage1", "jtt_T": T})
        enc = _encode(model1, data, rows, preprocess=preprocess, config=cfg1, batch_size=eval_batch_size)
        errors_pos: np.ndarray | None = None
        if info.is_main:
            assert enc is not None
            errors_pos = jtt_error_set(enc.logits, data.labels[rows])
            err_rows = rows[errors_pos]
            atomic_write_json(error_path, {
                "format": ERROR_SET_FORMAT, "T": T, "source": str(source), "n_train": int(rows.size),
                "train_rows_sha256": digest, "n_errors": int(errors_pos.size),
                "error_rate": float(errors_pos.size / rows.size),
                "error_positions": errors_pos.tolist(), "error_rows": err_rows.tolist(),
                # Reporting only (JTT never reads group labels): the error set's composition.
                "error_group_counts": np.bincount(data.groups[err_rows], minlength=data.n_groups).tolist(),
            })
        errors = np.asarray(gdist.broadcast_object(errors_pos), dtype=np.int64)
        del model1, enc

    upsampled = rows[jtt_upsampled_indices(rows.size, errors, lam)]
    meta2 = {**meta, "method": "jtt", "jtt_T": T, "jtt_lambda": lam, "n_errors": int(errors.size),
             "n_upsampled": int(upsampled.size), "uses_group_labels": False}
    if last2.exists():
        saved = load_checkpoint(last2).get("meta") or {}
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {meta2[k]!r}"
                 for k in ("jtt_T", "jtt_lambda", "n_errors", "n_upsampled") if saved.get(k) != meta2[k]]
        if diffs:
            raise GradTuneInputError(
                f"cannot resume stage 2 from {str(last2)!r}: {'; '.join(diffs)}. "
                "Use the same T and lambda, or another output folder")
    result2 = train(init_model(), data, cfg2, preprocess=preprocess, indices=upsampled,
                    callbacks=callbacks, resume=True, meta=meta2)
    return JTTResult(result2.model, rows, rows[errors], upsampled,
                     Path(erm_checkpoint) if erm_checkpoint is not None else last1, init_path, result2)


def _run_stage1(model: nn.Module, data: GroupedDataset, cfg1: TrainConfig, T: int, last1: Path, *,
                preprocess: Preprocess | None, rows: np.ndarray,
                callbacks: Sequence[Callable[[EpochEnd], None]], meta: dict[str, Any]) -> None:
    """Bring ``model`` to the epoch-T identification model, training or resuming stage 1."""
    done = int(load_checkpoint(last1)["epoch"]) if last1.exists() else 0
    if done > T:
        raise GradTuneInputError(
            f"{str(last1)!r} is at epoch {done}, past T={T}: it belongs to a run with another T; "
            "use another output folder")
    if done == T:
        ckpt = load_checkpoint(last1)
        check_resumable(ckpt, cfg1, last1)
        model.load_state_dict(ckpt["model"])
        return
    stop = [_stop_after(T)] if T < cfg1.epochs else []
    try:
        train(model, data, cfg1, preprocess=preprocess, indices=rows, callbacks=[*callbacks, *stop],
              resume=True, meta=meta)
    except _StopStage1:
        pass


def _encode(model: nn.Module, data: GroupedDataset, rows: np.ndarray, *, preprocess: Preprocess | None,
            config: TrainConfig, batch_size: int) -> Any:
    return encode(model, data, rows, preprocess=preprocess, batch_size=batch_size,
                  num_workers=config.num_workers, device=config.device, precision=config.precision)


def _read_error_set(path: Path, *, T: int, source: Path, n: int, digest: str) -> np.ndarray:
    import json

    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GradTuneInputError(f"could not read {str(path)!r}: {err}; delete it to recompute") from None
    if not isinstance(saved, dict) or saved.get("format") != ERROR_SET_FORMAT:
        raise GradTuneInputError(f"{str(path)!r} is not a JTT error-set file ({ERROR_SET_FORMAT})")
    now = {"T": T, "source": str(source), "n_train": n, "train_rows_sha256": digest}
    diffs = [f"{k}: saved {saved.get(k)!r} vs now {v!r}" for k, v in now.items() if saved.get(k) != v]
    if diffs:
        raise GradTuneInputError(
            f"{str(path)!r} was computed for another run ({'; '.join(diffs)}); use another output folder")
    pos = np.asarray(saved["error_positions"], dtype=np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        raise GradTuneInputError(f"{str(path)!r} holds error positions outside 0..{n - 1}")
    return pos


# --------------------------------------------------------------------------- Group DRO
@dataclass
class GroupDROResult:
    """Outcome of :func:`train_group_dro`.

    Attributes
    ----------
    model : nn.Module
        The trained model, in eval mode.
    q : np.ndarray of shape (G,)
        Final group weights (rank 0's; identical on every rank).
    group_counts : np.ndarray of shape (G,)
        Training-set group sizes ``n_g`` used by the adjustment ``C / sqrt(n_g)``.
    train : TrainResult
        The trainer's result (history, checkpoint, resumed_from).
    """

    model: nn.Module
    q: np.ndarray
    group_counts: np.ndarray
    train: TrainResult


class _RankSyncedGroupDROLoss(GroupDROLoss):
    """:class:`GroupDROLoss` over the *global* batch when DDP splits it across ranks.

    Per-group loss sums and row counts of the local shard are summed over the ranks
    (``reduce``, detached) before the ``q`` step, so every rank takes the same step
    with the global batch's group means. The local loss is
    ``world_size * sum_g q_g * local_sum_g / global_count_g``: DDP's gradient average
    over the ranks is then the gradient of ``q . global_means``.
    """

    def __init__(self, group_counts: Any, *, eta: float, adj: Any, world_size: int,
                 reduce: Callable[[torch.Tensor], torch.Tensor] = gdist.all_reduce_sum) -> None:
        super().__init__(group_counts, eta=eta, adj=adj)
        self.world_size = int(world_size)
        self.reduce = reduce

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                 indices: torch.Tensor | None = None) -> torch.Tensor:
        if groups.numel() and int(groups.max()) >= self.n_groups:
            raise GradTuneInputError(f"group id {int(groups.max())} out of range for {self.n_groups} groups")
        per = F.cross_entropy(logits, labels, reduction="none")
        sums = torch.zeros(self.n_groups, dtype=per.dtype, device=per.device).index_add(0, groups, per)
        counts = torch.bincount(groups, minlength=self.n_groups).to(per.dtype)
        total = self.reduce(torch.cat([sums.detach(), counts]))
        g_sums, g_counts = total[: self.n_groups], total[self.n_groups:].clamp_min(1.0)
        self.q = group_dro_update(self.q.to(per.device), g_sums / g_counts,
                                  self.group_counts.to(per.device), self.eta, self.adj).to(per.dtype)
        return self.world_size * (self.q * sums / g_counts).sum()


def _normalize_adj(adj: Any, n_groups: int) -> float | list[float]:
    arr = np.asarray(adj, dtype=np.float64)
    if arr.ndim == 0:
        return check_nonneg_float(float(arr), "adj (Group DRO's generalization adjustment C)")
    if arr.shape != (n_groups,) or not np.isfinite(arr).all() or (arr < 0).any():
        raise GradTuneInputError(
            f"adj must be a number >= 0 or {n_groups} numbers >= 0 (one per group), got {adj!r}")
    return arr.tolist()


def train_group_dro(model: nn.Module, data: GroupedDataset, config: TrainConfig, *, eta: float = 0.01,
                    adj: Any = 0.0, preprocess: Preprocess | None = None, indices: np.ndarray | None = None,
                    group_balanced: bool = True, callbacks: Sequence[Callable[[EpochEnd], None]] = (),
                    resume: bool = True, meta: dict[str, Any] | None = None) -> GroupDROResult:
    """Group DRO on the full network: online group weights, group-balanced sampling.

    Uses the training rows' group labels (loss and sampler).

    Parameters
    ----------
    model : nn.Module
        The initialization (e.g. pretrained backbone + new head), trained in place.
    data : GroupedDataset
    config : TrainConfig
        Training settings; Group DRO needs strong weight decay (the authors: SGD lr 1e-5,
        wd 1.0 Waterbirds / 0.1 CelebA; see the packaged ``[group_dro.train]`` tables).
    eta : float, default=0.01
        Group-weight step size (the authors' ``robust_step_size``).
    adj : float or array-like of shape (G,), default=0.0
        Generalization adjustment C (adds ``C / sqrt(n_g)`` to group g's loss in the q step).
    preprocess : Preprocess, optional
    indices : np.ndarray of shape (N,), optional
        Training rows; default ``data.indices('train')``. ``n_g`` is counted over them.
    group_balanced : bool, default=True
        Replace ``config.sampler`` by ``'group_balanced'`` (draws with probability
        ``1 / n_g``, with replacement), as the authors' ``--reweight_groups``.
    callbacks, resume, meta
        As :func:`gradtune.training.trainer.train`. ``q`` is checkpointed with the model
        and restored on resume.

    Returns
    -------
    GroupDROResult

    Raises
    ------
    GradTuneInputError
        On invalid ``eta`` / ``adj``, or resuming a run made with another ``eta`` / ``adj``.
    """
    eta = check_nonneg_float(eta, "eta (Group DRO's step size)")
    rows = data.indices("train") if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.size == 0:
        raise GradTuneInputError("the training set is empty (no rows in split 'train' or in indices)")
    counts = np.bincount(data.groups[rows], minlength=data.n_groups)
    adj_n = _normalize_adj(adj, counts.size)
    cfg = replace(config, sampler="group_balanced") if group_balanced else config
    if cfg.checkpoint_dir and resume:
        last = Path(cfg.checkpoint_dir) / LAST_CHECKPOINT
        if last.exists():
            saved = load_checkpoint(last).get("loss_fn") or {}
            s_adj = np.asarray(saved.get("adj", np.nan), dtype=np.float64)
            if saved.get("eta") != eta or s_adj.shape not in ((), counts.shape) \
                    or not np.allclose(s_adj, np.asarray(adj_n), rtol=0, atol=0):
                raise GradTuneInputError(
                    f"cannot resume Group DRO from {str(last)!r}: it was run with eta={saved.get('eta')!r}, "
                    f"adj={s_adj.tolist()!r}; now eta={eta!r}, adj={adj_n!r}")
    info = _dist_info()
    if info.world_size > 1:
        loss: GroupDROLoss = _RankSyncedGroupDROLoss(counts, eta=eta, adj=adj_n, world_size=info.world_size)
    else:
        loss = GroupDROLoss(counts, eta=eta, adj=adj_n)
    meta = {**(meta or {}), "method": "group-dro", "dro_eta": eta, "dro_adj": adj_n,
            "group_counts": counts.tolist(), "uses_group_labels": True}
    result = train(model, data, cfg, preprocess=preprocess, indices=rows, loss_fn=loss,
                   callbacks=callbacks, resume=resume, meta=meta)
    return GroupDROResult(result.model, loss.q.detach().cpu().numpy().copy(), counts, result)
