"""Name -> reader registry for the paper's four benchmarks, and their Table 2 group counts."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gradtune.data.base import GroupedDataset
from gradtune.data.celeba import load_celeba
from gradtune.data.civilcomments import load_civilcomments
from gradtune.data.multinli import load_multinli
from gradtune.data.waterbirds import load_waterbirds

__all__ = ["DATASETS", "PAPER_GROUP_COUNTS", "load_dataset"]

DATASETS: dict[str, Callable[..., GroupedDataset]] = {
    "waterbirds": load_waterbirds,
    "celeba": load_celeba,
    "multinli": load_multinli,
    "civilcomments": load_civilcomments,
}
"""Readers by benchmark name; each takes the dataset folder first."""

_ALIASES = {"mnli": "multinli", "civil_comments": "civilcomments", "civil-comments": "civilcomments"}

PAPER_GROUP_COUNTS: dict[str, dict[str, tuple[int, ...]]] = {
    # group order = group ids: 2*label + attribute
    "waterbirds": {  # landbird-land, landbird-water, waterbird-land, waterbird-water
        "train": (3498, 184, 56, 1057),
        "val": (467, 466, 133, 133),
        # The paper (and DATASETS.md) print 2225/2225 here: a digit transposition. The
        # real test split has 5,794 images (2255+2255+642+642), and the three splits add
        # up to CUB's 11,788 only with 2255.
        "test": (2255, 2255, 642, 642),
    },
    "celeba": {  # not blond: female, male; blond: female, male
        "train": (71629, 66874, 22880, 1387),
        "val": (8535, 8276, 2874, 182),
        "test": (9767, 7535, 2480, 180),
    },
    "multinli": {  # (contradiction, entailment, neutral) x (no negation, negation)
        "train": (57498, 11158, 67376, 1521, 66630, 1992),
        "val": (22814, 4634, 26949, 613, 26655, 797),
        "test": (34597, 6655, 40496, 886, 39930, 1148),
    },
    "civilcomments": {  # (non-toxic, toxic) x (no identity, any of the 8 identities)
        "train": (148186, 90337, 12731, 17784),
        "val": (25159, 14966, 2111, 2944),
        "test": (74780, 43778, 6455, 8769),
    },
}
"""Samples per group and split in the GradTune paper's Table 2 (group ids in order).

One printed typo is corrected: Waterbirds test landbird counts are 2255, not 2225.
"""


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
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}."
        )
    return DATASETS[key](root, **kwargs)
