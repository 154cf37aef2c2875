"""gradtune on CUDA tensors: gradient norms (both backends), fine-tuning, feature capture,
and a one-process torchrun with NCCL training a tiny ResNet. Each result is checked against
an independent computation on the CPU (float64 closed forms, or the same code on the CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradtune
from gradtune import FinetuneConfig, GradTuneInputError, finetune_linear, grad_norms
from gradtune.embeddings.capture import capture_features
from gradtune.scores import _fused
from tests.cuda._ddp_worker import tiny_run
from tests.cuda.conftest import ON_CPU


def _inputs(n: int = 4096, d: int = 256, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    w = torch.randn(c, d, generator=g) * 0.05
    b = torch.randn(c, generator=g) * 0.1
    return h, y, w, b


def _closed_form(h, y, w, b) -> np.ndarray:
    """||softmax(z) - e_y|| * sqrt(||h||^2 + 1), in float64 on the CPU."""
    h64, w64, b64 = h.double(), w.double(), b.double()
    p = torch.softmax(h64 @ w64.T + b64, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return (p.norm(dim=1) * (h64.square().sum(1) + 1.0).sqrt()).numpy()


def test_grad_norms_on_cuda_tensors_match_the_closed_form(device) -> None:
    h, y, w, b = _inputs()
    ref = _closed_form(h, y, w, b)
    hd, yd, wd, bd = (t.to(device) for t in (h, y, w, b))
    for out in (grad_norms(hd, labels=yd, weight=wd, bias=bd, backend="torch"),
                grad_norms(hd, torch.addmm(bd, hd, wd.T), yd, backend="torch"),
                grad_norms(hd, labels=yd, weight=wd, bias=bd)):  # "auto" on a CUDA tensor: torch
        assert out.device.type == device.type and out.dtype == torch.float32
        np.testing.assert_allclose(out.cpu().double().numpy(), ref, rtol=2e-4)


def test_fused_and_torch_backends_agree_on_cuda_features(device) -> None:
    if not _fused.available():
        pytest.skip("the fused backend needs numba (pip install 'gradtune[fast]')")
    h, y, w, b = _inputs(seed=1)
    on_device = grad_norms(h.to(device), labels=y.to(device), weight=w.to(device), bias=b.to(device),
                           backend="torch").cpu()
    fused = grad_norms(h, labels=y, weight=w, bias=b, backend="fused")  # the CPU kernel
    torch.testing.assert_close(on_device, fused, rtol=1e-4, atol=1e-6)
    if device.type == "cuda":  # documented: the fused kernel runs on the CPU only
        with pytest.raises(GradTuneInputError, match="CPU"):
            grad_norms(h.to(device), labels=y.to(device), weight=w.to(device), bias=b.to(device),
                       backend="fused")


def test_finetune_linear_on_cuda_follows_the_cpu_run(device) -> None:
    h, y, w, b = _inputs(n=600, d=64, c=2, seed=2)
    cfg = FinetuneConfig(epochs=20, batch_size=32)
    cpu = finetune_linear(h, y, w, b, cfg, seed=0)
    dev = finetune_linear(h.to(device), y.to(device), w.to(device), b.to(device), cfg, seed=0)
    assert dev.weight.device.type == device.type
    # the same draws and steps; only float summation order differs between the devices
    torch.testing.assert_close(dev.weight.cpu(), cpu.weight, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(dev.bias.cpu(), cpu.bias, rtol=1e-3, atol=1e-4)


def test_capture_and_gradtune_fit_on_a_cuda_model(device) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, 10, generator=g), torch.randint(0, 2, (200,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 200, 32)]  # CPU batches, moved per batch
    f_cpu, z_cpu, _ = capture_features(model, loader)
    model.to(device)
    f_dev, z_dev, y_dev = capture_features(model, loader)
    assert f_dev.device.type == "cpu"  # captured rows come back to the CPU
    torch.testing.assert_close(f_dev, f_cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_dev, z_cpu, rtol=1e-5, atol=1e-5)
    w0, b0 = model[2].weight.detach().cpu().clone(), model[2].bias.detach().cpu().clone()
    tuner = gradtune.GradTune(size=60, top_k=40, finetune=FinetuneConfig(epochs=5), seed=0).fit(model, loader)
    assert tuner.layer_ is model[2] and model[2].weight.device.type == device.type
    np.testing.assert_allclose(np.asarray(tuner.report_.norms), _closed_form(f_cpu, y_dev, w0, b0), rtol=2e-4)
    assert not torch.equal(model[2].weight.detach().cpu(), w0)  # fine-tuned in place


def test_torchrun_one_process_nccl_trains_a_tiny_resnet(tmp_path) -> None:
    worker = Path(__file__).with_name("_ddp_worker.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(worker), str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    got = json.loads((tmp_path / "worker.json").read_text())
    assert got["backend"] == ("gloo" if ON_CPU else "nccl") and got["world_size"] == 1
    assert got["all_reduce_ok"] and got["ddp_max_abs_diff"] < 1e-5
    ref = tiny_run(torch.device("cpu"), tmp_path / "ref")  # the same training on the CPU, no group
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=2e-3)
