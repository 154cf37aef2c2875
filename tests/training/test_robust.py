"""Full-network JTT and Group DRO on the trainer: error set, upsampling, shared init, resume,
the online group-weight update, group-balanced sampling, and the ``gradtune train`` flags."""

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
from gradtune.models.checkpoint import load_checkpoint
from gradtune.models.classifier import build_mlp_classifier
from gradtune.models.preprocess import TensorPreprocess
from gradtune.objectives.group_dro import GroupDROLoss
from gradtune.training.config import EpochEnd, TrainConfig
from gradtune.training.robust import _RankSyncedGroupDROLoss, train_group_dro, train_jtt
from gradtune.training.trainer import seeded_scope, train
from gradtune.workflows.train import load_run_config

torch.set_num_threads(1)
N_TRAIN, N_VAL = 200, 20


# ------------------------------------------------------------------------------ fixtures
def spurious_data(seed: int = 0) -> GroupedDataset:
    """2-D rows: x0 a weak core feature of y, x1 a strong clean feature of the spurious a.

    a == y for 90% of the rows, so ERM leans on x1 and misclassifies the minority groups
    (a != y). The last N_VAL rows are validation (never trained on).
    """
    n = N_TRAIN + N_VAL
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.9, y, 1 - y)
    x = np.stack([(2 * y - 1) * 0.7 + rng.normal(size=n), (2 * a - 1) * 2.0 + 0.3 * rng.normal(size=n)], 1)
    split = np.r_[np.zeros(N_TRAIN), np.ones(N_VAL)]
    return GroupedDataset("toy", x.astype(np.float32), y, a, 2 * y + a, split, ["c0", "c1"], ["a0", "a1"],
                          ["g0", "g1", "g2", "g3"])


class Factory:
    """Builds MLPs with *different* random weights on every call (a factory with a fresh
    random head), and snapshots each model's weights at its first forward pass."""

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.models: list[nn.Module] = []
        self.raw: list[dict[str, torch.Tensor]] = []
        self.first_forward: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self) -> nn.Module:
        k = len(self.models)
        gen = torch.Generator().manual_seed(1000 * self.base + k)
        model = build_mlp_classifier(2, 2, hidden=(8,))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
        self.raw.append({n: v.clone() for n, v in model.state_dict().items()})

        def snapshot(module: nn.Module, args: tuple) -> None:
            self.first_forward.setdefault(k, {n: v.detach().clone() for n, v in module.state_dict().items()})

        model.register_forward_pre_hook(snapshot)
        self.models.append(model)
        return model


class RecordingPreprocess(TensorPreprocess):
    """Tensor inputs; remembers which dataset row each training-mode sample came from."""

    def __init__(self, data: GroupedDataset) -> None:
        self.row_of = {np.asarray(x).tobytes(): i for i, x in enumerate(data.inputs)}
        assert len(self.row_of) == len(data)
        self.train_rows: list[int] = []

    def __call__(self, raw, train=False, generator=None):
        if train:
            self.train_rows.append(self.row_of[np.asarray(raw).tobytes()])
        return super().__call__(raw, train, generator)


