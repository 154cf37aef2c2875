"""Variants of stress-suite members for development studies (never for the report half).

:func:`more_validation_rows` rebuilds a member with more validation rows, to measure how much
a label-free guard gains from a larger held-out set (``benchmarks/stress.py --val-rows``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gradtune.data.synthetic import ShortcutSpec
from gradtune.experiments.stress import STRESS_SUITE, StressMember

__all__ = ["more_validation_rows"]


def more_validation_rows(member: StressMember | str, factor: int) -> StressMember:
    """The same member with ``factor`` times its validation rows (same training and test sizes).

    For development studies of how much a label-free guard gains from a larger held-out set;
    the rows are a new draw, so no run of the member itself is reproduced. A loader that caps
    its validation rows (the reviews keep 4,000 training rows in all) raises its own error.
    """
    if isinstance(member, str):
        member = STRESS_SUITE[member]
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    spec = member.spec
    if isinstance(spec, ShortcutSpec):
        return replace(member, spec=replace(spec, n_val=spec.n_val * factor))
    load: Any = spec.load    # a dataclass loader with an n_val field, or a plain function
    n_val = getattr(load, "n_val", None)
    if not isinstance(n_val, int):
        raise ValueError(f"stress member {member.name!r} does not declare its validation rows (n_val); "
                         "only synthetic, Fashion-MNIST and reviews members can be scaled")
    return replace(member, spec=replace(spec, load=replace(load, n_val=n_val * factor)))
