"""Tiny BERT classifiers built from a config (no hub): inputs, training, extraction, tokenization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtune._validation import GradTuneInputError
from gradtune.data.base import GroupedDataset
from gradtune.embeddings.extract import extract_embeddings
from gradtune.models.classifier import find_last_linear, model_from_spec
from gradtune.models.text import (
    PretrainedModelError,
    TextClassifier,
    TextPreprocess,
    build_text_classifier,
    text_classifier_from_config,
    tokenize,
)
from gradtune.training.config import TrainConfig
from gradtune.training.trainer import seeded_scope, train

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
# Building the first transformers model imports its modeling stack (~10 s on 2 cores).
pytestmark = pytest.mark.slow

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a cat dog sat on mat is not good bad very movie great awful film").split()
L = 16


def tiny_config():
    return transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=64)


def tiny_model(num_classes: int = 3, **kwargs) -> TextClassifier:
    with seeded_scope(0):
        return text_classifier_from_config(tiny_config(), num_classes, max_length=L, **kwargs)


def token_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MultiNLI-style (n, 3, L) rows: the label is which of 3 marker tokens appears first."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    rows = np.zeros((n, 3, L), dtype=np.int64)
    lengths = rng.integers(6, L, size=n)
    for i in range(n):
        ids = rng.integers(20, 100, size=lengths[i])
        ids[0], ids[-1] = 2, 3
        ids[1] = 10 + labels[i]
        rows[i, 0, : lengths[i]] = ids
        rows[i, 1, : lengths[i]] = 1
    return rows, labels


def grouped(inputs, labels) -> GroupedDataset:
    n = len(labels)
    return GroupedDataset("toytext", inputs, labels, np.zeros(n), labels, np.arange(n) % 3,
                          ["c0", "c1", "c2"], ["a0"], ["g0", "g1", "g2"])


def test_accepts_all_token_layouts():
    model = tiny_model().eval()
    rows, _ = token_rows(4, 0)
    x = torch.from_numpy(rows)
    f3 = model.features(x)
    assert f3.shape == (4, 32)
    f_dict = model.features({"input_ids": x[:, 0], "attention_mask": x[:, 1], "token_type_ids": x[:, 2]})
    f_ids = model.features(x[:, 0])  # mask from pad id 0
    torch.testing.assert_close(f3, f_dict)
    torch.testing.assert_close(f3, f_ids)
    assert model(x).shape == (4, 3) and find_last_linear(model) is model.head
    with pytest.raises(GradTuneInputError, match="integers"):
        model(x.float())
    for pooling in ("cls", "mean"):
        assert tiny_model(pooling=pooling).eval().features(x).shape == (4, 32)


def test_tiny_bert_trains_and_extracts():
    rows, labels = token_rows(48, 1)
    data = grouped(rows, labels)
    model = tiny_model()
    cfg = TrainConfig(optimizer="adamw", lr=3e-3, schedule="linear", batch_size=16, epochs=3,
                      weight_decay=1e-4, seed=0, progress=False)
    result = train(model, data, cfg)
    losses = [h["loss"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    bundle = extract_embeddings(result.model, data, batch_size=10)
    assert bundle.features.shape == (48, 32) and bundle.logits.shape == (48, 3)
    expected = bundle.features @ bundle.head_weight.T + bundle.head_bias
    np.testing.assert_allclose(bundle.logits, expected, rtol=1e-4, atol=1e-5)
    assert set(bundle.split.tolist()) == {"train", "val", "test"}


def test_spec_round_trip():
    model = tiny_model(num_classes=2).eval()
    clone = model_from_spec(model.spec)
    clone.load_state_dict(model.state_dict())
    rows, _ = token_rows(3, 2)
    torch.testing.assert_close(clone.eval()(torch.from_numpy(rows)), model(torch.from_numpy(rows)))


def test_raw_text_is_tokenized_per_batch():
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    texts = ["the movie is great", "a very bad film", "not good", "the cat sat on the mat"] * 6
    labels = np.array([1, 0, 0, 1] * 6)
    out = tokenize(texts[:2], tok, max_length=L)
    assert out.shape == (2, 3, L) and out.dtype == torch.int64
    assert out[0, 0, 0].item() == VOCAB.index("[CLS]") and out[0, 1].sum().item() == 6
    model = tiny_model(num_classes=2, tokenizer=tok)
    data = GroupedDataset("toytext", texts, labels, np.zeros(24), labels, np.zeros(24),
                          ["neg", "pos"], ["a0"], ["g0", "g1"])
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, schedule="constant", batch_size=8, epochs=1,
                      seed=0, progress=False)
    result = train(model, data, cfg)
    assert np.isfinite(result.history[0]["loss"])
    prep = TextPreprocess(None, L)
    with pytest.raises(GradTuneInputError, match="tokenizer"):
        prep.collate(["a", "b"])


def test_pretrained_models_are_never_downloaded(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedModelError, match="does not download"):
        build_text_classifier("gradtune-tests/no-such-model", 2)
