"""Label-free group inference: pseudo-groups for a pool that has no group labels.

A pipeline stage between scoring and the group-aware last-layer methods: each method
maps what is known about the pool (encoder features, class labels, an ERM model's
logits or head) to :class:`InferredGroups`, and :func:`inference_quality` checks them
against true groups where those exist (a diagnostic only). :func:`infer_groups` runs a
method by name (:data:`GROUP_INFERENCE`).
"""

from gradtune.groups.base import InferredGroups, class_by_flag
from gradtune.groups.cluster import ClusterConfig, cluster_groups
from gradtune.groups.erm_signals import (
    early_disagreement_groups,
    grad_norm_groups,
    top_fraction_per_class,
)
from gradtune.groups.gce import GCEConfig, GCEProbe, fit_gce_probe, gce_groups, gce_loss
from gradtune.groups.quality import InferenceQuality, inference_quality, true_minority
from gradtune.groups.registry import (
    GROUP_INFERENCE,
    SHARED_INPUTS,
    GroupInferenceSpec,
    infer_groups,
)
from gradtune.groups.xrm import (
    XRMConfig,
    XRMSchedule,
    XRMTwins,
    draw_xrm_schedule,
    fit_xrm,
    xrm_groups,
)

__all__ = [
    "InferredGroups",
    "class_by_flag",
    "ClusterConfig",
    "cluster_groups",
    "early_disagreement_groups",
    "grad_norm_groups",
    "top_fraction_per_class",
    "GCEConfig",
    "GCEProbe",
    "fit_gce_probe",
    "gce_groups",
    "gce_loss",
    "InferenceQuality",
    "inference_quality",
    "true_minority",
    "GROUP_INFERENCE",
    "SHARED_INPUTS",
    "GroupInferenceSpec",
    "infer_groups",
    "XRMConfig",
    "XRMSchedule",
    "XRMTwins",
    "draw_xrm_schedule",
    "fit_xrm",
    "xrm_groups",
]
