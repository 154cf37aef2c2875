"""infer_groups: names, shared inputs, missing and unknown inputs."""

import numpy as np
import pytest
import torch

from gradtune import GradTuneInputError
from gradtune.groups import (
    GROUP_INFERENCE,
    GCEConfig,
    XRMConfig,
    early_disagreement_groups,
    gce_groups,
    grad_norm_groups,
    infer_groups,
    xrm_groups,
)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    w = torch.randn(2, 4, generator=g)
    return {
        "features": x, "labels": torch.randint(0, 2, (60,), generator=g), "seed": 0,
        "logits": x @ w.T, "early_logits": torch.randn(60, 2, generator=g),
        "head_features": x, "weight": w, "bias": None,
    }


def test_names():
    assert set(GROUP_INFERENCE) == {"xrm", "early-disagreement", "gce", "cluster", "grad-norm"}


def test_each_method_runs_on_one_shared_dict(inputs):
    cfg = {"xrm": XRMConfig(n_steps=20), "gce": GCEConfig(n_steps=20)}
    for name in GROUP_INFERENCE:
        extra = {"config": cfg[name]} if name in cfg else {}
        r = infer_groups(name, **inputs, **extra)
        assert r.method == name and len(r) == 60
    # Same results as calling the functions.
    r = infer_groups("early-disagreement", **inputs)
    direct = early_disagreement_groups(inputs["logits"], inputs["early_logits"], inputs["labels"])
    np.testing.assert_array_equal(r.groups, direct.groups)
    r = infer_groups("grad-norm", **inputs, fraction=0.2)
    direct = grad_norm_groups(inputs["head_features"], inputs["labels"], weight=inputs["weight"],
                              logits=inputs["logits"], fraction=0.2)
    np.testing.assert_array_equal(r.scores, direct.scores)
    r = infer_groups("xrm", **inputs, config=cfg["xrm"], rule="either")
    np.testing.assert_array_equal(
        r.groups, xrm_groups(inputs["features"], inputs["labels"], seed=0, config=cfg["xrm"], rule="either").groups)
    r = infer_groups("gce", **inputs, config=cfg["gce"])
    np.testing.assert_array_equal(r.scores, gce_groups(inputs["features"], inputs["labels"], seed=0,
                                                       config=cfg["gce"]).scores)


def test_errors(inputs):
    with pytest.raises(GradTuneInputError, match="choose one of"):
        infer_groups("jtt", **inputs)
    missing = dict(inputs, early_logits=None)
    with pytest.raises(GradTuneInputError, match="early-disagreement needs early_logits"):
        infer_groups("early-disagreement", **missing)
    with pytest.raises(GradTuneInputError, match="needs seed"):
        infer_groups("xrm", features=inputs["features"], labels=inputs["labels"])
    with pytest.raises(GradTuneInputError, match="weight .* or logits"):
        infer_groups("grad-norm", head_features=inputs["features"], labels=inputs["labels"])
    with pytest.raises(GradTuneInputError, match="unknown input.*fraktion"):
        infer_groups("grad-norm", **inputs, fraktion=0.1)
