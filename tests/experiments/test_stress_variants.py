"""Variants of stress members: more validation rows, the rest of the member unchanged."""

from __future__ import annotations

import pytest

from gradtune.experiments.stress import STRESS_SUITE, build_member_bundle
from gradtune.experiments.stress_variants import more_validation_rows


def test_more_validation_rows_scales_only_the_validation_split() -> None:
    base, more = build_member_bundle("lin-weak-core-64", 0), build_member_bundle(
        more_validation_rows("lin-weak-core-64", 2), 0)
    n = {s: (len(base.view(s)), len(more.view(s))) for s in ("train", "heldout", "selection", "test")}
    assert n["train"][1] == n["train"][0] and n["test"][1] == n["test"][0]
    assert n["heldout"][1] + n["selection"][1] == 2 * (n["heldout"][0] + n["selection"][0])
    assert more_validation_rows("lin-weak-core-64", 1) == STRESS_SUITE["lin-weak-core-64"]
    fm = more_validation_rows("fm-3class-bg-tied80", 3)             # an offline member: its loader's n_val
    assert fm.spec.load.n_val == 3 * STRESS_SUITE["fm-3class-bg-tied80"].spec.load.n_val
    assert fm.spec.load.n_train == STRESS_SUITE["fm-3class-bg-tied80"].spec.load.n_train
    with pytest.raises(ValueError, match="positive int"):
        more_validation_rows("lin-weak-core-64", 0)
    with pytest.raises(ValueError, match="does not declare its validation rows"):
        more_validation_rows("adult", 2)
