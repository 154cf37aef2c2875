"""The "add a method" recipe of CONTRIBUTING.md, followed once by a method that lives in this test.

``shrink-head`` scales the ERM head's weight by ``1 - shrink``: one new hyperparameter,
declared once. Registered (and only for these tests), it must work through every door
without any other file knowing it: ``get_method``, ``gradtune run`` (with ``--dry-run``
refusing a bad value), ``gradtune tune --method`` and :func:`gradtune.repair`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from gradtune import cli, repair
from gradtune._errors import GradTuneInputError
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods import METHODS, get_method, list_methods
from gradtune.methods.base import LinearHead, Method, MethodResult, erm_head, param, register_method
from gradtune.methods.tuning import search_space
from gradtune.results.store import ResultStore
from tests.experiments._toy import toy_bundle


@dataclass
class ShrinkHead(Method):
    """The ERM head with its weight scaled by ``1 - shrink`` (a test-only method)."""

    name = "shrink-head"
    description = "the ERM head's weight scaled by 1 - shrink (test-only)"

    shrink: float = param(0.5, "how much of the weight to remove", ge=0, lt=1, space=(0.1, 0.5))

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        head = erm_head(bundle)
        return MethodResult(LinearHead(head.weight * (1 - self.shrink), head.bias), {"shrink": self.shrink})


@pytest.fixture
def shrink_head() -> Iterator[type[Method]]:
    list_methods()  # the built-in methods first, then the plug-in
    register_method(ShrinkHead)
    try:
        yield ShrinkHead
    finally:
        METHODS.pop(ShrinkHead.name, None)


def test_get_method_and_its_declaration(shrink_head, tmp_path):
    assert "shrink-head" in list_methods()
    bundle = toy_bundle(0).resolve_heldout(0)
    res = get_method("shrink-head", shrink=0.25).fit(bundle, seed=0)
    np.testing.assert_allclose(res.model.weight, bundle.head_weight * 0.75, rtol=1e-6)
    assert search_space("shrink-head") == {"shrink": [0.1, 0.5]}
    with pytest.raises(GradTuneInputError, match=r"shrink must be >= 0 and < 1, got 1.5"):
        get_method("shrink-head", shrink=1.5)


def test_gradtune_run_and_dry_run(shrink_head, tmp_path, capsys):
    toy_bundle(0).save(tmp_path / "toy.npz")
    config = tmp_path / "shrink.toml"
    base = ('[experiment]\nbenchmarks = ["bundle:toy.npz"]\nseeds = [0]\nmethods = ["erm", "shrink-head"]\n'
            '[grid.shrink-head]\nshrink = [0.1, 0.5]\n')
    config.write_text(base + '[params.erm]\n')
    out = tmp_path / "results"
    assert cli.main(["run", str(config), "--out", str(out), "--dry-run"]) == 0
    assert "shrink-head [shrink=0.5]" in capsys.readouterr().out
    assert cli.main(["run", str(config), "--out", str(out)]) == 0
    capsys.readouterr()
    runs = ResultStore(out / "results.sqlite").records(method="shrink-head")
    assert sorted(r["params"]["shrink"] for r in runs) == [0.1, 0.5]
    config.write_text(base.replace("[0.1, 0.5]", "[0.1, 1.5]"))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "bad"), "--dry-run"]) == 2
    assert "grid.shrink-head.shrink[1]: must be >= 0 and < 1, got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_gradtune_tune_method(shrink_head, tmp_path, capsys):
    toy_bundle(0).save(tmp_path / "toy.npz")
    out = tmp_path / "tuned"
    argv = ["tune", "--embeddings", str(tmp_path / "toy.npz"), "--out", str(out), "--method", "shrink-head"]
    assert cli.main([*argv, "--param", "shrink=0.25"]) == 0
    head = np.load(out / "head.npz", allow_pickle=False)
    np.testing.assert_allclose(head["weight"], toy_bundle(0).head_weight * 0.75, rtol=1e-6)
    assert json.loads((out / "metrics.json").read_text())["params"]["method_params"] == {"shrink": 0.25}
    capsys.readouterr()
    assert cli.main([*argv[:4], str(tmp_path / "bad"), *argv[5:], "--param", "shrink=-1"]) == 2
    assert "--param shrink must be >= 0 and < 1, got -1" in capsys.readouterr().err
    assert cli.main([*argv[:4], str(tmp_path / "bad"), *argv[5:], "--top-k", "3"]) == 2
    assert "--top-k sets top_k, which method 'shrink-head' does not have" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_repair_a_model(shrink_head):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = model[2].weight.detach().clone()
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    result = repair(model, loader, method="shrink-head", params={"shrink": 0.5})
    assert result.diagnostics["shrink"] == 0.5
    torch.testing.assert_close(model[2].weight.detach(), before * 0.5)