def cfg(**kw) -> TrainConfig:
    base = dict(optimizer="sgd", lr=0.1, schedule="cosine", batch_size=32, epochs=4, seed=0, progress=False)
    return TrainConfig(**{**base, **kw})


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Interrupt(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- JTT
def test_jtt_error_set_upsampling_and_shared_init(tmp_path):
    data, lam, T = spurious_data(), 5, 2
    factory, prep = Factory(), RecordingPreprocess(spurious_data())
    res = train_jtt(factory, data, cfg(), T=T, lam=lam, out_dir=tmp_path, seed=0, preprocess=prep)
    train_rows = np.arange(N_TRAIN)
    np.testing.assert_array_equal(res.train_rows, train_rows)

    # Stage 1 stopped after epoch T of its 4-epoch schedule.
    s1 = load_checkpoint(tmp_path / "stage1" / "last.pt")
    assert s1["epoch"] == T and s1["config"]["epochs"] == 4 and not (tmp_path / "stage1" / "done.json").exists()

    # Error set = the stage-1 model's mistakes on the train rows, counted directly (eval mode).
    model = build_mlp_classifier(2, 2, hidden=(8,))
    model.load_state_dict(s1["model"])
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(data.inputs[train_rows])).argmax(1).numpy()
    mistakes = train_rows[pred != data.labels[train_rows]]
    assert 0 < mistakes.size < N_TRAIN // 4
    np.testing.assert_array_equal(res.error_rows, mistakes)
    saved = json.loads((tmp_path / "error_set.json").read_text())
    assert saved["error_rows"] == mistakes.tolist() and saved["T"] == T and saved["n_train"] == N_TRAIN
    # The minority groups (a != y: groups 1 and 2) dominate the error set.
    assert sum(saved["error_group_counts"][g] for g in (1, 2)) > mistakes.size / 2

    # Stage 2's list: every error row lambda times, every other train row once, no val row.
    counts = np.bincount(res.upsampled_rows, minlength=len(data))
    expected = np.zeros(len(data), dtype=np.int64)
    expected[train_rows] = 1
    expected[mistakes] = lam
    np.testing.assert_array_equal(counts, expected)
    # ... and what the trainer drew in stage 2's last epoch (a shuffled pass) is that list.
    drawn = np.array(prep.train_rows[-res.upsampled_rows.size:])
    np.testing.assert_array_equal(np.bincount(drawn, minlength=len(data)), expected)
    meta2 = load_checkpoint(tmp_path / "stage2" / "last.pt")["meta"]
    assert meta2["jtt_lambda"] == lam and meta2["uses_group_labels"] is False
    assert load_checkpoint(tmp_path / "stage2" / "last.pt")["config"]["sampler"] == "uniform"

    # Both stages started from init.pt, although the factory gives new weights on each call
    # (call 0: init.pt, call 1: stage 1, call 2: stage 2).
    assert len(factory.models) == 3 and not states_equal(factory.raw[1], factory.raw[2])
    init = load_checkpoint(tmp_path / "init.pt")["model"]
    assert states_equal(init, factory.raw[0])
    assert states_equal(factory.first_forward[1], init) and states_equal(factory.first_forward[2], init)
    assert res.model is factory.models[2]


def test_jtt_resumes_in_stage2(tmp_path):
    data = spurious_data()
    full = train_jtt(Factory(), data, cfg(), T=2, lam=4, out_dir=tmp_path / "full", seed=3)

    def crash(end: EpochEnd) -> None:
        if end.checkpoint is not None and end.checkpoint.parent.name == "stage2" and end.epoch == 2:
            raise Interrupt("simulated crash in stage 2")

    with pytest.raises(Interrupt):
        train_jtt(Factory(), data, cfg(), T=2, lam=4, out_dir=tmp_path / "cut", seed=3, callbacks=[crash])
    assert load_checkpoint(tmp_path / "cut" / "stage2" / "last.pt")["epoch"] == 2
    with pytest.raises(GradTuneInputError, match="already holds a JTT run"):
        train_jtt(Factory(), data, cfg(), T=2, lam=4, out_dir=tmp_path / "cut", seed=3, resume=False)
    with pytest.raises(GradTuneInputError, match="jtt_lambda"):
        train_jtt(Factory(), data, cfg(), T=2, lam=7, out_dir=tmp_path / "cut", seed=3)

    again = Factory(base=9)  # other weights: the saved init, error set and stage 2 are reused
    resumed = train_jtt(again, data, cfg(), T=2, lam=4, out_dir=tmp_path / "cut", seed=3)
    assert len(again.models) == 1  # only the stage-2 model: stage 1 is not retrained
    assert resumed.stage2.resumed_from == 2 and len(resumed.stage2.history) == 4
    np.testing.assert_array_equal(resumed.error_rows, full.error_rows)
    assert states_equal(resumed.model.state_dict(), full.model.state_dict())


