"""torch.distributed helpers: process groups from torchrun, sharded seeded sampling, gathering.

Launch any gradtune training or extraction with ``torchrun --nproc_per_node=K ...``:
:func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the group with NCCL when
CUDA is available and gloo otherwise. Without those variables (or with WORLD_SIZE=1)
everything runs in one process and every helper here is a no-op.

Sampling is defined globally and then sharded: :class:`ShardedSampler` draws the same
epoch-long index sequence on every rank from a generator seeded by (seed, epoch) —
uniform permutation, or draws with replacement proportional to per-sample weights
(class-balanced, group-balanced, JTT upsampling, ...) — and rank ``r`` takes positions
``r, r + K, r + 2K, ...``. With a per-rank batch of ``B / K`` the K shards of step ``t``
together form exactly the global batch ``t`` of a single-process run with batch ``B``.
:func:`gather_rows` undoes the sharding: rank 0 receives the rows in original order.
Only rank 0 writes files (:attr:`DistInfo.is_main`), the others wait at :func:`barrier`.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from gradtune._validation import GradTuneInputError

__all__ = [
    "DistInfo",
    "ShardedSampler",
    "init_distributed",
    "get_dist_info",
    "env_world_size",
    "is_main_process",
    "barrier",
    "cleanup",
    "all_reduce_sum",
    "broadcast_object",
    "gather_rows",
    "shard_positions",
    "mix_seed",
]

_INITIALIZED_HERE = False


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the (possibly trivial) process group.

    Attributes
    ----------
    rank : int
        Global rank, 0..world_size-1.
    world_size : int
        Number of processes (1 without torchrun).
    local_rank : int
        Rank on this machine; picks the CUDA device.
    backend : str or None
        ``'nccl'`` / ``'gloo'`` when a process group is active, else None.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """``cuda:local_rank`` if CUDA is available, else CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 if unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise GradTuneInputError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def get_dist_info() -> DistInfo:
    """The active process group's rank/size, or a single-process DistInfo if none is active."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, str(dist.get_backend()))
    return DistInfo()


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Parameters
    ----------
    backend : {'nccl', 'gloo'}, optional
        Default: NCCL if CUDA is available, else gloo.
    timeout_s : float, default=1800
        Collective timeout.

    Returns
    -------
    DistInfo
        Single-process info if WORLD_SIZE is unset or 1; the group's info otherwise
        (also when a group was already initialized by the caller).

    Raises
    ------
    GradTuneInputError
        If WORLD_SIZE > 1 but RANK / MASTER_ADDR / MASTER_PORT are missing (launch with
        torchrun, which sets them).
    """
    global _INITIALIZED_HERE
    if dist.is_available() and dist.is_initialized():
        return get_dist_info()
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise GradTuneInputError(
            f"WORLD_SIZE={world} but {missing} are not set; launch with "
            "`torchrun --nproc_per_node=K -m gradtune.cli ...` (or set them yourself)"
        )
    if not dist.is_available():
        raise GradTuneInputError("this torch build has no torch.distributed; run with one process")
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    _INITIALIZED_HERE = True
    return DistInfo(rank, world, local, backend)


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an active process group."""
    return get_dist_info().is_main


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    global _INITIALIZED_HERE
    if _INITIALIZED_HERE and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _INITIALIZED_HERE = False


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returned on its original device); identity without a group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = values.detach().to(_comm_device(), copy=True)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; small ones only)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


# --------------------------------------------------------------------------- sampling
def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixing several integers (SplitMix64 finalizer); deterministic."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & mask)) & mask
        h = (h + 0x9E3779B97F4A7C15) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def shard_positions(n: int, rank: int, world_size: int) -> np.ndarray:
    """Positions rank, rank + K, ... of a length-n sequence padded (by wrapping) to a multiple of K.

    Every rank gets ``ceil(n / K)`` positions; the padding repeats the first positions.
    """
    per_rank = math.ceil(n / world_size) if n else 0
    pos = np.arange(rank, per_rank * world_size, world_size, dtype=np.int64)
    return pos % max(n, 1)


class ShardedSampler(Sampler[int]):
    """Seeded epoch sampler over ``n`` items, sharded across ranks (DistributedSampler-compatible).

    Parameters
    ----------
    n : int
        Number of items (positions 0..n-1 of the training subset).
    weights : np.ndarray of shape (n,), optional
        Non-negative sampling weights: ``num_samples`` draws with replacement, item ``i``
        with probability ``w_i / sum(w)``. None: a uniform permutation (without replacement).
    num_samples : int, optional
        Draws per epoch over all ranks; default ``n``. Without weights it must be <= n.
    seed : int
        The epoch sequence is drawn from a generator seeded by (seed, epoch).
    rank, world_size : int
        This process's shard.

    Notes
    -----
    Call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``). The
    global sequence is identical on every rank; padding to a multiple of ``world_size``
    repeats its first items.
    """

    def __init__(self, n: int, weights: np.ndarray | None = None, num_samples: int | None = None, *,
                 seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n <= 0:
            raise GradTuneInputError("cannot sample from an empty training set (0 items)")
        if not 0 <= rank < world_size:
            raise GradTuneInputError(f"rank must be in [0, {world_size}), got {rank}")
        self.n = int(n)
        self.num_samples = int(num_samples) if num_samples is not None else self.n
        if self.num_samples <= 0:
            raise GradTuneInputError(f"num_samples must be > 0, got {num_samples}")
        self._cdf: np.ndarray | None = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (self.n,):
                raise GradTuneInputError(f"sampler weights must have shape ({self.n},), got {w.shape}")
            if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise GradTuneInputError("sampler weights must be finite, >= 0 and not all zero")
            cdf = np.cumsum(w)
            self._cdf = cdf / cdf[-1]
        elif self.num_samples > self.n:
            raise GradTuneInputError(
                f"uniform sampling draws without replacement: num_samples ({self.num_samples}) must be <= n ({self.n})"
            )
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        """The full (unsharded) sequence of item positions for an epoch, shape (num_samples,)."""
        epoch = self.epoch if epoch is None else int(epoch)
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, epoch, 0x5A3D))
        if self._cdf is None:
            return torch.randperm(self.n, generator=g).numpy()[: self.num_samples]
        u = torch.rand(self.num_samples, generator=g, dtype=torch.float64).numpy()
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), self.n - 1)

    def __iter__(self) -> Iterator[int]:
        seq = self.global_indices()
        return iter(seq[shard_positions(len(seq), self.rank, self.world_size)].tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)


# --------------------------------------------------------------------------- gathering
def gather_rows(local: torch.Tensor, n_total: int, *, chunk_rows: int = 65536) -> torch.Tensor | None:
    """Reassemble rows sharded by :func:`shard_positions` on rank 0, in original order.

    Parameters
    ----------
    local : torch.Tensor of shape (ceil(n_total / K), ...)
        This rank's rows, for positions rank, rank + K, ... (padded).
    n_total : int
        Length of the unsharded sequence.
    chunk_rows : int, default=65536
        Rows sent per collective call (bounds memory on the communication device).

    Returns
    -------
    torch.Tensor of shape (n_total, ...) on CPU, on rank 0; None on other ranks.
    Without a process group, ``local[:n_total]`` on CPU.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local[:n_total].cpu()
    world, rank = dist.get_world_size(), dist.get_rank()
    per_rank = math.ceil(n_total / world)
    if local.shape[0] != per_rank:
        raise GradTuneInputError(f"rank {rank} holds {local.shape[0]} rows, expected {per_rank}")
    device = _comm_device()
    pieces: list[torch.Tensor] = []
    for start in range(0, per_rank, chunk_rows):
        part = local[start:start + chunk_rows].to(device).contiguous()
        bucket = [torch.empty_like(part) for _ in range(world)] if rank == 0 else None
        dist.gather(part, gather_list=bucket, dst=0)
        if rank == 0:
            pieces.append(torch.stack([b.cpu() for b in bucket], dim=1))  # (rows, K, ...)
    if rank != 0:
        return None
    if not pieces:
        return local.new_empty((0, *local.shape[1:])).cpu()
    out = torch.cat(pieces, dim=0)
    return out.reshape(per_rank * world, *local.shape[1:])[:n_total]
