"""gradtune.workflows.tune: the tune workflow called directly (the command only parses arguments)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gradtune._errors import GradTuneInputError
from gradtune.commands.tune import EXAMPLE
from gradtune.embeddings.bundle import load_bundle
from gradtune.estimator import GradTune
from gradtune.finetune.linear import FinetuneConfig
from gradtune.workflows.tune import tune_bundle


def test_tune_bundle_is_gradtune_on_the_heldout_rows(tmp_path):
    cfg = FinetuneConfig(epochs=5)
    out = tune_bundle(EXAMPLE, tmp_path / "run", method_params={"finetune.epochs": 5}, seed=1)
    assert not out.reused and {p.name for p in out.wrote} == {"head.npz", "metrics.json"}
    bundle = load_bundle(EXAMPLE).resolve_heldout(0)
    held = bundle.view("heldout")
    ref = GradTune(500, 400, finetune=cfg, seed=1).fit_embeddings(
        held.features, held.labels, weight=bundle.head_weight, bias=bundle.head_bias)
    head = np.load(tmp_path / "run" / "head.npz", allow_pickle=False)
    np.testing.assert_array_equal(head["weight"], ref.weight_.numpy())
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["selected_rows"] == held.index[ref.report_.selected].tolist()
    assert stored["size_used"] == 500 and stored["top_k_used"] == 400
    again = tune_bundle(EXAMPLE, tmp_path / "run", method_params={"finetune.epochs": 5}, seed=1)
    assert again.reused and again.wrote == []
    other = tune_bundle(EXAMPLE, tmp_path / "run", method_params={"finetune.epochs": 5}, seed=2)
    assert not other.reused


@pytest.mark.parametrize("params, message", [
    ({"size": 0}, "size must be > 0, got 0"),
    ({"size": 100, "top_k": 200}, "top_k must be at most size (100), got 200"),
    ({"finetune.lr": -1.0}, "finetune.lr must be > 0, got -1.0"),
    ({"finetune.snapshot_epochs": (9,), "finetune.epochs": 5}, "finetune.snapshot_epochs must lie in 1..epochs=5"),
])
def test_tune_bundle_refuses_bad_params_before_reading_or_writing(tmp_path, params, message):
    with pytest.raises(GradTuneInputError, match=re.escape(message)):
        tune_bundle(tmp_path / "no-such-bundle.npz", tmp_path / "x", method_params=params)
    assert not (tmp_path / "x").exists()
