"""Batch splitting, model calling and output-layer tracing in gradtune.embeddings.capture."""

from __future__ import annotations

from collections import UserDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from gradtune import GradTuneInputError
from gradtune.embeddings.capture import (
    batch_inputs,
    call_model,
    capture_features,
    find_output_layer,
    logits_of,
    resolve_output_layer,
    split_batch,
)


def test_split_batch_mapping_tuple_and_errors() -> None:
    x, y = torch.ones(3, 2), torch.tensor([0, 1, 0])
    inputs, labels = split_batch(UserDict({"input_ids": x, "labels": y, "groups": y}))
    assert set(inputs) == {"input_ids"} and torch.equal(labels, y)
    inputs, labels = split_batch(((x, x), y, torch.zeros(3)))
    assert isinstance(inputs, tuple) and torch.equal(labels, y)
    with pytest.raises(GradTuneInputError, match=r"'labels'.*keys \['input_ids'\]"):
        split_batch({"input_ids": x})
    with pytest.raises(GradTuneInputError, match="got Tensor"):
        split_batch(x)


def test_unlabeled_batches_give_their_inputs_and_no_label_is_read() -> None:
    x = torch.ones(3, 2)
    assert batch_inputs(x) is x
    assert batch_inputs((x,)) is x and batch_inputs([x, "anything"]) is x
    assert set(batch_inputs({"input_ids": x, "labels": "not a label", "groups": None})) == {"input_ids"}
    with pytest.raises(GradTuneInputError, match="empty sequence"):
        batch_inputs(())


def test_call_model_dispatch() -> None:
    seen = []

    def f(*args, **kwargs):
        seen.append((len(args), sorted(kwargs)))

    call_model(f, {"a": 1, "b": 2})
    call_model(f, (1, 2, 3))
    call_model(f, [1, 2])
    call_model(f, torch.ones(2))
    assert seen == [(0, ["a", "b"]), (3, []), (2, []), (1, [])]


@dataclass
class FakeOutput:
    loss: object
    logits: torch.Tensor


def test_logits_of_every_output_shape() -> None:
    z = torch.randn(2, 3)
    assert logits_of(z) is z
    assert logits_of(FakeOutput(None, z)) is z
    assert logits_of({"logits": z, "hidden": z + 1}) is z
    assert logits_of((None, z, z + 1)) is z
    assert logits_of("text") is None


class Net(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.emb = nn.Linear(4, 3)
        self.mode = mode

    def forward(self, x):
        z = self.fc(torch.relu(self.emb(x)))
        if self.mode == "tuple":
            return z, x
        if self.mode == "mapping":
            return {"logits": z}
        if self.mode == "reshaped":
            return z.reshape(-1, 1, 2).clone()  # a new tensor with the layer's values
        if self.mode == "temperature":
            return z / 2.0
        return "no tensor"


@pytest.mark.parametrize("mode", ["tuple", "mapping", "reshaped"])
def test_find_output_layer_through_output_wrappers(mode: str) -> None:
    net = Net(mode).train()
    assert find_output_layer(net, torch.randn(5, 4, generator=torch.Generator().manual_seed(0))) is net.fc
    assert net.training  # mode restored


def test_find_output_layer_refusals_name_the_candidates() -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GradTuneInputError, match=r"no nn.Linear produces.*Candidates: 'fc'\. .*layer="):
        find_output_layer(Net("temperature"), x)
    with pytest.raises(GradTuneInputError, match="no logits tensor"):
        find_output_layer(Net("text"), x)
    with pytest.raises(GradTuneInputError, match="no torch.nn.Linear"):
        find_output_layer(nn.Sequential(nn.ReLU()), x)


def test_resolve_keeps_every_batch_of_a_generator_and_honours_layer() -> None:
    g = torch.Generator().manual_seed(1)
    net = Net("tuple")
    batches = [(torch.randn(3, 4, generator=g), torch.tensor([0, 1, 0])) for _ in range(3)]
    layer, loader = resolve_output_layer(net, (b for b in batches))
    assert layer is net.fc and len(list(loader)) == 3
    layer, loader = resolve_output_layer(net, batches, "emb")
    assert layer is net.emb and loader is batches
    with pytest.raises(GradTuneInputError, match=r"no submodule named 'head'.*'fc', 'emb'"):
        resolve_output_layer(net, batches, "head")
    with pytest.raises(GradTuneInputError, match="no batches"):
        resolve_output_layer(net, [])
    # capture over the generator sees all 9 rows; features are the traced layer's inputs
    f, z, y = capture_features(net, (b for b in batches))
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        torch.testing.assert_close(f, torch.relu(net.emb(x)))
        torch.testing.assert_close(z, net(x)[0])
    assert y.tolist() == [0, 1, 0] * 3
