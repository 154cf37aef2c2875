"""Temporarily set the number of torch threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: int | None = 1) -> Iterator[None]:
    """Run a block with ``n`` torch threads, restoring the previous count after; ``None``
    leaves the setting alone. Loops of tiny steps run fastest and steadiest on one
    thread, above all when other processes share the cores."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
