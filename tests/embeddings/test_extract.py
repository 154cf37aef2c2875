"""Feature extraction: hooked features/logits, order, eval mode, the bundle on disk, the embed command."""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from gradtune._validation import GradTuneInputError
from gradtune.data.base import GroupedDataset
from gradtune.embeddings.bundle import load_bundle
from gradtune.embeddings.extract import encode, extract_embeddings, save_embeddings
from gradtune.models.classifier import Classifier, build_mlp_classifier, find_last_linear
from gradtune.models.resnet import build_resnet
from gradtune.models.transforms import ImagePreprocess
from gradtune.training.config import TrainConfig
from gradtune.training.trainer import seeded_scope, train

torch.set_num_threads(1)


def tabular(n: int = 37, d: int = 5) -> GroupedDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    labels = np.arange(n) % 3
    attrs = (np.arange(n) // 3) % 2
    return GroupedDataset("toy", x, labels, attrs, 2 * labels + attrs, np.arange(n) % 3,
                          ["a", "b", "c"], ["s0", "s1"], [f"g{i}" for i in range(6)])


def mlp(d: int = 5, c: int = 3) -> Classifier:
    with seeded_scope(0):
        return build_mlp_classifier(d, c, hidden=(16, 8))


def test_features_are_the_head_input_in_row_order():
    data = tabular()
    model = mlp()
    rows = np.array([30, 2, 17, 5, 36, 0, 11])
    enc = encode(model, data, rows, batch_size=3)
    x = torch.from_numpy(data.inputs[rows])
    with torch.no_grad():
        np.testing.assert_allclose(enc.features, model.features(x).numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(enc.logits, model(x).numpy(), rtol=1e-6, atol=1e-6)
    assert enc.features.dtype == np.float32 and np.array_equal(enc.indices, rows)


def test_bundle_fields_and_round_trip(tmp_path):
    data = tabular()
    model = mlp()
    bundle = extract_embeddings(model, data, batch_size=8)
    assert bundle.features.shape == (37, 8) and bundle.logits.shape == (37, 3)
    head = find_last_linear(model)
    np.testing.assert_array_equal(bundle.head_weight, head.weight.detach().numpy())
    np.testing.assert_array_equal(bundle.head_bias, head.bias.detach().numpy())
    assert bundle.split[:4].tolist() == ["train", "val", "test", "train"]
    np.testing.assert_array_equal(bundle.groups, data.groups)
    np.testing.assert_array_equal(bundle.attributes, data.attributes)
    assert bundle.class_names == ["a", "b", "c"] and bundle.n_classes == 3
    path = save_embeddings(model, data, tmp_path / "emb.npz", batch_size=8)
    loaded = load_bundle(path)
    np.testing.assert_array_equal(loaded.features, bundle.features)
    np.testing.assert_array_equal(loaded.split, bundle.split)
    halves = loaded.resolve_heldout(seed=0)
    assert halves.has_split("heldout") and halves.has_split("selection")
    assert not list(tmp_path.glob("*.tmp"))


def test_eval_mode_is_used_and_restored():
    rng = np.random.default_rng(1)
    imgs = torch.from_numpy(rng.integers(0, 255, size=(10, 3, 20, 20), dtype=np.uint8))
    labels = np.arange(10) % 2
    data = GroupedDataset("img", imgs, labels, labels, labels, np.zeros(10), ["a", "b"], ["x", "y"],
                          ["g0", "g1"])
    with seeded_scope(0):
        model = build_resnet((1, 1, 1, 1), 2, width=4)
    prep = ImagePreprocess(size=16, resize_to=18)
    train(model, data, TrainConfig(epochs=1, batch_size=5, lr=0.01, progress=False), preprocess=prep)
    model.train()
    enc = encode(model, data, preprocess=prep, batch_size=4)
    assert model.training  # restored
    x = torch.stack([prep(imgs[i]) for i in range(10)])
    with torch.no_grad():
        expected = model.eval().features(x).numpy()
    np.testing.assert_allclose(enc.features, expected, rtol=1e-5, atol=1e-5)


class NoLinear(nn.Module):
    def forward(self, x):
        return x


class UnusedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return x[:, :2]


def test_errors():
    data = tabular()
    with pytest.raises(GradTuneInputError, match="no torch.nn.Linear"):
        encode(NoLinear(), data)
    with pytest.raises(GradTuneInputError, match="not called"):
        encode(UnusedHead(), data)
    with pytest.raises(GradTuneInputError, match="indices must be in"):
        encode(mlp(), data, np.array([0, 99]))
    with pytest.raises(GradTuneInputError, match="batch_size"):
        encode(mlp(), data, batch_size=0)


def _run(module, argv):
    parser = argparse.ArgumentParser(prog="gradtune")
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_embed_command(tmp_path, monkeypatch):
    from gradtune.commands import embed as embed_cmd

    data = tabular()
    reg = types.ModuleType("gradtune.data.registry")
    reg.load_dataset = lambda name, root: data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gradtune.data.registry", reg)
    model = mlp()
    train(model, data, TrainConfig(epochs=1, batch_size=8, progress=False, checkpoint_dir=str(tmp_path / "ck")),
          meta={"dataset": "toy", "root": str(tmp_path)})
    out = tmp_path / "emb.npz"
    argv = ["embed", "--checkpoint", str(tmp_path / "ck" / "last.pt"), "--out", str(out),
            "--splits", "val,test", "--batch-size", "4", "--no-progress"]
    assert _run(embed_cmd, argv) == 0
    bundle = load_bundle(out)
    assert len(bundle.labels) == int((data.split > 0).sum()) and set(bundle.split.tolist()) == {"val", "test"}
    expected = extract_embeddings(model, data, np.flatnonzero(data.split > 0))
    np.testing.assert_allclose(bundle.features, expected.features, rtol=1e-6, atol=1e-6)
    before = out.stat().st_mtime_ns
    assert _run(embed_cmd, argv) == 0 and out.stat().st_mtime_ns == before  # kept, not rewritten
    with pytest.raises(GradTuneInputError, match="--splits"):
        _run(embed_cmd, argv[:-3] + ["--splits", "dev", "--overwrite"])


def test_encoder_features_come_from_the_second_network(tmp_path, monkeypatch):
    from gradtune.commands import embed as embed_cmd

    data = tabular()
    model = mlp()
    with seeded_scope(5):
        backbone = build_mlp_classifier(5, 3, hidden=(12,))
    rows = np.array([4, 9, 1, 30])
    bundle = extract_embeddings(model, data, rows, batch_size=3, encoder=backbone)
    x = torch.from_numpy(data.inputs[rows])
    with torch.no_grad():
        np.testing.assert_allclose(bundle.encoder_features, backbone.features(x).numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(bundle.features, model.features(x).numpy(), rtol=1e-6, atol=1e-6)
    assert extract_embeddings(model, data, rows).encoder_features is None

    reg = types.ModuleType("gradtune.data.registry")
    reg.load_dataset = lambda name, root: data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gradtune.data.registry", reg)
    for net, folder in ((model, "ck"), (backbone, "enc")):
        train(net, data, TrainConfig(epochs=1, batch_size=8, progress=False, checkpoint_dir=str(tmp_path / folder)),
              meta={"dataset": "toy", "root": str(tmp_path)})
    out = tmp_path / "emb.npz"
    argv = ["embed", "--checkpoint", str(tmp_path / "ck" / "last.pt"), "--out", str(out),
            "--encoder-checkpoint", str(tmp_path / "enc" / "last.pt"), "--batch-size", "4", "--no-progress"]
    assert _run(embed_cmd, argv) == 0
    got = load_bundle(out)
    with torch.no_grad():
        expect = backbone.features(torch.from_numpy(data.inputs)).numpy()
    np.testing.assert_allclose(got.encoder_features, expect, rtol=1e-5, atol=1e-6)
    assert got.meta["encoder_checkpoint"].endswith("last.pt")
