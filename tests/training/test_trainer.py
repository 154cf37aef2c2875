"""Full-network trainer: config presets, schedules, sampling, hooks, checkpoints and exact resume."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradtune._validation import GradTuneInputError
from gradtune.data.base import GroupedDataset
from gradtune.models.checkpoint import load_checkpoint, load_model
from gradtune.models.classifier import Classifier, build_mlp_classifier
from gradtune.models.distributed import ShardedSampler
from gradtune.models.resnet import build_resnet
from gradtune.models.transforms import ImagePreprocess
from gradtune.objectives.sampling import inverse_frequency_weights
from gradtune.objectives.schedules import lr_factor
from gradtune.training.config import TABLE3_DATASETS, EpochEnd, TrainConfig
from gradtune.training.trainer import seeded_scope, train
from gradtune.workflows.train import CONFIG_DIR, load_run_config

torch.set_num_threads(1)


def tabular(n: int = 96, d: int = 6, seed: int = 0, minority: float = 0.25) -> GroupedDataset:
    """Imbalanced 2-class tabular data; the split puts everything in train."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < minority).astype(np.int64)
    attrs = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 2.0 * labels
    return GroupedDataset("toy", x, labels, attrs, 2 * labels + attrs, np.zeros(n), ["a", "b"],
                          ["s0", "s1"], ["g0", "g1", "g2", "g3"])


class DropoutMLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def dropout_model(seed: int, d: int = 6) -> Classifier:
    with seeded_scope(seed):
        return Classifier(DropoutMLP(d), nn.Linear(16, 2))


# ------------------------------------------------------------------------------ config
def test_table3_presets():
    wb = TrainConfig.preset("waterbirds")
    assert (wb.optimizer, wb.lr, wb.schedule, wb.batch_size, wb.weight_decay, wb.epochs) == (
        "sgd", 3e-3, "cosine", 32, 1e-4, 100)
    assert wb.sampler == "class_balanced"
    assert TrainConfig.preset("CelebA").batch_size == 100 and TrainConfig.preset("celeba").epochs == 20
    for name in ("multinli", "civilcomments"):
        c = TrainConfig.preset(name)
        assert (c.optimizer, c.lr, c.schedule, c.batch_size, c.weight_decay, c.epochs) == (
            "adamw", 1e-5, "linear", 16, 1e-4, 10)
    assert TrainConfig.preset("waterbirds", epochs=3).epochs == 3
    with pytest.raises(GradTuneInputError, match="known"):
        TrainConfig.preset("imagenet")


# The paper's Table 3 (ERM rows), typed from the paper: the packaged configs must hold these.
PAPER_TABLE3 = {
    "waterbirds": {"optimizer": "sgd", "lr": 3e-3, "schedule": "cosine", "batch_size": 32, "weight_decay": 1e-4,
                   "epochs": 100},
    "celeba": {"optimizer": "sgd", "lr": 3e-3, "schedule": "cosine", "batch_size": 100, "weight_decay": 1e-4,
               "epochs": 20},
    "civilcomments": {"optimizer": "adamw", "lr": 1e-5, "schedule": "linear", "batch_size": 16,
                      "weight_decay": 1e-4, "epochs": 10},
    "multinli": {"optimizer": "adamw", "lr": 1e-5, "schedule": "linear", "batch_size": 16, "weight_decay": 1e-4,
                 "epochs": 10},
}


def test_packaged_configs_hold_the_paper_values():
    assert sorted(TABLE3_DATASETS) == sorted(PAPER_TABLE3)
    for name, paper in PAPER_TABLE3.items():
        cfg = load_run_config(dataset=name)
        assert cfg["dataset"] == name
        erm = TrainConfig.from_dict(cfg["erm"])
        preset = TrainConfig.preset(name)
        for key, value in paper.items():
            assert getattr(erm, key) == value == getattr(preset, key), (name, key)
        assert erm.sampler == "class_balanced"
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.toml")) == sorted(PAPER_TABLE3)


@pytest.mark.parametrize("bad", [{"optimizer": "adam"}, {"lr": -1.0}, {"lr": 0.0}, {"batch_size": 0},
                                 {"sampler": "balanced"}, {"schedule": "step"}, {"epochs": 1.5},
                                 {"precision": "fp16"}])
