"""Which unlabeled deployment rows gradtune-auto's guard weighs its pseudo-groups by.

A validation set that carries the training bias cannot show how deployment weighs the
rows it holds: whether the head's hard rows are a group that deployment holds more of (a
shortcut's minority) or the tail of one distribution (a problem with nothing to repair).
Unlabeled rows from deployment can (:mod:`gradtune.selection.shift`). They come from one of
two places, and only their features are read:

- the bundle's own ``deployment_features`` (M, d): rows without labels or a split, which a
  user adds because they are the deployment's (``gradtune.repair(deployment_loader=...)``,
  ``gradtune tune --deployment-features``); read by default when present;
- a labeled split named by ``deployment_split`` (e.g. ``"test"`` in a study), whose labels
  are never read.
"""

from __future__ import annotations

import numpy as np

from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import SPLIT_NAMES, EmbeddingBundle

__all__ = ["DEPLOYMENT_CHOICES", "DEPLOYMENT_OFF", "UNWEIGHTED", "deployment_rows", "deployment_source"]

DEPLOYMENT_OFF = "off"
DEPLOYMENT_CHOICES = (DEPLOYMENT_OFF, *SPLIT_NAMES)

UNWEIGHTED = (   # what a repair made without deployment rows says (an INFO log)
    "gradtune-auto repaired the head, judged as if deployment weighs the inferred groups equally; with unlabeled "
    "rows from deployment (gradtune.repair(deployment_loader=...), gradtune tune --deployment-features, or a "
    "bundle's deployment_features) it is judged by their shares instead")


def deployment_source(bundle: EmbeddingBundle, spec: str | None) -> str | None:
    """Where the deployment rows come from: ``"deployment_features"``, a split's name, or None.

    ``spec``: None reads the bundle's ``deployment_features`` when it has them; ``"off"`` reads
    none; a split name reads that split's features (an error names the splits present when it
    has no rows)."""
    if spec is None:
        return "deployment_features" if bundle.deployment_features is not None else None
    if spec not in DEPLOYMENT_CHOICES:
        raise GradTuneInputError(f"deployment_split must be None (the bundle's deployment_features when present), "
                                 f"'off' or a split name {list(SPLIT_NAMES)}, got {spec!r}")
    if spec == DEPLOYMENT_OFF:
        return None
    if not bundle.has_split(spec):
        bundle.view(spec)   # raises, naming the splits present
    return spec


def deployment_rows(bundle: EmbeddingBundle, spec: str | None) -> tuple[str | None, np.ndarray | None]:
    """(:func:`deployment_source`, the (M, d) features of those rows), or (None, None)."""
    source = deployment_source(bundle, spec)
    if source is None:
        return None, None
    if source == "deployment_features":
        return source, bundle.deployment_features
    return source, bundle.view(source).features
