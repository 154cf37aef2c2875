"""The full-network training workflow, called directly (the CLI tests drive it through argparse)."""

from __future__ import annotations

import json

import pytest
import torch

from gradtune._validation import GradTuneInputError
from gradtune.models.checkpoint import load_checkpoint
from gradtune.models.transforms import ImagePreprocess
from gradtune.training.config import TrainConfig
from gradtune.training.trainer import seeded_scope, train
from gradtune.workflows.train import build_model, load_run_config, train_network
from tests.training.test_trainer import CLI_CONFIG, fake_registry, image_dataset


def test_train_network_matches_the_trainer_called_by_hand(tmp_path, monkeypatch):
    data = image_dataset()
    fake_registry(monkeypatch, data)
    conf = tmp_path / "run.toml"
    conf.write_text(CLI_CONFIG)
    summary = train_network("waterbirds", tmp_path, tmp_path / "run", config_file=conf, seed=3, progress=False,
                            epochs=2)
    assert summary == json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["method"] == "erm" and summary["seed"] == 3 and summary["epochs"] == 2

    # the same run assembled from the pieces: config file -> model, preprocessing, TrainConfig
    cfg = load_run_config(conf)
    config = TrainConfig.from_dict({**cfg["erm"], "seed": 3, "epochs": 2, "progress": False,
                                    "checkpoint_dir": str(tmp_path / "manual")})
    with seeded_scope(3, "cpu"):
        model = build_model(cfg["model"], data.n_classes)
    ref = train(model, data, config, preprocess=ImagePreprocess(**cfg["preprocess"]))
    assert [h["loss"] for h in summary["history"]] == pytest.approx([h["loss"] for h in ref.history], rel=1e-6)
    ours = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(ours[k], v)


def test_train_network_checks_its_arguments(tmp_path, monkeypatch):
    fake_registry(monkeypatch, image_dataset())
    conf = tmp_path / "run.toml"
    conf.write_text(CLI_CONFIG)
    with pytest.raises(GradTuneInputError, match="method"):
        train_network("waterbirds", tmp_path, tmp_path / "o", method="sgd", config_file=conf)
    with pytest.raises(GradTuneInputError, match=r"no \[jtt\] epoch.*jtt_epoch"):
        train_network("waterbirds", tmp_path, tmp_path / "o", method="jtt", config_file=conf)