def test_invalid_config_values(bad):
    with pytest.raises(GradTuneInputError):
        TrainConfig(**bad)


def test_unknown_config_key():
    with pytest.raises(GradTuneInputError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_lr_schedules():
    assert lr_factor(0, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, 100, "linear") == pytest.approx(0.75)
    assert lr_factor(99, 100, "constant") == 1.0
    assert lr_factor(0, 100, "linear", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(10, 100, "linear", warmup_steps=10) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- sampling
def test_class_balanced_sampler_is_balanced():
    labels = np.array([0] * 900 + [1] * 100)
    sampler = ShardedSampler(1000, inverse_frequency_weights(labels), 20000, seed=3)
    draws = labels[sampler.global_indices(0)]
    # Binomial(20000, 1/2): sd 0.0035; 5 sd tolerance.
    assert abs(draws.mean() - 0.5) < 0.018
    counts = np.bincount(sampler.global_indices(0), minlength=1000)
    assert counts[900:].mean() == pytest.approx(100.0, rel=0.1)   # 10000 draws over 100 rows
    assert counts[:900].mean() == pytest.approx(100 / 9, rel=0.1)


def test_group_balanced_sampler_is_balanced():
    groups = np.repeat([0, 1, 2, 3], [700, 200, 80, 20])
    sampler = ShardedSampler(1000, inverse_frequency_weights(groups), 40000, seed=0)
    freq = np.bincount(groups[sampler.global_indices(5)], minlength=4) / 40000
    np.testing.assert_allclose(freq, 0.25, atol=0.012)


def test_sampler_is_seeded_per_epoch_and_shards_cover_the_sequence():
    s = ShardedSampler(50, None, seed=1)
    a, b = s.global_indices(0), s.global_indices(1)
    assert sorted(a.tolist()) == list(range(50)) and not np.array_equal(a, b)
    assert np.array_equal(a, ShardedSampler(50, None, seed=1).global_indices(0))
    shards = [ShardedSampler(50, None, seed=1, rank=r, world_size=3) for r in range(3)]
    for sh in shards:
        sh.set_epoch(0)
    parts = [list(sh) for sh in shards]
    assert all(len(p) == 17 for p in parts)
    interleaved = [parts[j % 3][j // 3] for j in range(51)]
    assert interleaved[:50] == a.tolist() and interleaved[50] == a[0]


# ------------------------------------------------------------------------------ training
def _cfg(tmp_path: Path | None, **kw) -> TrainConfig:
    base = dict(optimizer="sgd", lr=0.05, schedule="cosine", batch_size=16, epochs=3, seed=7,
                progress=False, checkpoint_dir=str(tmp_path) if tmp_path else None)
    return TrainConfig(**{**base, **kw})


class Interrupt(RuntimeError):
    pass


def _stop_after(epoch: int):
    def cb(end: EpochEnd) -> None:
        if end.epoch == epoch:
            raise Interrupt(f"simulated crash after epoch {epoch}")
    return cb


@pytest.mark.parametrize("kind", ["mlp_dropout", "tiny_resnet_augmented"])
def test_resume_reaches_the_uninterrupted_weights(tmp_path, kind):
    if kind == "mlp_dropout":
        data = tabular()
        def make(seed):
            return dropout_model(seed)
        prep = None
        cfg_kw: dict = {}
    else:
        rng = np.random.default_rng(0)
        imgs = torch.from_numpy(rng.integers(0, 255, size=(24, 3, 20, 20), dtype=np.uint8))
        labels = np.arange(24) % 2
        data = GroupedDataset("img", imgs, labels, labels, labels, np.zeros(24), ["a", "b"], ["x", "y"],
                              ["g0", "g1"])
        def make(seed):
            with seeded_scope(seed):
                return build_resnet((1, 1, 1, 1), 2, width=4)
        prep = ImagePreprocess(size=16, resize_to=18)
        cfg_kw = {"batch_size": 8, "optimizer": "adamw", "lr": 1e-3, "schedule": "linear"}
    full = train(make(0), data, _cfg(tmp_path / "full", **cfg_kw), preprocess=prep)
    with pytest.raises(Interrupt):
        train(make(0), data, _cfg(tmp_path / "cut", **cfg_kw), preprocess=prep, callbacks=[_stop_after(1)])
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = train(make(123), data, _cfg(tmp_path / "cut", **cfg_kw), preprocess=prep)  # init is overwritten
    assert resumed.resumed_from == 1 and len(resumed.history) == 3
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in full.history] == pytest.approx([h["loss"] for h in resumed.history], rel=1e-6)
    # A finished run returns at once.
    again = train(make(5), data, _cfg(tmp_path / "cut", **cfg_kw), preprocess=prep)
    assert again.resumed_from == 3
    assert (tmp_path / "cut" / "done.json").exists()


def test_global_rng_is_left_alone(tmp_path):
    state = torch.get_rng_state()
    train(dropout_model(0), tabular(), _cfg(None, epochs=1))
    assert torch.equal(state, torch.get_rng_state())


def test_resume_guards(tmp_path):
    data = tabular()
    train(build_mlp_classifier(6, 2), data, _cfg(tmp_path, epochs=1))
    with pytest.raises(GradTuneInputError, match="already exists"):
        train(build_mlp_classifier(6, 2), data, _cfg(tmp_path, epochs=1), resume=False)
    with pytest.raises(GradTuneInputError, match="lr: checkpoint 0.05 vs now 0.1"):
        train(build_mlp_classifier(6, 2), data, _cfg(tmp_path, epochs=1, lr=0.1))


def test_checkpoint_contents_and_reload(tmp_path):
    data = tabular()
    result = train(build_mlp_classifier(6, 2, hidden=(8,)), data, _cfg(tmp_path, epochs=2, keep_epochs=(1,)),
                   meta={"dataset": "toy"})
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "history", "sampler", "spec"} <= set(raw)
    assert raw["sampler"] == {"seed": 7, "epoch": 2} and raw["meta"]["dataset"] == "toy"
    assert load_checkpoint(tmp_path / "epoch_001.pt")["epoch"] == 1
    model = load_model(tmp_path / "last.pt")
    x = torch.from_numpy(data.inputs[:5])
    torch.testing.assert_close(model(x), result.model(x))
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GradTuneInputError, match="could not read"):
        load_checkpoint(tmp_path / "bad.pt")


class CountingLoss:
    """A stateful loss (like Group DRO's) recording what the trainer passes it."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows: list[int] = []
        self.groups_seen: set[int] = set()

    def __call__(self, logits, labels, groups, indices):
        self.calls += 1
        self.rows += indices.tolist()
        self.groups_seen |= set(groups.tolist())
        return nn.functional.cross_entropy(logits, labels)

    def state_dict(self):
        return {"calls": torch.tensor(self.calls)}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


def test_pluggable_loss_and_sample_weights(tmp_path):
    data = tabular(n=64)
    weights = np.zeros(64)
    weights[:8] = 1.0  # only the first 8 rows can be drawn (like an upsampled error set)
    loss = CountingLoss()
    train(build_mlp_classifier(6, 2), data, _cfg(tmp_path, epochs=2, samples_per_epoch=32),
          loss_fn=loss, sample_weights=weights)
    assert loss.calls == 4 and set(loss.rows) <= set(range(8)) and len(loss.rows) == 64
    assert load_checkpoint(tmp_path / "last.pt")["loss_fn"]["calls"].item() == 4
    with pytest.raises(GradTuneInputError, match="one weight per training row"):
        train(build_mlp_classifier(6, 2), data, _cfg(None), sample_weights=np.ones(3))


def test_group_dro_loss_plugs_in_and_resumes(tmp_path):
    from gradtune.objectives.group_dro import GroupDROLoss

    data = tabular(n=64)
    counts = np.bincount(data.groups, minlength=4)
    cfg = dict(epochs=2, sampler="group_balanced", weight_decay=0.1)

    def make_loss():
        return GroupDROLoss(counts, eta=0.01, adj=np.zeros(4))

    def model():
        with seeded_scope(0):
            return build_mlp_classifier(6, 2)

    full_loss = make_loss()
    full = train(model(), data, _cfg(tmp_path / "a", **cfg), loss_fn=full_loss)
    with pytest.raises(Interrupt):
        train(model(), data, _cfg(tmp_path / "b", **cfg), loss_fn=make_loss(),
              callbacks=[_stop_after(1)])
    resumed_loss = make_loss()
    resumed = train(model(), data, _cfg(tmp_path / "b", **cfg), loss_fn=resumed_loss)
    assert not torch.allclose(full_loss.q, torch.full((4,), 0.25))
    torch.testing.assert_close(resumed_loss.q, full_loss.q)
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_non_finite_loss_is_reported():
    def nan_loss(logits, labels, groups, indices):
        return logits.sum() * float("nan")

    with pytest.raises(GradTuneInputError, match="lower the learning rate"):
        train(build_mlp_classifier(6, 2), tabular(), _cfg(None), loss_fn=nan_loss)


def test_train_indices_and_empty_split():
    data = tabular()
    empty = GroupedDataset("e", data.inputs, data.labels, data.attributes, data.groups,
                           np.ones(len(data)), ["a", "b"], ["s0", "s1"], ["g0", "g1", "g2", "g3"])
    with pytest.raises(GradTuneInputError, match="empty"):
        train(build_mlp_classifier(6, 2), empty, _cfg(None))
    res = train(build_mlp_classifier(6, 2), empty, _cfg(None, epochs=1), indices=np.arange(20))
    assert len(res.history) == 1


# ------------------------------------------------------------------------------ CLI
def fake_registry(monkeypatch, data: GroupedDataset) -> None:
    mod = types.ModuleType("gradtune.data.registry")
    mod.load_dataset = lambda name, root: data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gradtune.data.registry", mod)


def image_dataset(n: int = 12) -> GroupedDataset:
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.integers(0, 255, size=(n, 3, 24, 24), dtype=np.uint8))
    labels = np.arange(n) % 2
    return GroupedDataset("waterbirds", imgs, labels, labels, 2 * labels + labels, np.arange(n) % 3,
                          ["landbird", "waterbird"], ["land", "water"], ["g0", "g1", "g2", "g3"])


CLI_CONFIG = """
[model]
arch = "resnet"
layers = [1, 1, 1, 1]
width = 4
[preprocess]
size = 32
resize_to = 36
[erm]
optimizer = "sgd"
lr = 1e-3
batch_size = 4
epochs = 1
"""


def run_command(module, argv: list[str]) -> int:
    """Parse ``argv`` with one command's own parser and run it (independent of cli.COMMANDS)."""
    parser = argparse.ArgumentParser(prog="gradtune")
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_train_command_end_to_end(tmp_path, monkeypatch):
    from gradtune.commands import train as train_cmd

    fake_registry(monkeypatch, image_dataset())
    cfg = tmp_path / "run.toml"
    cfg.write_text(CLI_CONFIG)
    args = ["train", "--dataset", "waterbirds", "--root", str(tmp_path), "--config", str(cfg),
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert run_command(train_cmd, args) == 0
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["epochs"] == 1 and len(summary["history"]) == 1
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["spec"]["arch"] == "resnet" and ckpt["meta"]["preprocess"]["size"] == 32
    assert ckpt["meta"]["dataset"] == "waterbirds"
    with pytest.raises(GradTuneInputError, match="--resume"):
        run_command(train_cmd, args)
    assert run_command(train_cmd, args + ["--resume"]) == 0  # finished: returns at once
    with pytest.raises(GradTuneInputError, match="epochs: checkpoint 1 vs now 2"):
        run_command(train_cmd, args + ["--resume", "--epochs", "2"])


def test_train_command_rejects_bad_model_config(tmp_path, monkeypatch):
    from gradtune.commands import train as train_cmd

    fake_registry(monkeypatch, image_dataset())
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\narch = "vgg"\n[erm]\nepochs = 1\n')
    with pytest.raises(GradTuneInputError, match="arch must be one of"):
        run_command(train_cmd, ["train", "--dataset", "x", "--root", str(tmp_path), "--config", str(cfg),
                                "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="known"):
        load_run_config(dataset="imagenet")


def test_lr_factor_is_the_fine_tuning_schedule_with_base_one():
    from gradtune.objectives.schedules import SCHEDULE_CODE, scheduled_lr

    for total in (1, 7, 100):
        for name, code in SCHEDULE_CODE.items():
            for step in range(total + 1):
                assert lr_factor(step, total, name) == pytest.approx(scheduled_lr(step, total, 1.0, code),
                                                                     rel=1e-14, abs=1e-15)
