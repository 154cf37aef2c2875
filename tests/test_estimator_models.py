"""GradTune.fit and gradtune.repair on real model shapes: the output layer is traced, and
exactly that layer's parameters change, to the values GradTune gives on features
computed independently of the hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradtune
from gradtune import FinetuneConfig, GradTune, GradTuneInputError

CFG = FinetuneConfig(epochs=3, lr=0.05, batch_size=4)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.named_parameters() if not torch.equal(before[k], v.detach())}


def _check_repaired(model: nn.Module, layer: nn.Linear, prefix: str, feats: torch.Tensor,
                    labels: torch.Tensor, before: dict[str, torch.Tensor], tuner: GradTune,
                    size: int, top_k: int) -> None:
    """Only ``prefix.weight`` / ``prefix.bias`` changed, to GradTune's result on ``feats``."""
    assert tuner.layer_ is layer
    assert _changed(before, model) == {f"{prefix}.weight", f"{prefix}.bias"}
    ref = GradTune(size=size, top_k=top_k, finetune=CFG, seed=tuner.seed).fit_embeddings(
        feats, labels, weight=before[f"{prefix}.weight"], bias=before[f"{prefix}.bias"])
    np.testing.assert_array_equal(tuner.report_.selected, ref.report_.selected)
    torch.testing.assert_close(layer.weight.detach(), ref.weight_, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.bias.detach(), ref.bias_, rtol=1e-4, atol=1e-5)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class HeadFirst(nn.Module):
    """Registers its classifier before its backbone: the last registered Linear is hidden."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        self.classifier = nn.Linear(8, 3)
        self.backbone = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh())
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def test_classifier_registered_first_is_the_one_tuned() -> None:
    g = _gen(0)
    model = HeadFirst(g)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    loader = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    before = _params(model)
    with torch.no_grad():
        feats = model.backbone(x)
    tuner = GradTune(size=20, top_k=15, finetune=CFG, seed=1).fit(model, iter(loader))  # one-shot iterator
    _check_repaired(model, model.classifier, "classifier", feats, y, before, tuner, 20, 15)
    assert tuner.report_.norms.shape == (40,)  # the traced batch was not lost


class TwoInputs(nn.Module):
    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        self.fc = nn.Linear(7, 2)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, xa: torch.Tensor, xb: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return self.fc(torch.cat([torch.relu(self.a(xa)), torch.relu(self.b(xb))], 1) * scale)

    def features(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.a(xa)), torch.relu(self.b(xb))], 1)


def test_two_input_model_tuple_and_keyword_batches() -> None:
    g = _gen(1)
    xa, xb = torch.randn(24, 3, generator=g), torch.randn(24, 2, generator=g)
    y = torch.randint(0, 2, (24,), generator=g)
    tuple_loader = [((xa[i:i + 8], xb[i:i + 8]), y[i:i + 8]) for i in range(0, 24, 8)]
    # DataLoader's default collate turns per-sample tuples into lists of batched tensors
    dl = torch.utils.data.DataLoader(list(zip(zip(xa, xb, strict=True), y, strict=True)), batch_size=8, shuffle=False)
    kw_loader = [{"xa": xa[i:i + 8], "xb": xb[i:i + 8], "labels": y[i:i + 8]} for i in range(0, 24, 8)]
    for loader in (tuple_loader, dl, kw_loader):
        model = TwoInputs(_gen(2))
        with torch.no_grad():
            feats = model.features(xa, xb)
        before = _params(model)
        tuner = GradTune(size=12, top_k=8, finetune=CFG, seed=0).fit(model, loader)
        _check_repaired(model, model.fc, "fc", feats, y, before, tuner, 12, 8)


class Ambiguous(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.left = nn.Linear(4, 2)
        self.right = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return self.left(h) + self.right(h)


def test_ambiguous_model_is_refused_and_layer_settles_it() -> None:
    x, y = torch.randn(10, 4, generator=_gen(3)), torch.randint(0, 2, (10,), generator=_gen(4))
    model = Ambiguous()
    before = _params(model)
    with pytest.raises(GradTuneInputError, match=r"Candidates: 'left', 'right'.*layer="):
        GradTune(size=4, top_k=2, finetune=CFG).fit(model, [(x, y)])
    assert _changed(before, model) == set()
    with pytest.raises(GradTuneInputError, match=r"Candidates: 'left', 'right'"):
        gradtune.repair(model, [(x, y)], method="gradtune")
    assert _changed(before, model) == set()
    tuner = GradTune(size=4, top_k=2, finetune=CFG).fit(model, [(x, y)], layer="left")
    assert tuner.layer_ is model.left and _changed(before, model) == {"left.weight", "left.bias"}


def test_repair_traces_the_output_layer() -> None:
    g = _gen(5)
    model = HeadFirst(g)
    x, y = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    loader = [{"x": x[i:i + 20], "label": y[i:i + 20]} for i in range(0, 60, 20)]
    before = _params(model)
    gradtune.repair(model, loader, method="gradtune",
                    params={"size": 10, "top_k": 8, "finetune.epochs": 2}, seed=0)
    assert _changed(before, model) == {"classifier.weight", "classifier.bias"}


# --------------------------------------------------------------------- Hugging Face
def _minilm_path():
    from gradtune.embeddings.encoders import _minilm_dir

    return _minilm_dir()


def test_hugging_face_sequence_classifier_with_padding_collator(monkeypatch) -> None:
    transformers = pytest.importorskip("transformers", reason="the demo extra provides transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    path = str(_minilm_path())
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, local_files_only=True)
    with torch.no_grad():  # a fresh 2-class head, drawn from an explicit generator
        g = _gen(6)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=g) * 0.2)
        model.classifier.bias.zero_()
    texts = ["great food", "not good at all", "the best tea I have had", "never again, awful",
             "fine", "I would not buy this", "delicious and fresh coffee beans", "stale"] * 2
    labels = [1, 0, 1, 0, 1, 0, 1, 0] * 2
    rows = [dict(tok(t, truncation=True, max_length=32), labels=lab) for t, lab in zip(texts, labels, strict=True)]
    collate = transformers.DataCollatorWithPadding(tok)
    loader = torch.utils.data.DataLoader(rows, batch_size=5, collate_fn=collate, shuffle=False)
    assert not isinstance(next(iter(loader)), dict)  # a BatchEncoding (a UserDict)
    model.eval()
    with torch.no_grad():  # the classifier's input, computed without hooks
        feats = torch.cat([model.bert(**{k: v for k, v in b.items() if k != "labels"}).pooler_output
                           for b in loader])
    before = _params(model)
    tuner = GradTune(size=8, top_k=6, finetune=CFG, seed=2).fit(model, loader)
    _check_repaired(model, model.classifier, "classifier", feats, torch.tensor(labels), before,
                    tuner, 8, 6)


# --------------------------------------------------------------------- EfficientNet-Lite0
def test_efficientnet_lite0_fc() -> None:
    effnet = pytest.importorskip("efficientnet_lite_pytorch", reason="the demo extra provides it")
    from gradtune.embeddings.encoders import _effnet_weights

    model = effnet.EfficientNet.from_name("efficientnet-lite0", image_size=32, num_classes=2)
    state = torch.load(_effnet_weights(), map_location="cpu", weights_only=True)
    missing, _ = model.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")},
                                       strict=False)
    assert set(missing) == {"_fc.weight", "_fc.bias"}
    with torch.no_grad():
        g = _gen(7)
        model._fc.weight.copy_(torch.randn(model._fc.weight.shape, generator=g) * 0.1)
        model._fc.bias.zero_()
    x = torch.rand(12, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1] * 6)
    loader = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]
    model.eval()
    with torch.no_grad():
        feats = model._avg_pooling(model.extract_features(x)).flatten(1)
    before = _params(model)
    tuner = GradTune(size=6, top_k=4, finetune=CFG, seed=0).fit(model, loader)
    _check_repaired(model, model._fc, "_fc", feats, y, before, tuner, 6, 4)
