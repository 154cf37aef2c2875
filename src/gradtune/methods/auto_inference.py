"""The pseudo-groups ``gradtune-auto`` infers on both validation halves, before any audit.

Shapes: n held-out rows, m selection rows. Ids are ``2 * label + minority`` with minorities
too small to fit on merged into their class (:func:`~gradtune.methods.inferred.merge_small_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradtune._seeding import SeedStreams
from gradtune.embeddings.bundle import EmbeddingBundle, SplitView
from gradtune.groups.xrm import XRMConfig
from gradtune.methods.base import LinearHead
from gradtune.methods.inferred import TwinsCache, bundle_pseudo_groups, merge_small_groups

__all__ = ["auto_pseudo_groups"]


def auto_pseudo_groups(bundle: EmbeddingBundle, held: SplitView, sel: SplitView, head: LinearHead,
                       streams: SeedStreams, n_classes: int, *, inferences: Sequence[str], features: str,
                       pool: str, rule: str, xrm_config: XRMConfig, twins: TwinsCache | None = None,
                       ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """{inference: (held-out ids (n,), selection ids (m,))} in the order of ``inferences``
    (``"xrm"``: the twins' minority, read as
    :func:`~gradtune.methods.inferred.bundle_pseudo_groups` reads it; ``"erm_error"``: the
    rows ``head`` gets wrong), and the XRM diagnostics (empty without ``"xrm"``). ``twins``: twins
    fitted on the ``train`` rows by an earlier call on a dealing of the same bundle's halves
    (:class:`~gradtune.methods.inferred.TwinsCache`; the result is the same)."""
    flags: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    info: dict[str, Any] = {}
    if "xrm" in inferences:
        pg = bundle_pseudo_groups(bundle, seed=streams.integer("xrm", modulo=2**31), features=features, pool=pool,
                                  rule=rule, config=xrm_config, cache=twins)
        flags["xrm"] = (pg.held % 2 == 1, pg.sel % 2 == 1)
        info = dict(pg.info)
    if "erm_error" in inferences:
        flags["erm_error"] = (head.predict(held.features) != held.labels, head.predict(sel.features) != sel.labels)
    out = {}
    for name in inferences:
        f_held, f_sel = flags[name]
        out[name] = merge_small_groups(2 * held.labels + f_held, held.labels, 2 * sel.labels + f_sel, sel.labels,
                                       n_classes)
    return out, info
