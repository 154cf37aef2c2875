"""Temporarily set the number of torch threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gradtune._errors import GradTuneInputError

__all__ = ["torch_threads", "check_num_threads", "MAX_THREADS"]

MAX_THREADS = 1024
"""Most torch threads a config may ask for: far above any machine's cores, far below the
counts at which ``torch.set_num_threads`` crashes the process (100 000 does)."""


def check_num_threads(n: object, name: str = "num_threads") -> int | None:
    """``n`` as a thread count in 1..:data:`MAX_THREADS` (None passes: torch's setting is kept)."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int):
        raise GradTuneInputError(f"{name} must be an integer or None, got {n!r}")
    if not 1 <= n <= MAX_THREADS:
        raise GradTuneInputError(f"{name} must lie in 1..{MAX_THREADS} (or be None), got {n}")
    return n


@contextmanager
def torch_threads(n: int | None = 1) -> Iterator[None]:
    """Run a block with ``n`` torch threads, restoring the previous count after; ``None``
    leaves the setting alone. Loops of tiny steps run fastest and steadiest on one
    thread, above all when other processes share the cores."""
    if check_num_threads(n) is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