def test_jtt_stage1_is_the_erm_run_prefix_and_reads_no_group_labels(tmp_path):
    data = spurious_data()

    def factory() -> nn.Module:  # deterministic under train_jtt's seeded_scope(seed)
        return build_mlp_classifier(2, 2, hidden=(8,))

    # A plain ERM run with the same settings, keeping its epoch-2 checkpoint.
    with seeded_scope(5):
        erm_model = factory()
    train(erm_model, data, cfg(seed=5, keep_epochs=(2,), checkpoint_dir=str(tmp_path / "erm")))
    own = train_jtt(factory, data, cfg(), T=2, lam=3, out_dir=tmp_path / "own", seed=5)
    reused = train_jtt(factory, data, cfg(), T=2, lam=3, out_dir=tmp_path / "reuse", seed=5,
                       erm_checkpoint=tmp_path / "erm" / "epoch_002.pt")
    assert not (tmp_path / "reuse" / "stage1").exists()
    np.testing.assert_array_equal(own.error_rows, reused.error_rows)
    assert states_equal(own.model.state_dict(), reused.model.state_dict())
    with pytest.raises(GradTuneInputError, match="epoch 4, not T=2"):
        train_jtt(factory, data, cfg(), T=2, lam=3, out_dir=tmp_path / "bad", seed=5,
                  erm_checkpoint=tmp_path / "erm" / "last.pt")
    with pytest.raises(GradTuneInputError, match="beyond the stage-1 schedule"):
        train_jtt(factory, data, cfg(), T=5, lam=3, out_dir=tmp_path / "bad2", seed=5)

    # Scrambled group labels change nothing: JTT never reads them.
    scrambled = spurious_data()
    scrambled.groups = np.random.default_rng(1).permutation(scrambled.groups)
    blind = train_jtt(factory, scrambled, cfg(), T=2, lam=3, out_dir=tmp_path / "blind", seed=5)
    np.testing.assert_array_equal(blind.error_rows, own.error_rows)
    assert states_equal(blind.model.state_dict(), own.model.state_dict())


