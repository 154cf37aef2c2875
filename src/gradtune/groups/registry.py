"""Group-inference methods by name, callable with one shared set of inputs.

Each method registers itself where it is defined (:func:`register_group_inference`);
the registry imports every module of :mod:`gradtune.groups` before a lookup, so a new
module needs no entry here.

:func:`infer_groups` takes a method name and keyword inputs. The shared inputs
(:data:`SHARED_INPUTS`) describe the pool the same way for every method, so one dict
of them can be handed to each method in turn; a method ignores the shared inputs it
does not use, and takes its own options (``config``, ``rule``, ``fraction``, ...) by
their parameter names. A name that is neither is an error, as is a missing input.

Shapes: N pool rows, d encoder features, h penultimate features, C classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradtune._errors import GradTuneInputError
from gradtune.groups.base import InferredGroups

__all__ = ["GROUP_INFERENCE", "SHARED_INPUTS", "GroupInferenceSpec", "infer_groups", "register_group_inference",
           "list_group_inferences"]

SHARED_INPUTS: dict[str, str] = {
    "features": "(N, d) features of the pool, e.g. a frozen encoder's",
    "labels": "(N,) class labels",
    "logits": "(N, C) the final ERM model's logits",
    "early_logits": "(N, C) an early ERM checkpoint's logits",
    "head_features": "(N, h) inputs of the ERM model's last linear layer",
    "weight": "(C, h) the ERM head's weight",
    "bias": "(C,) the ERM head's bias",
    "seed": "int seed (or generator) for the method's random choices",
    "n_classes": "C, when a class is absent from the pool",
}


@dataclass(frozen=True)
class GroupInferenceSpec:
    """One registered method.

    Attributes
    ----------
    name : str
    function : callable
        Returns :class:`InferredGroups`.
    requires : tuple
        Input names it needs; a tuple entry inside means any one of those names.
    description : str
    """

    name: str
    function: Callable[..., InferredGroups]
    requires: tuple[str | tuple[str, ...], ...]
    description: str

    def parameters(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.function).parameters)


GROUP_INFERENCE: dict[str, GroupInferenceSpec] = {}
"""The registered methods by name (filled by :func:`register_group_inference`)."""

_Infer = Callable[..., InferredGroups]


def register_group_inference(name: str, requires: tuple[str | tuple[str, ...], ...],
                             description: str) -> Callable[[_Infer], _Infer]:
    """Decorator: register a group-inference function under ``name``; ``requires`` names
    the shared inputs it needs (a tuple inside: any one of those)."""
    for r in requires:
        for k in (r if isinstance(r, tuple) else (r,)):
            if k not in SHARED_INPUTS:
                raise TypeError(f"{name}: {k!r} is not a shared input ({sorted(SHARED_INPUTS)})")

    def register(function: _Infer) -> _Infer:
        known = GROUP_INFERENCE.get(name)
        if known is not None and known.function is not function:
            raise TypeError(f"group inference {name!r} is already registered by {known.function.__qualname__}")
        GROUP_INFERENCE[name] = GroupInferenceSpec(name, function, requires, description)
        return function

    return register


def _discover() -> None:
    """Import every module of :mod:`gradtune.groups` (each registers its methods)."""
    import importlib
    import pkgutil

    import gradtune.groups

    for info in pkgutil.iter_modules(gradtune.groups.__path__):
        importlib.import_module(f"gradtune.groups.{info.name}")


def list_group_inferences() -> list[str]:
    """The registered group-inference methods, sorted."""
    _discover()
    return sorted(GROUP_INFERENCE)


def _describe(req: str | tuple[str, ...]) -> str:
    if isinstance(req, tuple):
        return " or ".join(f"{r} ({SHARED_INPUTS[r]})" for r in req)
    return f"{req} ({SHARED_INPUTS[req]})"


def infer_groups(name: str, **inputs: Any) -> InferredGroups:
    """Run the group-inference method ``name`` on keyword inputs.

    Parameters
    ----------
    name : {"xrm", "early-disagreement", "gce", "cluster", "grad-norm"}
    **inputs
        Shared inputs (see :data:`SHARED_INPUTS`; None counts as absent) and the
        method's own options.

    Returns
    -------
    InferredGroups

    Raises
    ------
    GradTuneInputError
        For an unknown method, a missing input, or an input name the method does
        not know.
    """
    _discover()
    spec = GROUP_INFERENCE.get(name)
    if spec is None:
        raise GradTuneInputError(
            f"unknown group-inference method {name!r}; choose one of {sorted(GROUP_INFERENCE)}")
    given = {k: v for k, v in inputs.items() if v is not None}
    params = spec.parameters()
    unknown = sorted(set(given) - set(params) - set(SHARED_INPUTS))
    if unknown:
        own = sorted(set(params) - set(SHARED_INPUTS))
        raise GradTuneInputError(
            f"{name}: unknown input(s) {unknown}; shared inputs are {sorted(SHARED_INPUTS)}, "
            f"its own options {own}")
    missing = [r for r in spec.requires
               if not (any(a in given for a in r) if isinstance(r, tuple) else r in given)]
    if missing:
        raise GradTuneInputError(
            f"{name} needs " + "; ".join(_describe(r) for r in missing))
    return spec.function(**{k: v for k, v in given.items() if k in params})
