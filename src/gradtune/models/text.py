"""BERT-style text classifiers (transformers encoder + final ``nn.Linear``) and tokenization.

:class:`TextClassifier` wraps any transformers encoder (``AutoModel``): ``features(x)``
is the pooled output (BERT's tanh-pooled [CLS], as in ``BertForSequenceClassification``)
or the raw [CLS] hidden state, ``head`` is ``nn.Linear(hidden_size, C)`` and ``forward``
applies dropout then the head.

Inputs are token tensors, whatever their source:

* a (N, 3, L) integer tensor of ``input_ids`` / ``attention_mask`` / ``token_type_ids``
  (the layout of MultiNLI's cached BERT features: input_ids, input_mask, segment_ids),
* a (N, L) tensor of ``input_ids`` alone (mask = non-padding tokens, segments 0),
* a dict with those keys.

Raw strings (CivilComments) are tokenized by :func:`tokenize` (max_length 128, padded)
into the (N, 3, L) layout, batch by batch in :meth:`TextPreprocess.collate`.

Pretrained models are read only from local files (a hub cache or a directory):
nothing downloads unless ``allow_download=True`` is passed explicitly.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtune._validation import GradTuneInputError

__all__ = [
    "MAX_LENGTH",
    "TextClassifier",
    "TextPreprocess",
    "build_text_classifier",
    "build_bert_classifier",
    "text_classifier_from_config",
    "text_classifier_from_spec",
    "tokenize",
]

MAX_LENGTH = 128
"""Token sequence length of the paper's text models (and of MultiNLI's cached features)."""

POOLINGS = ("pooler", "cls", "mean")


class PretrainedModelError(OSError):
    """A pretrained text model or tokenizer is not available locally."""


def _as_token_batch(x: Any) -> dict[str, torch.Tensor]:
    """Normalize the accepted input layouts to a dict of (N, L) int64 tensors."""
    if isinstance(x, dict):
        if "input_ids" not in x:
            raise GradTuneInputError(f"a token dict needs 'input_ids', got keys {sorted(x)}")
        ids = torch.as_tensor(x["input_ids"]).long()
        mask = x.get("attention_mask", x.get("input_mask"))
        seg = x.get("token_type_ids", x.get("segment_ids"))
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).long()
        seg = torch.zeros_like(ids) if seg is None else torch.as_tensor(seg).long()
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": seg}
    t = torch.as_tensor(x)
    if t.is_floating_point():
        raise GradTuneInputError(f"token inputs must be integers, got dtype {t.dtype}")
    if t.ndim == 3 and t.shape[1] == 3:
        t = t.long()
        return {"input_ids": t[:, 0], "attention_mask": t[:, 1], "token_type_ids": t[:, 2]}
    if t.ndim == 2:
        t = t.long()
        return {"input_ids": t, "attention_mask": None, "token_type_ids": torch.zeros_like(t)}  # type: ignore[dict-item]
    raise GradTuneInputError(
        f"text inputs must be (N, 3, L) [input_ids, attention_mask, token_type_ids], (N, L) input_ids "
        f"or a dict, got shape {tuple(t.shape)}"
    )


class TextClassifier(nn.Module):
    """A transformers encoder with a linear head on its pooled / [CLS] output.

    Parameters
    ----------
    encoder : transformers.PreTrainedModel
        A bare encoder (``AutoModel``), returning ``last_hidden_state`` (N, L, H) and,
        for BERT, ``pooler_output`` (N, H).
    num_classes : int
    pooling : {'pooler', 'cls', 'mean'}, default='pooler'
        Features: BERT's pooler output (what ``BertForSequenceClassification`` feeds its
        classifier), the [CLS] hidden state, or the mask-weighted token mean.
    dropout : float, optional
        Dropout on the features before the head in training mode; default the encoder's
        ``hidden_dropout_prob`` (0.1 for BERT).
    tokenizer : tokenizer, str or None
        A transformers tokenizer, or a local name/path loaded on first use (only needed
        for raw strings).
    max_length : int, default=128

    Attributes
    ----------
    head : nn.Linear
        (C, H) final layer, initialized N(0, initializer_range) as in BERT.
    spec : dict
        Plain-value description that rebuilds this architecture (see :func:`text_classifier_from_spec`).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, pooling: str = "pooler",
                 dropout: float | None = None, tokenizer: Any = None,
                 max_length: int = MAX_LENGTH, tokenizer_name: str | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise GradTuneInputError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        config = encoder.config
        hidden = int(config.hidden_size)
        if dropout is None:
            dropout = float(getattr(config, "hidden_dropout_prob", 0.1) or 0.0)
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise GradTuneInputError(
                f"{type(encoder).__name__} has no pooler layer; use pooling='cls' or 'mean'"
            )
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, int(num_classes))
        std = float(getattr(config, "initializer_range", 0.02))
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)
        self.pooling = pooling
        self.max_length = int(max_length)
        if isinstance(tokenizer, str):
            tokenizer_name, tokenizer = tokenizer, None
        self._tokenizer = tokenizer
        self.tokenizer_name = tokenizer_name
        params = inspect.signature(encoder.forward).parameters
        self._takes_token_types = "token_type_ids" in params
        self.spec: dict[str, Any] = {
            "arch": "text",
            "config": json.loads(config.to_json_string()),
            "num_classes": int(num_classes),
            "pooling": pooling,
            "dropout": float(dropout),
            "tokenizer": tokenizer_name,
            "max_length": int(max_length),
        }

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded from local files on first use."""
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise GradTuneInputError(
                    "this text model has no tokenizer, so it can only take token ids "
                    "((N, 3, L) input_ids/attention_mask/token_type_ids); pass tokenizer= when building it"
                )
            self._tokenizer = _load_tokenizer(self.tokenizer_name, allow_download=False)
        return self._tokenizer

    def features(self, x: Any) -> torch.Tensor:
        """Pooled features.

        Parameters
        ----------
        x : torch.Tensor (N, 3, L) or (N, L), or dict of (N, L) tensors
            Token ids (see the module docstring).

        Returns
        -------
        torch.Tensor of shape (N, H)
        """
        batch = _as_token_batch(x)
        device = self.head.weight.device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"]
        if mask is None:
            pad = getattr(self.encoder.config, "pad_token_id", None)
            mask = (ids != pad).long() if pad is not None else torch.ones_like(ids)
        mask = mask.to(device)
        kwargs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        if self._takes_token_types:
            kwargs["token_type_ids"] = batch["token_type_ids"].to(device)
        out = self.encoder(**kwargs)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        w = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)

    def forward(self, x: Any) -> torch.Tensor:
        """Logits (N, C); dropout on the features in training mode."""
        return self.head(self.dropout(self.features(x)))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, 3, max_length) int64 token tensor."""
        return tokenize(texts, self.tokenizer, self.max_length)