# ---------------------------------------------------------------------------- Group DRO
def test_group_dro_q_matches_hand_computed_update(tmp_path):
    data, eta, adj = spurious_data(), 0.05, np.array([0.0, 1.0, 2.0, 0.5])
    with seeded_scope(0):
        model = build_mlp_classifier(2, 2, hidden=(8,))
    step_logits: list[np.ndarray] = []
    model.register_forward_hook(lambda m, a, out: step_logits.append(out.detach().double().numpy()))
    prep = RecordingPreprocess(data)
    res = train_group_dro(model, data, cfg(epochs=1, batch_size=16, checkpoint_dir=str(tmp_path)),
                          eta=eta, adj=adj, preprocess=prep)

    # Replay the epoch by hand: per-group mean cross-entropy of each step's logits, then
    # q <- q * exp(eta * (loss_g + C_g / sqrt(n_g))), normalized.
    n_g = np.bincount(data.groups[:N_TRAIN], minlength=4).astype(np.float64)
    np.testing.assert_array_equal(res.group_counts, n_g)
    rows = np.array(prep.train_rows)
    assert rows.size == N_TRAIN and len(step_logits) == int(np.ceil(N_TRAIN / 16))
    q, start = np.full(4, 0.25), 0
    for z in step_logits:
        r = rows[start:start + z.shape[0]]
        start += z.shape[0]
        m = z.max(1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
        ce = -logp[np.arange(r.size), data.labels[r]]
        g = data.groups[r]
        loss_g = np.array([ce[g == k].mean() if (g == k).any() else 0.0 for k in range(4)])
        q = q * np.exp(eta * (loss_g + adj / np.sqrt(n_g)))
        q /= q.sum()
    assert np.abs(q - 0.25).max() > 1e-3  # q moved
    np.testing.assert_allclose(res.q, q, rtol=1e-5, atol=1e-7)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    np.testing.assert_allclose(ckpt["loss_fn"]["q"].numpy(), q, rtol=1e-5, atol=1e-7)
    assert ckpt["meta"]["uses_group_labels"] is True and ckpt["config"]["sampler"] == "group_balanced"
    with pytest.raises(GradTuneInputError, match="eta=0.05"):
        train_group_dro(model, data, cfg(epochs=2, batch_size=16, checkpoint_dir=str(tmp_path)), eta=0.01, adj=adj)
    with pytest.raises(GradTuneInputError, match="one per group"):
        train_group_dro(model, data, cfg(epochs=1), adj=[1.0, 2.0])


def test_group_dro_samples_groups_uniformly():
    data = spurious_data()  # group sizes about 90 / 10 / 10 / 90
    prep = RecordingPreprocess(data)
    with seeded_scope(0):
        model = build_mlp_classifier(2, 2, hidden=(8,))
    # Given a class-balanced config, Group DRO still samples group-balanced.
    train_group_dro(model, data, cfg(epochs=1, batch_size=400, samples_per_epoch=4000, sampler="class_balanced"),
                    preprocess=prep)
    freq = np.bincount(data.groups[np.array(prep.train_rows)], minlength=4) / 4000
    assert np.abs(np.bincount(data.groups[:N_TRAIN]) / N_TRAIN - 0.25).max() > 0.15  # imbalanced data
    np.testing.assert_allclose(freq, 0.25, atol=0.035)  # binomial sd 0.0068; 5 sd
    assert max(prep.train_rows) < N_TRAIN  # validation rows never drawn


def test_rank_synced_loss_equals_the_global_batch():
    """Two simulated ranks: same q as one process, and DDP's averaged gradient is the global one."""
    rng = np.random.default_rng(0)
    z = torch.tensor(rng.normal(size=(12, 2)), requires_grad=True)
    y = torch.tensor(rng.integers(0, 2, 12))
    g = torch.tensor([0, 1, 2, 3, 0, 0, 1, 3, 3, 0, 2, 0])
    counts = np.array([50, 10, 5, 35])
    ref = GroupDROLoss(counts, eta=0.1, adj=1.0)
    ref_loss = ref(z, y, g)
    (ref_grad,) = torch.autograd.grad(ref_loss, z)

    def local_stats(sl: slice) -> torch.Tensor:
        per = nn.functional.cross_entropy(z[sl], y[sl], reduction="none").detach()
        return torch.cat([torch.zeros(4, dtype=per.dtype).index_add(0, g[sl], per),
                          torch.bincount(g[sl], minlength=4).to(per.dtype)])

    halves = [slice(0, 6), slice(6, 12)]
    grads = []
    for r, sl in enumerate(halves):
        other = local_stats(halves[1 - r])
        loss = _RankSyncedGroupDROLoss(counts, eta=0.1, adj=1.0, world_size=2, reduce=lambda t, o=other: t + o)
        value = loss(z[sl], y[sl], g[sl])
        torch.testing.assert_close(loss.q, ref.q)
        grads.append(torch.autograd.grad(value, z)[0])
    torch.testing.assert_close((grads[0] + grads[1]) / 2, ref_grad)


# ---------------------------------------------------------------------------------- CLI
CLI_CONFIG = """
[model]
arch = "resnet"
layers = [1, 1, 1, 1]
width = 4
[preprocess]
size = 16
resize_to = 18
[erm]
optimizer = "sgd"
lr = 1e-3
batch_size = 4
epochs = 1
[jtt]
epoch = 1
lambda = 3
[jtt.stage1]
epochs = 2
[group_dro]
eta = 0.01
adj = 0.0
[group_dro.train]
weight_decay = 0.1
"""


def image_data(n: int = 12) -> GroupedDataset:
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.integers(0, 255, size=(n, 3, 20, 20), dtype=np.uint8))
    labels = np.arange(n) % 2
    attrs = (np.arange(n) // 2) % 2
    return GroupedDataset("waterbirds", imgs, labels, attrs, 2 * labels + attrs, np.zeros(n),
                          ["landbird", "waterbird"], ["land", "water"], ["g0", "g1", "g2", "g3"])


def run_cli(monkeypatch, argv: list[str]) -> int:
    from gradtune.commands import train as train_cmd

    registry = types.ModuleType("gradtune.data.registry")
    registry.load_dataset = lambda name, root: image_data()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gradtune.data.registry", registry)
    parser = argparse.ArgumentParser(prog="gradtune")
    train_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_train_command_jtt_and_group_dro(tmp_path, monkeypatch):
    conf = tmp_path / "run.toml"
    conf.write_text(CLI_CONFIG)
    base = ["train", "--dataset", "waterbirds", "--root", str(tmp_path), "--config", str(conf), "--no-progress"]

    jtt = base + ["--out", str(tmp_path / "jtt"), "--method", "jtt", "--jtt-lambda", "4"]
    assert run_cli(monkeypatch, jtt) == 0
    summary = json.loads((tmp_path / "jtt" / "train.json").read_text())
    assert summary["method"] == "jtt" and (summary["jtt_epoch"], summary["jtt_lambda"]) == (1, 4)
    assert summary["n_upsampled"] == 12 + 3 * summary["n_errors"]
    assert summary["config"]["sampler"] == "uniform" and summary["stage1_config"]["epochs"] == 2
    assert load_checkpoint(tmp_path / "jtt" / "stage1" / "last.pt")["epoch"] == 1
    stage2 = load_checkpoint(tmp_path / "jtt" / "stage2" / "last.pt")
    assert stage2["meta"]["jtt_lambda"] == 4 and stage2["meta"]["dataset"] == "waterbirds"
    with pytest.raises(GradTuneInputError, match="--resume"):
        run_cli(monkeypatch, jtt)
    assert run_cli(monkeypatch, jtt + ["--resume"]) == 0  # finished: returns at once

    dro = base + ["--out", str(tmp_path / "dro"), "--method", "group-dro", "--dro-adj", "2"]
    assert run_cli(monkeypatch, dro) == 0
    summary = json.loads((tmp_path / "dro" / "train.json").read_text())
    assert summary["method"] == "group-dro" and summary["dro_adj"] == 2.0 and len(summary["q"]) == 4
    ckpt = load_checkpoint(tmp_path / "dro" / "checkpoints" / "last.pt")
    assert ckpt["config"]["sampler"] == "group_balanced" and ckpt["config"]["weight_decay"] == 0.1
    assert ckpt["loss_fn"]["adj"] == 2.0 and ckpt["loss_fn"]["eta"] == 0.01

    conf.write_text(CLI_CONFIG.split("[jtt]")[0])
    with pytest.raises(GradTuneInputError, match="--jtt-epoch"):
        run_cli(monkeypatch, base + ["--out", str(tmp_path / "x"), "--method", "jtt"])


def test_packaged_configs_hold_the_baselines_settings():
    jtt = {"waterbirds": (60, 100), "celeba": (1, 50), "multinli": (2, 4), "civilcomments": (2, 6)}
    for name, (T, lam) in jtt.items():
        conf = load_run_config(dataset=name)
        assert (conf["jtt"]["epoch"], conf["jtt"]["lambda"]) == (T, lam)
        stage1 = TrainConfig.from_dict({**conf["erm"], **conf["jtt"]["stage1"]})
        stage2 = TrainConfig.from_dict({**conf["erm"], **conf["jtt"]["stage2"]})
        assert T <= stage1.epochs and stage2.sampler == "uniform"
        assert conf["group_dro"]["eta"] == 0.01 and conf["group_dro"]["adj"] == 0.0
        dro = TrainConfig.from_dict({**conf["erm"], **conf["group_dro"]["train"]})
        assert dro.sampler == "group_balanced"
    for name, wd in (("waterbirds", 1.0), ("celeba", 0.1)):
        dro = TrainConfig.from_dict({**load_run_config(dataset=name)["erm"],
                                     **load_run_config(dataset=name)["group_dro"]["train"]})
        assert (dro.optimizer, dro.lr, dro.weight_decay) == ("sgd", 1e-5, wd)


def test_cli_config_tables_are_checked(tmp_path, monkeypatch):
    conf = tmp_path / "run.toml"
    conf.write_text(CLI_CONFIG + "\n[jtt.extra]\nx = 1\n")
    with pytest.raises(GradTuneInputError, match=r"unknown \[jtt\] setting"):
        run_cli(monkeypatch, ["train", "--dataset", "waterbirds", "--root", str(tmp_path), "--config", str(conf),
                              "--out", str(tmp_path / "o"), "--method", "jtt"])
    assert Path(tmp_path / "o").exists() is False
