"""The stress suite: its development / report split rule, its synthetic bundles, and
gradtune-auto on a no-shortcut control (the ERM head kept) without reading group labels."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from gradtune.data.synthetic import ShortcutSpec
from gradtune.experiments.stress import STRESS_SUITE, build_member_bundle, suite_members
from gradtune.experiments.stress_members import _MEMBERS
from gradtune.methods import get_method


def test_split_rule_alternates_within_each_family() -> None:
    seen: Counter[str] = Counter()
    for m in _MEMBERS:                                 # the order the members are listed in
        want = "dev" if seen[m.family] % 2 == 0 else "report"
        assert STRESS_SUITE[m.name].role == want, m.name
        seen[m.family] += 1
    for fam in seen:                                   # every family on both sides
        roles = {m.role for m in STRESS_SUITE.values() if m.family == fam}
        assert roles == {"dev", "report"}, fam
    dev, rep = suite_members("dev"), suite_members("report")
    assert not {m.name for m in dev} & {m.name for m in rep}
    assert len(dev) + len(rep) == len(STRESS_SUITE)
    assert any(m.control for m in rep) and any(m.control for m in dev)
    with pytest.raises(ValueError, match="role"):
        suite_members("test")


def test_no_two_synthetic_members_draw_the_same_rows() -> None:
    # the run seed replaces ``build_seed``, so two members whose specs differ only in name or
    # build seed would be the same problem (and, across halves, a report member seen in development)
    seen: dict[tuple, str] = {}
    for m in STRESS_SUITE.values():
        if isinstance(m.spec, ShortcutSpec):
            key = (m.erm, tuple(sorted((k, repr(v)) for k, v in m.spec.to_dict().items()
                                       if k not in ("name", "build_seed"))))
            assert key not in seen, f"{m.name} repeats {seen[key]}"
            seen[key] = m.name


def test_synthetic_bundle_splits_head_and_logits() -> None:
    b = build_member_bundle("lin-weak-core-64", 0)
    for split in ("train", "heldout", "selection", "test"):
        assert b.has_split(split)
    np.testing.assert_array_equal(b.features, b.encoder_features)       # linear ERM on the rows
    np.testing.assert_allclose(b.logits, b.features @ b.head_weight.T + b.head_bias, rtol=1e-5, atol=1e-4)
    test = b.view("test")
    assert len(set(np.bincount(test.groups).tolist())) == 1              # group-balanced test rows
    # the shortcut works: ERM's worst test group is far below its average
    ok = test.logits.argmax(1) == test.labels
    assert min(ok[test.groups == g].mean() for g in np.unique(test.groups)) < ok.mean() - 0.2
    again = build_member_bundle("lin-weak-core-64", 0)
    np.testing.assert_array_equal(again.features, b.features)
    with pytest.raises(ValueError, match="unknown stress member"):
        build_member_bundle("no-such-member", 0)


def test_gradtune_auto_keeps_erm_on_a_control_and_reads_no_group_label() -> None:
    b = build_member_bundle("control-2class", 0)
    params = {"xrm_steps": 500, "num_retrains": 2}
    res = get_method("gradtune-auto", **params).fit(b, seed=0)
    assert res.diagnostics["guard_kept_erm"], res.diagnostics["candidates"]
    np.testing.assert_array_equal(res.model.weight, b.head_weight)
    assert res.diagnostics["guard_reason"]
    stripped = replace(b, groups=None, attributes=None, group_names=None)
    again = get_method("gradtune-auto", **params).fit(stripped, seed=0)
    np.testing.assert_array_equal(again.model.weight, res.model.weight)
    assert again.diagnostics["candidates"] == res.diagnostics["candidates"]
