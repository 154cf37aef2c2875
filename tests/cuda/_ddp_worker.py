"""Worker of the one-process torchrun check (tests/cuda/test_cuda.py), and the training it
runs, which the test repeats on the CPU without a process group.

Under ``torchrun --standalone --nproc_per_node=1 _ddp_worker.py OUT`` it joins an NCCL group
of one (gloo with GRADTUNE_CUDA_TESTS_ON_CPU=1), checks gradtune's collective helpers and a
DistributedDataParallel step against a plain one, trains a tiny ResNet with
:func:`gradtune.training.trainer.train` on the group's device, and writes OUT/worker.json.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gradtune.data.base import GroupedDataset
from gradtune.models import distributed as gdist
from gradtune.models.resnet import build_resnet
from gradtune.models.transforms import ImagePreprocess
from gradtune.training.config import TrainConfig
from gradtune.training.trainer import seeded_scope, train


def _data() -> GroupedDataset:
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.integers(0, 255, size=(32, 3, 20, 20), dtype=np.uint8))
    labels = np.arange(32) % 2
    return GroupedDataset("img", imgs, labels, labels, labels, np.zeros(32), ["a", "b"], ["x", "y"],
                          ["g0", "g1"])


def _model() -> nn.Module:
    with seeded_scope(0):
        return build_resnet((1, 1, 1, 1), 2, width=4)


def tiny_run(device: torch.device, out: Path) -> dict:
    """Two epochs of SGD on 32 random 20 px images with a width-4 ResNet; the loss per epoch."""
    cfg = TrainConfig(optimizer="sgd", lr=0.01, schedule="constant", batch_size=8, epochs=2, seed=1,
                      progress=False, device=str(device), checkpoint_dir=str(out / "ck"))
    res = train(_model(), _data(), cfg, preprocess=ImagePreprocess(size=16, resize_to=18))
    return {"losses": [h["loss"] for h in res.history]}


def _ddp_step_diff(device: torch.device) -> float:
    """Max |difference| of the weights after one SGD step with and without DDP (a group of one
    averages each gradient with itself: the steps must agree)."""
    plain = _model().to(device)
    wrapped = nn.parallel.DistributedDataParallel(
        copy.deepcopy(plain), device_ids=[device.index] if device.type == "cuda" else None)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, 16, 16, generator=g).to(device), torch.tensor([0, 1] * 4, device=device)
    for m in (plain, wrapped):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return max(float((a - b).abs().max()) for a, b in
               zip(plain.state_dict().values(), wrapped.module.state_dict().values(), strict=True))


def main(out: Path) -> None:
    on_cpu = os.environ.get("GRADTUNE_CUDA_TESTS_ON_CPU") == "1"
    backend = "gloo" if on_cpu else "nccl"
    if not on_cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # gradtune's init_distributed leaves a group of one alone; join it here so the collective
    # helpers and DDP really go through the backend
    dist.init_process_group(backend=backend, init_method="env://")
    try:
        info = gdist.get_dist_info()
        device = torch.device("cpu") if on_cpu else info.device
        t = torch.arange(6.0, device=device).reshape(3, 2)
        summed = t.clone()
        dist.all_reduce(summed)  # through the backend itself (gradtune's helpers skip a group of one)
        all_reduce_ok = bool(torch.equal(summed, t)) and bool(torch.equal(gdist.all_reduce_sum(t), t)) \
            and bool(torch.equal(gdist.gather_rows(t, 2), t[:2]))
        result = {"backend": info.backend, "world_size": info.world_size, "all_reduce_ok": all_reduce_ok,
                  "ddp_max_abs_diff": _ddp_step_diff(device), **tiny_run(device, out / "run")}
        gdist.barrier()
    finally:
        dist.destroy_process_group()
    (out / "worker.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
