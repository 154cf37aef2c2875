"""gradtune.workflows.tune: the tune workflow called directly (the command only parses arguments)."""

from __future__ import annotations

import json

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
    out = tune_bundle(EXAMPLE, tmp_path / "run", finetune=cfg, seed=1)
    assert not out.reused and {p.name for p in out.wrote} == {"head.npz", "metrics.json"}
    bundle = load_bundle(EXAMPLE).resolve_heldout(0)
    held = bundle.view("heldout")
    ref = GradTune(500, 400, finetune=cfg, seed=1).fit_embeddings(
        held.features, held.labels, weight=bundle.head_weight, bias=bundle.head_bias)
    head = np.load(tmp_path / "run" / "head.npz", allow_pickle=False)
    np.testing.assert_array_equal(head["weight"], ref.weight_.numpy())
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["selected_rows"] == held.index[ref.report_.selected].tolist()
    again = tune_bundle(EXAMPLE, tmp_path / "run", finetune=cfg, seed=1)
    assert again.reused and again.wrote == []
    other = tune_bundle(EXAMPLE, tmp_path / "run", finetune=cfg, seed=2)
    assert not other.reused


def test_tune_bundle_refuses_params_for_the_papers_method(tmp_path):
    with pytest.raises(GradTuneInputError, match="--param"):
        tune_bundle(EXAMPLE, tmp_path / "x", method_params={"size": 3})
