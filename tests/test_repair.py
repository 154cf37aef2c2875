"""gradtune.repair: any registered method on a PyTorch model, with an optional encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradtune
from gradtune._validation import GradTuneInputError
from gradtune.data.base import split_heldout
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods import get_method
from tests.methods._synthetic import make_spurious_bundle

FAST = {"xrm_steps": 150, "epochs_grid": (1, 3), "c_grid": (1.0,), "num_retrains": 1}


class Net(nn.Module):
    """Registers its head before its body (so the last *registered* Linear is the body)."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.head = nn.Linear(w.shape[1], w.shape[0])
        self.body = nn.Linear(w.shape[1], w.shape[1])
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(w))
            self.head.bias.copy_(torch.as_tensor(b))
            self.body.weight.copy_(torch.eye(w.shape[1]))
            self.body.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _loader(x: np.ndarray, y: np.ndarray, batch: int = 50):
    return [(torch.as_tensor(x[i:i + batch]), torch.as_tensor(y[i:i + batch])) for i in range(0, len(y), batch)]


def test_repair_equals_the_method_on_the_same_bundle() -> None:
    b = make_spurious_bundle(n_train=300, n_heldout=200, n_selection=200, d=8, seed=1, align_eval=0.9)
    val = np.isin(b.split, ("heldout", "selection"))
    x, y = b.features[val], b.labels[val]
    tr = b.split == "train"
    model = Net(b.head_weight, b.head_bias)

    def encoder(inp: torch.Tensor) -> torch.Tensor:
        return inp[:, :3] * 2.0

    res = gradtune.repair(model, _loader(x, y), method="gradtune-auto", params=FAST, encoder=encoder,
                          train_loader=_loader(b.features[tr], b.labels[tr]), layer="head", seed=3,
                          split_seed=5)
    # the same method on a bundle built by hand from the same rows
    split = np.concatenate([np.full(len(y), "val", dtype="<U9"), np.full(int(tr.sum()), "train", dtype="<U9")])
    held, sel = split_heldout(np.arange(len(y)), 5)
    split[held], split[sel] = "heldout", "selection"
    feats = np.concatenate([x, b.features[tr]])
    ref_bundle = EmbeddingBundle(features=feats, labels=np.concatenate([y, b.labels[tr]]), split=split,
                                 encoder_features=feats[:, :3] * 2.0, head_weight=b.head_weight,
                                 head_bias=b.head_bias, n_classes=2)
    ref = get_method("gradtune-auto", **FAST).fit(ref_bundle, seed=3)
    np.testing.assert_allclose(model.head.weight.detach().numpy(), ref.model.weight, atol=1e-6)
    np.testing.assert_allclose(model.head.bias.detach().numpy(), ref.model.bias, atol=1e-6)
    assert res.diagnostics["pseudo_groups"]["features"] == "encoder_features"
    assert res.diagnostics["pseudo_groups"]["pool"] == "train"
    # the body (the last registered Linear) is untouched
    np.testing.assert_array_equal(model.body.weight.detach().numpy(), np.eye(8, dtype=np.float32))


def test_unlabeled_deployment_rows_reach_the_guard() -> None:
    b = make_spurious_bundle(n_train=300, n_heldout=200, n_selection=200, n_test=120, d=8, seed=1, align_eval=0.9)
    val = np.isin(b.split, ("heldout", "selection"))
    x, y = b.features[val], b.labels[val]
    xd = b.features[b.split == "test"]
    # bare tensors, one-tuples and mappings whose 'labels' could not be read as labels
    dep = [torch.as_tensor(xd[:40]), (torch.as_tensor(xd[40:80]),),
           {"x": torch.as_tensor(xd[80:]), "labels": torch.full((len(xd) - 80,), -7.5)}]

    def encoder(inp: torch.Tensor) -> torch.Tensor:
        return inp[:, :3] * 2.0

    model = Net(b.head_weight, b.head_bias)
    params = {**FAST, "audit_coverage": False}   # this problem's halves are too small to audit every class
    res = gradtune.repair(model, _loader(x, y), method="gradtune-auto", params=params, encoder=encoder,
                          deployment_loader=dep, layer="head", seed=2)
    assert res.diagnostics["deployment_rows"] == "deployment_features"
    assert res.diagnostics["n_deployment_rows"] == len(xd)
    # the same method on a bundle built by hand: the layer's inputs (the body is the identity) as its rows
    split = np.full(len(y), "val", dtype="<U9")
    held, sel = split_heldout(np.arange(len(y)), 0)
    split[held], split[sel] = "heldout", "selection"
    ref_bundle = EmbeddingBundle(features=x, labels=y, split=split, encoder_features=x[:, :3] * 2.0,
                                 head_weight=b.head_weight, head_bias=b.head_bias, n_classes=2,
                                 deployment_features=xd)
    ref = get_method("gradtune-auto", **params).fit(ref_bundle, seed=2)
    np.testing.assert_allclose(model.head.weight.detach().numpy(), ref.model.weight, atol=1e-6)
    assert res.diagnostics["deployment_shares"] == ref.diagnostics["deployment_shares"] != []


def test_repair_errors() -> None:
    b = make_spurious_bundle(n_train=50, n_heldout=20, n_selection=20, d=4, seed=0)
    model = Net(b.head_weight, b.head_bias)
    x, y = b.features[:3], b.labels[:3]
    with pytest.raises(GradTuneInputError, match="at least 4"):
        gradtune.repair(model, _loader(x, y), layer="head")
    with pytest.raises(GradTuneInputError, match="integer class ids"):
        gradtune.repair(model, [(torch.as_tensor(b.features[:8]), torch.full((8,), 0.9))], layer="head")
    with pytest.raises(GradTuneInputError, match="unknown method"):
        gradtune.repair(model, _loader(b.features[:40], b.labels[:40]), method="nope", layer="head")
