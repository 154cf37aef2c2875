"""One planned run of an experiment: a method with its settings, on a benchmark and seed.

Configs (:mod:`gradtune.experiments.config`) produce these; the runner
(:mod:`gradtune.experiments.runner`) executes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from gradtune.methods.base import Method

__all__ = ["RunSpec"]


@dataclass(frozen=True)
class RunSpec:
    """One run: a method (registry name, hyperparameter overrides) on a benchmark and seed.

    ``params`` are ``(key, value)`` pairs; dotted keys (``"finetune.epochs"``) set a field of a
    dataclass-valued parameter. ``label`` is the display name (default: the method name).
    """

    benchmark: str
    seed: int
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    label: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.method

    def build(self) -> Method:
        from gradtune.methods.tuning import build_method

        return build_method(self.method, dict(self.params))