def tokenize(texts: Sequence[str], tokenizer: Any, max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Tokenize strings (truncated and padded to ``max_length``).

    Returns
    -------
    torch.Tensor of shape (N, 3, max_length), int64
        input_ids, attention_mask, token_type_ids (zeros if the tokenizer has none).
    """
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
        raise GradTuneInputError(f"tokenize expects strings, got a {bad}")
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=int(max_length),
                    return_tensors="pt")
    ids = enc["input_ids"].long()
    mask = enc.get("attention_mask")
    seg = enc.get("token_type_ids")
    mask = torch.ones_like(ids) if mask is None else mask.long()
    seg = torch.zeros_like(ids) if seg is None else seg.long()
    return torch.stack([ids, mask, seg], dim=1)


class TextPreprocess:
    """Per-sample passthrough and per-batch tokenization for text classifiers.

    ``__call__(raw, train, generator)`` returns a string unchanged, or a (3, L) / (L,)
    token row as an int64 tensor; :meth:`collate` tokenizes a batch of strings into
    (N, 3, max_length) or stacks token rows. No randomness.

    Parameters
    ----------
    tokenizer : tokenizer or None
        Needed only for raw strings.
    max_length : int, default=128
    """

    def __init__(self, tokenizer: Any = None, max_length: int = MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, raw: Any, train: bool = False,
                 generator: torch.Generator | None = None) -> str | torch.Tensor:
        if isinstance(raw, str):
            return raw
        t = torch.as_tensor(np.asarray(raw) if not isinstance(raw, torch.Tensor) else raw)
        if t.is_floating_point() or t.ndim not in (1, 2):
            raise GradTuneInputError(
                f"a text sample must be a string or a (3, L) / (L,) integer token row, got "
                f"{t.dtype} of shape {tuple(t.shape)}"
            )
        return t.long()

    def collate(self, samples: list[Any]) -> torch.Tensor:
        """Strings -> tokenized (N, 3, L); token rows -> stacked (N, 3, L) or (N, L)."""
        if all(isinstance(s, str) for s in samples):
            if self.tokenizer is None:
                raise GradTuneInputError(
                    "raw text inputs need a tokenizer: build the model with build_text_classifier(...) "
                    "or pass TextPreprocess(tokenizer=...)"
                )
            return tokenize(samples, self.tokenizer, self.max_length)
        if any(isinstance(s, str) for s in samples):
            raise GradTuneInputError("a batch mixes strings and token rows; use one input type per dataset")
        return torch.stack(samples)


# ----------------------------------------------------------------------------- builders
def _transformers() -> Any:
    from gradtune._optional import require

    return require("transformers", extra="text", purpose="text models")


def _load_tokenizer(name_or_path: str, *, allow_download: bool) -> Any:
    AutoTokenizer = _transformers().AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=not allow_download)
    except (OSError, ValueError) as err:
        raise PretrainedModelError(_not_local_message("tokenizer", name_or_path, err)) from None


def _not_local_message(what: str, name: str, err: Exception) -> str:
    return (
        f"could not load the {what} {name!r} from local files ({type(err).__name__}: {str(err)[:200]}). "
        "gradtune does not download models: on a machine with internet run "
        f"`huggingface-cli download {name}` (it fills ~/.cache/huggingface/hub, or set HF_HOME) or save "
        "the model with save_pretrained(DIR), copy it here, and pass that directory as the model name "
        "(config: [model] name = \"/path/to/bert-base-uncased\")."
    )


def build_text_classifier(name_or_path: str, num_classes: int, *, pooling: str = "pooler",
                          dropout: float | None = None, max_length: int = MAX_LENGTH,
                          allow_download: bool = False, load_tokenizer: bool = True) -> TextClassifier:
    """A pretrained encoder (``AutoModel``) and tokenizer with a new ``num_classes``-way head.

    Parameters
    ----------
    name_or_path : str
        A hub name already in the local cache (``'bert-base-uncased'``) or a directory
        written by ``save_pretrained``.
    num_classes : int
    pooling, dropout, max_length
        See :class:`TextClassifier`.
    allow_download : bool, default=False
        Let transformers fetch missing files from the hub. Off: only local files are read.
    load_tokenizer : bool, default=True
        Load the tokenizer now (needed for raw text; pre-tokenized inputs do without).

    Raises
    ------
    PretrainedModelError
        If the model or tokenizer is not available locally; the message says how to get it.
    """
    AutoModel = _transformers().AutoModel

    try:
        encoder = AutoModel.from_pretrained(name_or_path, local_files_only=not allow_download)
    except (OSError, ValueError) as err:
        raise PretrainedModelError(_not_local_message("model", name_or_path, err)) from None
    encoder = encoder.float()
    tokenizer = _load_tokenizer(name_or_path, allow_download=allow_download) if load_tokenizer else None
    return TextClassifier(encoder, num_classes, pooling=pooling, dropout=dropout, tokenizer=tokenizer,
                          max_length=max_length, tokenizer_name=str(name_or_path))


def build_bert_classifier(num_classes: int, name_or_path: str = "bert-base-uncased",
                          **kwargs: Any) -> TextClassifier:
    """The paper's text model: pretrained BERT-base (uncased) + linear head; see :func:`build_text_classifier`."""
    return build_text_classifier(name_or_path, num_classes, **kwargs)


def text_classifier_from_config(config: Any, num_classes: int, *, tokenizer: Any = None,
                                tokenizer_name: str | None = None, pooling: str = "pooler",
                                dropout: float | None = None,
                                max_length: int = MAX_LENGTH) -> TextClassifier:
    """A randomly initialized encoder from a transformers config (e.g. a tiny ``BertConfig``)."""
    AutoModel = _transformers().AutoModel

    encoder = AutoModel.from_config(config)
    return TextClassifier(encoder, num_classes, pooling=pooling, dropout=dropout, tokenizer=tokenizer,
                          max_length=max_length, tokenizer_name=tokenizer_name)


def text_classifier_from_spec(spec: dict[str, Any]) -> TextClassifier:
    """Rebuild a :class:`TextClassifier` architecture from its ``spec`` (random weights).

    The tokenizer is not loaded here; it is loaded from local files on first use.
    """
    AutoConfig = _transformers().AutoConfig

    cfg = dict(spec["config"])
    model_type = cfg.pop("model_type")
    cfg.pop("transformers_version", None)
    config = AutoConfig.for_model(model_type, **cfg)
    return text_classifier_from_config(config, int(spec["num_classes"]),
                                       tokenizer_name=spec.get("tokenizer"),
                                       pooling=spec.get("pooling", "pooler"),
                                       dropout=spec.get("dropout"),
                                       max_length=int(spec.get("max_length", MAX_LENGTH)))

