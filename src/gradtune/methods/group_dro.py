"""Group DRO (Sagawa et al., 2020) on the last layer: ``"group-dro"``.

:class:`GroupDROMethod` runs Group DRO's objective (:mod:`gradtune.objectives.group_dro`)
on the last layer only, over the ``heldout`` rows with their group labels: minibatches
drawn group-balanced (``1 / n_g`` with replacement), the online weights ``q`` updated per
batch with step size ``eta`` (the authors' ``robust_step_size``, 0.01), and strong
weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradtune._validation import (
    check_positive_int,
    make_generator,
)
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.head_loop import GroupDROObjective, augment, train_head, weighted_sampler
from gradtune.methods.balancing import require_groups, torch_threads
from gradtune.methods.base import LinearHead, Method, MethodResult, erm_head, param, register_method
from gradtune.objectives.group_dro import group_adjustment

__all__ = ["GroupDROMethod"]


def _train_head(h: torch.Tensor, y: torch.Tensor, g: torch.Tensor, theta: torch.Tensor, n_groups: int,
                group_counts: torch.Tensor, *, epochs: int, batch_size: int, lr: float, momentum: float,
                weight_decay: float, eta: float, adj: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch SGD on ``q . loss_g`` for a linear head ``theta`` (C, d+1), in place.

    Every epoch draws N rows with replacement with probability ``1 / n_g``
    (``torch.multinomial`` with ``gen``) and splits them into batches; the steps are
    :func:`gradtune.finetune.head_loop.train_head`'s. Returns ``(theta, q)``.
    """
    objective = GroupDROObjective(augment(h), y, theta.shape[0], g, n_groups,
                                  group_adjustment(adj, group_counts.to(h.dtype)), eta)
    sampler = weighted_sampler(1.0 / group_counts[g].to(torch.float64), gen)
    train_head(theta, objective, sampler, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
               weight_decay=weight_decay)
    return theta, objective.q


@register_method
@dataclass
class GroupDROMethod(Method):
    """Group DRO on the last layer, over the held-out rows and their group labels.

    Parameters
    ----------
    eta : float, default=0.01
        Group-weight step size (the authors' value).
    adj : float, default=0.0
        Generalization adjustment C (the authors search {0, ..., 5}; code default 0).
    epochs : int, default=100
    batch_size : int, default=32
    lr : float, default=1e-3
    momentum : float, default=0.9
    weight_decay : float, default=1e-2
        "Strong" L2 relative to ERM's 1e-4 (the authors use 1.0 with lr 1e-5 on a whole
        ResNet; on a head alone at lr 1e-3 that would erase it, so 1e-2 by default and
        {1e-3, 1e-2, 1e-1} in the search space).
    reset : bool, default=False
        Re-initialize the head (``nn.Linear`` init) instead of starting from the ERM head.
    """

    name = "group-dro"
    description = "Group DRO (Sagawa et al.) on the last layer: online group weights, group-balanced sampling"
    uses_group_labels_train = True
    uses_group_labels_val = True

    eta: float = param(0.01, "group-weight step size", ge=0)
    adj: float = param(0.0, "generalization adjustment C", ge=0, space=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0))
    epochs: int = param(100, "epochs over the held-out rows", ge=0, fast=2)
    batch_size: int = param(32, "batch size", ge=1)
    lr: float = param(1e-3, "learning rate", gt=0)
    momentum: float = param(0.9, "SGD momentum", ge=0)
    weight_decay: float = param(1e-2, "L2 weight decay", ge=0, space=(1e-3, 1e-2, 1e-1))
    reset: bool = param(False, "re-initialize the head instead of starting from the ERM head")

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed = check_positive_int(seed, "seed", allow_zero=True)
        epochs, bs, lr = int(self.epochs), int(self.batch_size), float(self.lr)  # checked when built
        head = erm_head(bundle)
        held = bundle.view("heldout")
        # q runs over the groups present in the held-out rows (ids compacted to 0..G-1)
        group_ids, g_np = np.unique(require_groups(held, self.name, "heldout"), return_inverse=True)
        n_groups = int(group_ids.size)
        gen = make_generator(seed)
        h = torch.as_tensor(held.features, dtype=torch.float32)
        y = torch.as_tensor(held.labels)
        g = torch.as_tensor(g_np.reshape(-1))
        counts = torch.bincount(g, minlength=n_groups).to(torch.float32)
        c, d = head.weight.shape
        if self.reset:
            bound = 1.0 / math.sqrt(d)
            theta = (torch.rand(c, d + 1, generator=gen) * 2 - 1) * bound
        else:
            theta = torch.cat([torch.as_tensor(head.weight), torch.as_tensor(head.bias)[:, None]], dim=1)
        with torch_threads(1):
            theta, q = _train_head(h, y, g, theta.clone(), n_groups, counts, epochs=epochs,
                                   batch_size=min(bs, h.shape[0]), lr=lr,
                                   momentum=float(self.momentum), weight_decay=float(self.weight_decay),
                                   eta=float(self.eta), adj=float(self.adj), gen=gen)
        diag = {"group_ids": group_ids.tolist(), "final_group_weights": q.tolist(),
                "group_counts": counts.tolist()}
        return MethodResult(LinearHead(theta[:, :d], theta[:, d]), diag)
