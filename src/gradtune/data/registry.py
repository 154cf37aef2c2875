"""Name -> reader registry for the paper's four benchmarks, and their Table 2 group counts.

Each reader registers itself where it is defined (:func:`register_dataset`, with its
Table 2 counts and any aliases); the registry imports every module of :mod:`gradtune.data`
before its tables are read, so a new reader needs no entry here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gradtune.data.base import GroupedDataset

__all__ = ["DATASETS", "PAPER_GROUP_COUNTS", "load_dataset", "register_dataset"]

_READERS: dict[str, Callable[..., GroupedDataset]] = {}
_COUNTS: dict[str, dict[str, tuple[int, ...]]] = {}
# read through the module's __getattr__, after every reader has registered itself:
DATASETS: dict[str, Callable[..., GroupedDataset]]
"""Readers by benchmark name; each takes the dataset folder first."""
PAPER_GROUP_COUNTS: dict[str, dict[str, tuple[int, ...]]]
"""Samples per group and split in the GradTune paper's Table 2 (group ids in order), by name.

One printed typo is corrected: Waterbirds test landbird counts are 2255, not 2225.
"""
_ALIASES: dict[str, str] = {}
_Reader = Callable[..., GroupedDataset]


def register_dataset(name: str, *, paper_group_counts: dict[str, tuple[int, ...]],
                     aliases: tuple[str, ...] = ()) -> Callable[[_Reader], _Reader]:
    """Decorator: register a reader (dataset folder first) under ``name``, with the
    samples per group and split of the GradTune paper's Table 2 (group ids in order) and
    other accepted spellings of the name."""
    def register(reader: _Reader) -> _Reader:
        known = _READERS.get(name)
        if known is not None and known is not reader:
            raise TypeError(f"dataset {name!r} is already registered by {known.__qualname__}")
        _READERS[name] = reader
        _COUNTS[name] = dict(paper_group_counts)
        _ALIASES.update({a: name for a in aliases})
        return reader

    return register


def _discover() -> None:
    """Import every module of :mod:`gradtune.data` (each registers its reader)."""
    import importlib
    import pkgutil

    import gradtune.data

    for info in pkgutil.iter_modules(gradtune.data.__path__):
        if not info.ispkg:
            importlib.import_module(f"gradtune.data.{info.name}")


def __getattr__(name: str) -> Any:
    # DATASETS: readers by benchmark name; PAPER_GROUP_COUNTS: their Table 2 counts.
    if name in ("DATASETS", "PAPER_GROUP_COUNTS"):
        _discover()
        return _READERS if name == "DATASETS" else _COUNTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, root: str | os.PathLike[str], **kwargs: Any) -> GroupedDataset:
    """Load benchmark ``name`` from ``root`` with its reader.

    Parameters
    ----------
    name : str
        One of ``DATASETS`` (case-insensitive; ``"mnli"`` and ``"civil_comments"`` are
        accepted aliases).
    root : path
        The dataset folder (see each reader for the accepted layouts).
    **kwargs
        Passed to the reader (e.g. ``variant=`` for CelebA, ``groups=`` for CivilComments).

    Raises
    ------
    ValueError
        If ``name`` is not a known benchmark.
    """
    _discover()
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _READERS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(_READERS))}."
        )
    return _READERS[key](root, **kwargs)
