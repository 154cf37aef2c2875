"""Step-size schedules over a run of optimizer steps, shared by every trainer.

:func:`scheduled_lr` is the step size at a 0-based step of ``total`` (cosine to zero,
linear to zero, or constant); :func:`lr_factor` is the multiplier of the initial step
size with a linear warm-up first, as full-network training's ``LambdaLR`` takes it. The
compiled fine-tuning kernels (:mod:`gradtune.finetune._fused_steps`) carry a numba copy of
:func:`scheduled_lr`; the fine-tuning tests run every schedule through both loops.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULE_CODE", "scheduled_lr", "lr_factor"]

#: Integer code of each schedule name, for the compiled kernels.
SCHEDULE_CODE = {"constant": 0, "cosine": 1, "linear": 2}


def scheduled_lr(step: int, total: int, base_lr: float, schedule: int) -> float:
    """Step size at 0-based ``step`` of ``total`` steps, starting from ``base_lr``; ``schedule``
    is a :data:`SCHEDULE_CODE` value (1 cosine, 2 linear, else constant)."""
    if schedule == 1:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    if schedule == 2:
        return base_lr * (1.0 - step / total)
    return base_lr


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of the initial learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then cosine (0.5 (1 + cos(pi t))), linear
    (1 - t) or constant, where t runs from 0 to 1 over the remaining steps. Without
    warm-up this is :func:`scheduled_lr` with base 1 up to rounding: the cosine's angle is
    computed as ``pi * (step / total)`` here and ``pi * step / total`` there, and each
    form is kept so that existing runs and checkpoints reproduce exactly.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    return 1.0
