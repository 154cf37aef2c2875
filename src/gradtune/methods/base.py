"""The interface every last-layer method shares, and the registry that names them.

A method takes an :class:`~gradtune.embeddings.bundle.EmbeddingBundle` whose rows
are split into ``train`` / ``heldout`` / ``selection`` / ``test`` (the ERM head in
``head_weight``/``head_bias``) and returns a :class:`MethodResult`: something that
maps features to logits, plus diagnostics. Methods never read ``test`` rows.

Each method class declares whether it uses group labels in training and in
validation (model selection), and its hyperparameters are dataclass fields declared
with :func:`~gradtune._params.param` / :func:`~gradtune._params.nested`: their
authors' defaults, constraints, search space and family defaults, in one place
(:mod:`gradtune._params`). The constructor checks every value against them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from gradtune._params import (
    check_fields,
    nested,
    override,
    param,
    params_table,
    space_of,
    text_overrides,
)
from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle

__all__ = ["LinearHead", "MethodResult", "Method", "register_method", "get_method",
           "list_methods", "METHODS", "erm_head", "param", "nested", "override", "finetune_block",
           "FINETUNE_SPACE"]


@dataclass
class LinearHead:
    """A linear classifier ``logits = features @ weight.T + bias``.

    weight : np.ndarray (C, d) float32; bias : np.ndarray (C,) float32.
    """

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.weight, torch.Tensor):
            self.weight = self.weight.detach().cpu().numpy()
        if isinstance(self.bias, torch.Tensor):
            self.bias = self.bias.detach().cpu().numpy()
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n, C) logits."""
        return np.asarray(features, dtype=np.float32) @ self.weight.T + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(axis=1)


@dataclass
class MethodResult:
    """What a method returns.

    model : an object with ``logits(features (n, d)) -> (n, C)`` (usually a LinearHead)
    diagnostics : JSON-friendly dict (selected indices, scores, chosen hyperparameters, ...)
    """

    model: Any
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """Base class of a last-layer method. Subclasses are dataclasses of hyperparameters.

    A subclass declares each hyperparameter once, as a dataclass field made by
    :func:`param` (or :func:`nested` for a block such as the fine-tuning optimizer): its
    default, constraint, search-space values (for :mod:`gradtune.methods.tuning`),
    text-family default, fast-test value and doc line. The dataclass's ``__init__`` then
    checks every value (:meth:`__post_init__`); ``search_space``, ``family_defaults`` and
    the config checker read the same declarations.
    """

    name: ClassVar[str] = ""
    uses_group_labels_train: ClassVar[bool] = False
    uses_group_labels_val: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)

    @abstractmethod
    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        """Fit on a bundle with ``heldout`` rows resolved; never reads ``test`` rows."""

    def params(self) -> dict[str, Any]:
        """Hyperparameters as a JSON-friendly dict."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        return out

    @classmethod
    def search_space(cls) -> dict[str, list]:
        """The default grid, ``{parameter: [values]}`` (dotted keys for a block's fields),
        from the declarations' ``space`` values; ``{}`` when there is nothing to tune or
        the method tunes itself."""
        return space_of(cls)

    @classmethod
    def family_defaults(cls, family: str | None) -> dict[str, Any]:
        """Dotted hyperparameter defaults of this method for a data family.

        ``family`` is ``"vision"``, ``"text"``, ``"tabular"`` or None (unknown). The class
        defaults are the vision setting; for ``"text"`` every declaration with a ``text``
        value that differs from this method's default gives one key (for a method with a
        :class:`~gradtune.finetune.linear.FinetuneConfig` block: the paper's text optimizer,
        AdamW, lr 1e-5, linear, batch 16, as ``finetune.*`` keys). Configs and user
        parameters override these.
        """
        return text_overrides(cls) if family == "text" else {}

    @property
    def group_label_use(self) -> str:
        """'train+val', 'val', or 'none'."""
        if self.uses_group_labels_train:
            return "train+val"
        return "val" if self.uses_group_labels_val else "none"


#: The grid of the methods that fine-tune with GradTune's loop, over their ``finetune``
#: block; tuning the number of epochs lets label-free selection stop before fine-tuning
#: collapses worst-group accuracy.
FINETUNE_SPACE: dict[str, list] = {"epochs": [10, 100, 500], "lr": [1e-3, 3e-3, 1e-2]}


def finetune_block(*, space: dict[str, list] | None = FINETUNE_SPACE, fast_epochs: int | None = 2,
                   **overrides: Any) -> Any:
    """The ``finetune`` field of a method that fine-tunes with GradTune's loop: a
    :class:`~gradtune.finetune.linear.FinetuneConfig` block (the paper's vision setting,
    its text setting for text data) with this method's default ``overrides``, searched
    over ``space`` and run for ``fast_epochs`` epochs in unit tests (None: the method
    sets the epochs itself)."""
    from gradtune.finetune.linear import FinetuneConfig

    return nested(FinetuneConfig, "the last-layer fine-tuning loop", space=space or {},
                  fast={} if fast_epochs is None else {"epochs": fast_epochs}, **overrides)


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add a Method subclass to the registry under ``cls.name``, and append
    the table of its declared parameters (:func:`~gradtune._params.params_table`) to its
    docstring."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a non-empty `name`")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} is already registered by {METHODS[cls.name].__name__}")
    METHODS[cls.name] = cls
    table = params_table(cls)
    if table and cls.__doc__ and "Declared parameters" not in (cls.__dict__.get("__doc__") or ""):
        cls.__doc__ = cls.__doc__.rstrip() + "\n\n    Declared parameters\n    -------------------\n" + table + "\n"
    return cls


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    _import_builtin_methods()
    return sorted(METHODS)


def get_method(name: str, **params: Any) -> Method:
    """Instantiate a registered method by name with hyperparameter overrides."""
    _import_builtin_methods()
    if name not in METHODS:
        raise GradTuneInputError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        valid = [f.name for f in fields(METHODS[name])]  # type: ignore[arg-type]
        raise GradTuneInputError(f"bad parameters for method {name!r}: {err}; valid parameters: {valid}") from None


_DISCOVERED = False


def _import_builtin_methods() -> None:
    """Import every module of :mod:`gradtune.methods` once: a method registers itself where
    it is defined (``@register_method``), so a new module is found without a list to edit."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import importlib
    import pkgutil

    import gradtune.methods

    for info in pkgutil.iter_modules(gradtune.methods.__path__):
        importlib.import_module(f"gradtune.methods.{info.name}")
    _DISCOVERED = True


def erm_head(bundle: EmbeddingBundle) -> LinearHead:
    """The bundle's ERM head; a clear error if the bundle has none."""
    if bundle.head_weight is None:
        raise BundleError(
            "this method needs the ERM model's last layer: the bundle has no head_weight/head_bias. "
            "Store them when extracting embeddings, or run `gradtune tune --fit-erm-head` to fit one on the train rows"
        )
    return LinearHead(bundle.head_weight, bundle.head_bias)
