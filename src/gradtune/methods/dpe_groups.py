"""DPE with the authors' epoch choice, which reads validation group labels (a marked variant).

The authors' DPE code keeps, for every member, the epoch of best worst-group accuracy on
the validation set computed with its *true* groups, also when the prototypes themselves
are trained without attributes. ``"dpe-val-groups"`` does the same on the ``selection``
rows (their ``groups``); everything else is :class:`~gradtune.methods.dpe.DPEMethod`
(members in order, class-balanced held-out subsamples). It reads group labels of
validation data and is marked so (``uses_group_labels_val``); the label-free default is
``"dpe"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.methods.base import override, register_method
from gradtune.methods.dpe import DPEMethod
from gradtune.metrics import worst_group_accuracy

__all__ = ["DPEValGroupsMethod"]


@register_method
@dataclass
class DPEValGroupsMethod(DPEMethod):
    """DPE whose members keep the epoch of best selection-row worst-group accuracy (true groups).

    Parameters as :class:`~gradtune.methods.dpe.DPEMethod`; ``selection`` is ``'val_groups'``.
    """

    name = "dpe-val-groups"
    description = "DPE with the authors' epoch choice: worst-group accuracy on validation rows with true groups"
    uses_group_labels_val: ClassVar[bool] = True
    selections: ClassVar[tuple[str, ...]] = ("val_groups",)

    selection: str = override(DPEMethod, "selection", "val_groups", choices=("val_groups",))

    def _scorer(self, bundle: EmbeddingBundle, head: Any, c: int) -> Callable[[np.ndarray], float]:
        sel = bundle.view("selection")
        if sel.groups is None:
            raise BundleError("dpe-val-groups picks epochs by worst-group accuracy on the selection rows, but the "
                              "bundle has no 'groups'; store group ids, or use the label-free 'dpe'")
        return lambda z: worst_group_accuracy(z.argmax(axis=1), sel.labels, sel.groups)
