"""DDP support: a 2-process torchrun (gloo, CPU) run matches one process.

The test launches this very file under ``torchrun --nproc_per_node=2``; the code under
``if __name__ == "__main__"`` is the worker.
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

from gradtune._validation import GradTuneInputError
from gradtune.data.base import GroupedDataset
from gradtune.models import distributed as gdist
from gradtune.models.classifier import build_mlp_classifier
from gradtune.training.config import TrainConfig
from gradtune.training.trainer import seeded_scope, train

N, D, BATCH, EPOCHS = 64, 6, 8, 2


def toy_data() -> GroupedDataset:
    rng = np.random.default_rng(0)
    labels = (rng.random(N) < 0.3).astype(np.int64)
    x = rng.normal(size=(N, D)).astype(np.float32)
    x[:, 0] += 1.5 * labels
    return GroupedDataset("toy", x, labels, np.zeros(N), labels, np.zeros(N), ["a", "b"], ["s"],
                          ["g0", "g1"])


def toy_model():
    with seeded_scope(0):
        return build_mlp_classifier(D, 2, hidden=(12,))


def run_all(out: Path | None = None) -> dict:
    """Extraction then class-balanced training; identical code for 1 and 2 processes."""
    from gradtune.embeddings.extract import encode

    data = toy_data()
    model = toy_model()
    rows = np.arange(N - 3)[::-1].copy()  # an odd count (padded shards) in reversed order
    enc = encode(model, data, rows, batch_size=5)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, schedule="cosine", batch_size=BATCH, epochs=EPOCHS,
                      seed=3, progress=False, checkpoint_dir=str(out / "ck") if out else None)
    result = train(model, data, cfg)
    return {"features": None if enc is None else enc.features, "logits": None if enc is None else enc.logits,
            "history": result.history,
            "weights": {k: v.numpy() for k, v in result.model.state_dict().items()}}


# ------------------------------------------------------------------------ unit tests
def test_shard_positions_partition_the_sequence():
    for n, k in [(10, 3), (9, 3), (1, 2), (5, 1)]:
        parts = [gdist.shard_positions(n, r, k) for r in range(k)]
        assert len({len(p) for p in parts}) == 1
        assert set(np.concatenate(parts).tolist()) == set(range(n))


def test_single_process_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = gdist.init_distributed()
    assert (info.rank, info.world_size, info.is_main, info.is_distributed) == (0, 1, True, False)
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(gdist.gather_rows(t, 2), t[:2])
    assert torch.equal(gdist.all_reduce_sum(t), t)
    gdist.barrier()
    gdist.cleanup()


def test_torchrun_env_must_be_complete(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(GradTuneInputError, match="torchrun"):
        gdist.init_distributed()


def test_batch_must_split_over_ranks(monkeypatch):
    monkeypatch.setattr(gdist, "get_dist_info", lambda: gdist.DistInfo(0, 3, 0, "gloo"))
    with pytest.raises(GradTuneInputError, match="divisible"):
        train(toy_model(), toy_data(), TrainConfig(batch_size=8, epochs=1, progress=False))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    # Two workers with the environment torchrun gives them (RANK, LOCAL_RANK, WORLD_SIZE,
    # MASTER_ADDR, MASTER_PORT); started directly to spare the launcher's own start-up
    # on small CI machines. `torchrun --nproc_per_node=2 this_file.py OUT` runs the same.
    src = Path(gdist.__file__).resolve().parents[2]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
            "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(tmp_path)],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    got = np.load(tmp_path / "ddp.npz")
    history = json.loads((tmp_path / "history.json").read_text())

    torch.set_num_threads(1)
    ref = run_all()
    # Extraction: identical rows in the original order.
    np.testing.assert_allclose(got["features"], ref["features"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-6, atol=1e-6)
    # Training: each global batch of 8 is split 4 + 4 over the ranks and DDP averages the
    # gradients, so losses and weights match one process up to float summation order.
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in ref["history"]],
                               rtol=1e-5)
    for k, v in ref["weights"].items():
        np.testing.assert_allclose(got[f"w_{k}"], v, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ck" / "last.pt").exists()


if __name__ == "__main__":  # torchrun worker
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    info = gdist.init_distributed()
    assert info.world_size == 2 and info.backend == "gloo", info
    res = run_all(out_dir)
    if info.is_main:
        np.savez(out_dir / "ddp.npz", features=res["features"], logits=res["logits"],
                 **{f"w_{k}": v for k, v in res["weights"].items()})
        (out_dir / "history.json").write_text(json.dumps(res["history"]))
    else:
        assert res["features"] is None
    gdist.barrier()
    gdist.cleanup()
