"""gradtune-auto and dfr-xrm: pseudo-groups, candidates, label-free choice, guard, and
never reading group labels or test rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from gradtune._seeding import seed_streams
from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.groups.xrm import XRMConfig, fit_xrm
from gradtune.methods import get_method, list_methods
from gradtune.methods.auto_candidates import retrain_head
from gradtune.methods.auto_votes import redealt_halves
from gradtune.methods.dfr import DFRMethod, fit_l1_logreg
from gradtune.methods.gradtune_auto import SEED_STREAMS, GradTuneAutoMethod
from gradtune.methods.inferred import bundle_pseudo_groups, merge_small_groups
from gradtune.metrics import evaluate
from gradtune.objectives.sampling import balanced_subsample
from tests.methods._synthetic import make_spurious_bundle
from tests.methods.conftest import garbage_test_rows

FAST = {"xrm_steps": 300, "epochs_grid": (1, 5, 20), "c_grid": (1.0, 0.1), "num_retrains": 2}
BOTH = {**FAST, "families": ("retrain", "finetune")}


@pytest.fixture(scope="module")
def biased() -> EmbeddingBundle:
    """Held-out / selection halves at the training correlation, with encoder features."""
    return make_spurious_bundle(n_train=400, n_heldout=600, n_selection=600, n_test=400, d=16,
                                seed=3, align_eval=0.9, encoder_dim=6)


def _no_groups(b: EmbeddingBundle) -> EmbeddingBundle:
    return replace(b, groups=None, attributes=None, group_names=None)


def test_registered_as_label_free() -> None:
    for name in ("gradtune-auto", "dfr-xrm"):
        assert name in list_methods()
        m = get_method(name)
        assert m.group_label_use == "none"


def test_never_reads_group_labels_or_test_rows(biased: EmbeddingBundle) -> None:
    every_inference = {**FAST, "inferences": ("xrm", "erm_error"), "families": ("retrain", "reweight", "finetune"),
                       "min_structure_auc": 0.0, "min_erm_minority_accuracy": 0.1, "audit_coverage": False}
    for name, params in (("gradtune-auto", FAST), ("gradtune-auto", every_inference),
                         ("gradtune-auto", {**FAST, "half_folds": 2}),
                         ("gradtune-auto", {**FAST, "split_votes": 3, "audit_coverage": False}),
                         ("dfr-xrm", {"num_retrains": 2})):
        ref = get_method(name, **params).fit(biased, seed=1).model
        for other in (_no_groups(biased), garbage_test_rows(biased)):
            got = get_method(name, **params).fit(other, seed=1).model
            np.testing.assert_array_equal(got.weight, ref.weight)
            np.testing.assert_array_equal(got.bias, ref.bias)
    # the every-inference run did build candidates of every inference and family
    kinds = {(c["inference"], c["family"])
             for c in get_method("gradtune-auto", **every_inference).fit(biased, seed=1).diagnostics["candidates"]}
    assert {(i, f) for i in ("xrm", "erm_error") for f in ("retrain", "reweight", "finetune")} <= kinds


def test_same_seed_same_head_other_seed_other_draws(biased: EmbeddingBundle) -> None:
    a = get_method("gradtune-auto", **BOTH).fit(biased, seed=4)
    b = get_method("gradtune-auto", **BOTH).fit(biased, seed=4)
    np.testing.assert_array_equal(a.model.weight, b.model.weight)
    assert a.diagnostics == b.diagnostics
    c = get_method("gradtune-auto", **BOTH).fit(biased, seed=5)
    assert c.diagnostics["selected_rows"] != a.diagnostics["selected_rows"]


def test_repairs_the_worst_group_in_the_biased_regime(biased: EmbeddingBundle) -> None:
    test = biased.view("test")
    erm = evaluate(test.logits, test.labels, test.groups).worst_group_accuracy
    # (this fixture's halves are too small to give every class a region of 10 rows)
    res = get_method("gradtune-auto", audit_coverage=False, **FAST).fit(biased, seed=0)
    got = evaluate(res.model.logits(test.features), test.labels, test.groups).worst_group_accuracy
    assert not res.diagnostics["guard_kept_erm"]
    assert got > erm + 0.1, (erm, got)
    # the inferred minority is mostly the true minority (diagnostic only)
    rows = np.asarray(res.diagnostics["inferred_minority_rows"])
    true_minority = biased.groups[rows] % 3 != 0          # groups (0, 1) and (1, 0)
    assert true_minority.mean() > 0.8


def test_choice_is_the_best_allowed_candidate_and_the_guard_keeps_erm(biased: EmbeddingBundle) -> None:
    m = get_method("gradtune-auto", confirm_z=None, max_pseudo_drop=None, audit_coverage=False, **BOTH)
    d = m.fit(biased, seed=0).diagnostics
    cands = d["candidates"]
    assert [c["family"] for c in cands] == ["erm", "retrain", "retrain", "finetune", "finetune", "finetune"]
    assert get_method("gradtune-auto", audit_coverage=False, **FAST).fit(biased, seed=0).diagnostics[
        "candidates"][-1]["family"] \
        == "retrain"                                         # the default families: retraining only
    # the guard recomputed from the reported values: beat ERM by the noise (the paired bootstrap
    # bound above the margin), keep most of the class-balanced accuracy, classify at least
    # min_repaired_accuracy x 2 / C of every audit cell (two classes here)
    erm_v, erm_b = cands[0]["value"], cands[0]["balanced_accuracy"]
    assert cands[0]["gain_bound"] == 0.0
    for c in cands[1:]:
        assert c["needed"] >= erm_v
        assert c["allowed"] == (c["value"] > c["needed"] and c["gain_bound"] > m.margin
                                and c["floor_value"] >= m.min_repaired_accuracy
                                and c["floor_value"] <= c["value"]
                                and c["balanced_accuracy"] >= erm_b - m.max_balanced_drop), c
    allowed = [c["value"] for c in cands if c["allowed"]]
    assert d["chosen_value"] == max(allowed)
    # a margin no candidate can pass keeps the ERM head exactly
    kept = get_method("gradtune-auto", margin=1.0, audit_coverage=False, **FAST).fit(biased, seed=0)
    assert kept.diagnostics["guard_kept_erm"] and kept.diagnostics["chosen_family"] == "erm"
    assert "noise" in kept.diagnostics["guard_reason"]
    np.testing.assert_array_equal(kept.model.weight, biased.head_weight)
    np.testing.assert_array_equal(kept.model.bias, biased.head_bias)
    # so does a floor no candidate reaches, and the reason names it
    floor = get_method("gradtune-auto", min_repaired_accuracy=1.0, audit_coverage=False, **FAST).fit(biased, seed=0)
    assert floor.diagnostics["guard_kept_erm"] and "min_repaired_accuracy" in floor.diagnostics["guard_reason"]


def test_retrain_candidate_is_the_average_of_balanced_l1_fits() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    y = (x[:, 0] + 0.3 * rng.normal(size=120) > 0).astype(np.int64)
    g = 2 * y + (rng.random(120) < 0.2)
    head = retrain_head(x, y, g, 0.5, 2, 3, np.random.default_rng(7), 11)   # num_retrains=3
    scaler = StandardScaler().fit(x)
    r = np.random.default_rng(7)
    fits = [fit_l1_logreg(scaler.transform(x)[s], y[s], 0.5, 2, random_state=11)
            for s in (balanced_subsample(g, r) for _ in range(3))]
    coef = np.mean([f[0] for f in fits], axis=0) / scaler.scale_[None, :]
    icpt = np.mean([f[1] for f in fits], axis=0) - coef @ scaler.mean_
    z = x @ coef.T + icpt                                   # (n, 1) decision function
    np.testing.assert_allclose(head.logits(x)[:, 1] - head.logits(x)[:, 0], z[:, 0], atol=1e-4)


def test_pseudo_groups_use_encoder_features_and_the_train_rows(biased: EmbeddingBundle) -> None:
    cfg = XRMConfig(n_steps=200)
    train, held, sel = biased.view("train"), biased.view("heldout"), biased.view("selection")
    # default: twins fitted on the training rows' encoder features, both halves assigned
    pg = bundle_pseudo_groups(biased, seed=2, config=cfg)
    assert pg.info["features"] == "encoder_features" and pg.info["pool"] == "train"
    twins = fit_xrm(train.encoder_features, train.labels, seed=2, config=cfg, n_classes=2)
    np.testing.assert_array_equal(pg.held, twins.assign(held.encoder_features, held.labels).groups)
    np.testing.assert_array_equal(pg.sel, twins.assign(sel.encoder_features, sel.labels).groups)
    # train + held-out pool: the held-out rows' groups are the pool's tail
    both = bundle_pseudo_groups(biased, seed=2, config=cfg, pool="train+heldout")
    x_pool = np.concatenate([train.encoder_features, held.encoder_features])
    y_pool = np.concatenate([train.labels, held.labels])
    twins = fit_xrm(x_pool, y_pool, seed=2, config=cfg, n_classes=2)
    np.testing.assert_array_equal(both.held, twins.pool_groups(x_pool, y_pool).groups[len(train):])
    np.testing.assert_array_equal(both.sel, twins.assign(sel.encoder_features, sel.labels).groups)
    # without train rows "auto" falls back to the held-out pool
    no_train = replace(biased, split=np.where(biased.split == "train", "val", biased.split))
    assert bundle_pseudo_groups(no_train, seed=2, config=cfg).info["pool"] == "heldout"
    only = bundle_pseudo_groups(biased, seed=2, config=cfg, pool="heldout", features="features")
    assert only.info == {**only.info, "features": "features", "pool": "heldout"}
    with pytest.raises(BundleError, match="encoder_features"):
        bundle_pseudo_groups(replace(biased, encoder_features=None), seed=0, features="encoder")
    with pytest.raises(GradTuneInputError, match="pool"):
        bundle_pseudo_groups(biased, seed=0, pool="test")


def test_dfr_xrm_is_dfr_on_the_pseudo_groups(biased: EmbeddingBundle) -> None:
    res = get_method("dfr-xrm", num_retrains=2).fit(biased, seed=0)
    pg = bundle_pseudo_groups(biased, seed=0)
    held, sel = biased.view("heldout"), biased.view("selection")
    gh, gs = merge_small_groups(pg.held, held.labels, pg.sel, sel.labels, 2)
    groups = np.zeros(len(biased.labels), dtype=np.int64)
    groups[held.index] = gh
    groups[sel.index] = gs
    ref = DFRMethod(num_retrains=2).fit(replace(biased, groups=groups, group_names=None), seed=0)
    np.testing.assert_array_equal(res.model.weight, ref.model.weight)
    assert res.diagnostics["best_c"] == ref.diagnostics["best_c"]


def test_merge_small_groups_by_hand() -> None:
    y_h = np.array([0, 0, 0, 1, 1, 1, 1])
    g_h = np.array([0, 1, 1, 2, 2, 3, 3])
    y_s = np.array([0, 0, 1, 1, 1, 1])
    g_s = np.array([0, 1, 2, 2, 3, 3])
    a, b = merge_small_groups(g_h, y_h, g_s, y_s, 2, min_rows=1)
    np.testing.assert_array_equal(a, g_h)
    np.testing.assert_array_equal(b, g_s)
    # class 0's groups hold 1 row in some half (< 2): merged; class 1 keeps both groups
    a, b = merge_small_groups(g_h, y_h, g_s, y_s, 2, min_rows=2)
    np.testing.assert_array_equal(a, [0, 0, 0, 2, 2, 3, 3])
    np.testing.assert_array_equal(b, [0, 0, 2, 2, 3, 3])


@pytest.mark.parametrize("bad", [{"families": ("magic",)}, {"features": "pixels"}, {"margin": -1},
                                 {"epochs_grid": (), "families": ("finetune",)}, {"c_grid": (0.0,)}, {"xrm_steps": 0},
                                 {"inferences": ()}, {"inferences": ("twins",)},
                                 {"min_repaired_accuracy": 1.5}, {"margin_z": -1}, {"structure_scale": "quantile"},
                                 {"split_votes": 2}, {"split_votes": 0}, {"votes_on": "never"}])
def test_bad_parameters_are_named(biased: EmbeddingBundle, bad: dict) -> None:
    with pytest.raises(GradTuneInputError):
        get_method("gradtune-auto", **{**FAST, **bad}).fit(biased, seed=0)


def test_guard_without_encoder_features_and_when_the_inference_repeats_the_head(biased: EmbeddingBundle) -> None:
    no_enc = replace(biased, encoder_features=None)
    res = get_method("gradtune-auto", **FAST).fit(no_enc, seed=0)
    assert res.diagnostics["guard_kept_erm"] and "no encoder_features" in res.diagnostics["guard_reason"]
    np.testing.assert_array_equal(res.model.weight, biased.head_weight)
    # encoder features that are the ERM head's own logits: the twins learn the head, their
    # "minority" is the head's own errors; the optional pre-check keeps the head
    head_view = replace(biased, encoder_features=biased.logits.copy())
    res = get_method("gradtune-auto", min_erm_minority_accuracy=0.2, **FAST).fit(head_view, seed=0)
    assert res.diagnostics["guard_kept_erm"] and "min_erm_minority_accuracy" in res.diagnostics["guard_reason"]
    np.testing.assert_array_equal(res.model.weight, biased.head_weight)
    # the check's statistic, recomputed: ERM accuracy on the inferred minority of both halves
    pg = bundle_pseudo_groups(head_view, seed=int(np.random.SeedSequence(0).spawn(4)[0].generate_state(1)[0] % 2**31),
                              config=XRMConfig(n_steps=FAST["xrm_steps"]))
    held, sel = head_view.view("heldout"), head_view.view("selection")
    ok = np.concatenate([held.logits.argmax(1) == held.labels, sel.logits.argmax(1) == sel.labels])
    minority = np.concatenate([pg.held, pg.sel]) % 2 == 1
    assert f"{ok[minority].mean():.0%}" in res.diagnostics["guard_reason"]


def test_keeping_the_erm_head_is_logged_with_its_reason(biased: EmbeddingBundle, caplog) -> None:
    with caplog.at_level("WARNING", logger="gradtune"):
        res = get_method("gradtune-auto", margin=1.0, **FAST).fit(biased, seed=0)
    assert res.diagnostics["guard_kept_erm"]
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(res.diagnostics["guard_reason"] in m for m in msgs), msgs
    assert not any("nan" in m for m in msgs)


def test_structure_gate_keeps_the_head_and_can_be_turned_off(biased: EmbeddingBundle) -> None:
    res = get_method("gradtune-auto", min_structure_auc=0.99, min_twin_auc=1.0, **FAST).fit(biased, seed=0)
    d = res.diagnostics
    assert d["guard_kept_erm"] and "min_structure_auc=0.99" in d["guard_reason"]
    assert "min_twin_auc=1" in d["guard_reason"]
    assert d["structure_auc"] is not None and d["structure_auc"] < 0.99
    np.testing.assert_array_equal(res.model.weight, biased.head_weight)
    passed = get_method("gradtune-auto", min_structure_auc=0.0, audit_coverage=False, **FAST).fit(biased,
                                                                                           seed=0).diagnostics
    assert passed["structure_auc"] == d["structure_auc"] and passed["candidates"]
    # the twins' route alone opens the gate too (the twins' minority is the shortcut's here)
    twin = get_method("gradtune-auto", min_structure_auc=1.0, min_twin_auc=0.0, audit_coverage=False,
                      **FAST).fit(biased, seed=0)
    assert twin.diagnostics["candidates"] and twin.diagnostics["twin_structure_auc"] == d["twin_structure_auc"]


def test_structure_gate_reads_the_features_on_the_chosen_scale() -> None:
    # a heavy-tailed no-shortcut member of the stress suite: the gate's AUCs are the audit
    # module's on the inference features of the two halves, on normal scores by default
    from gradtune.experiments.stress import build_member_bundle
    from gradtune.selection.audit import structure_aucs

    bundle = build_member_bundle("control-t3-128", 1)
    held, sel = bundle.view("heldout"), bundle.view("selection")
    enc_h, enc_s = (bundle.encoder_features[v.index] for v in (held, sel))
    wrong = [bundle.logits[v.index].argmax(1) != v.labels for v in (held, sel)]
    want = {scale: structure_aucs(enc_h, held.labels, bundle.logits[held.index], enc_s, sel.labels,
                                  [tuple(wrong)], 2, scale=scale)[0] for scale in ("rank", "standard")}

    def gate(scale: str, least: float) -> dict:
        return get_method("gradtune-auto", structure_scale=scale, min_structure_auc=least, min_twin_auc=1.0,
                          audit_coverage=False, **FAST).fit(bundle, seed=1).diagnostics

    for scale in ("rank", "standard"):
        d = gate(scale, 1.0)
        assert d["guard_kept_erm"] and d["structure_auc"] == pytest.approx(want[scale], abs=1e-12)
    # "both": a gate closed on normal scores stays closed (their AUC decided); an open one reads
    # the smaller AUC of the two scales
    assert gate("both", 1.0)["structure_auc"] == pytest.approx(want["rank"], abs=1e-12)
    opened = gate("both", 0.0)
    assert opened["candidates"] and opened["structure_auc"] == pytest.approx(min(want.values()), abs=1e-12)
    assert GradTuneAutoMethod().structure_scale == "both"


def test_the_repaired_accuracy_floor_scales_with_the_number_of_classes() -> None:
    # three classes, a mark tied to one of them (a stress-suite member): guessing gets a third of
    # a cell right, so the floor is min_repaired_accuracy x 2 / 3
    from gradtune.experiments.stress import build_member_bundle

    bundle = build_member_bundle("lin-mark-3class", 0)
    common = dict(min_structure_auc=0.0, max_pseudo_drop=None, confirm_z=None, gain_quantile=None, margin=0.0,
                  value_cells="mistakes", audit_coverage=False, **FAST)
    d = get_method("gradtune-auto", **common).fit(bundle, seed=0).diagnostics
    cands = d["candidates"]
    best = max(cands[1:], key=lambda c: c["value"])
    assert best["value"] > cands[0]["value"], cands       # a candidate that beats ERM's worst cell
    # a two-class floor just above that candidate's value refuses it; the same number given for
    # three classes (x 2 / 3) lets it through
    for given, allowed in ((best["value"] * 1.2, True), (best["value"] * 1.6, False)):
        got = get_method("gradtune-auto", min_repaired_accuracy=given, **common).fit(bundle, seed=0).diagnostics
        assert given * 2 / 3 <= best["value"] or not allowed
        match = [c for c in got["candidates"] if c["setting"] == best["setting"]][0]
        assert match["allowed"] == allowed, (given, match)


def test_a_class_too_rare_to_audit_keeps_the_erm_head() -> None:
    # 95% / 5% classes: the rare class has about 50 rows per validation half and a handful the
    # ERM head gets wrong, so it gets no audit region and a repair could lose its minority unseen
    from gradtune.data.synthetic import ShortcutSpec
    from gradtune.experiments.stress import StressMember, build_member_bundle

    spec = ShortcutSpec("rare", dim=64, core_strength=1.5, class_prior=(0.95, 0.05))
    bundle = build_member_bundle(StressMember("rare", "probe", spec, role="dev"), 0)
    common = dict(min_structure_auc=0.0, **FAST)
    d = get_method("gradtune-auto", **common).fit(bundle, seed=0).diagnostics
    assert d["guard_kept_erm"] and "class 1 (" in d["guard_reason"], d["guard_reason"]
    assert not d["candidates"]
    off = get_method("gradtune-auto", audit_coverage=False, **common).fit(bundle, seed=0).diagnostics
    assert off["candidates"]
    region = [off["audit_counts"][h][3] for h in ("heldout", "selection")]
    assert min(region) < 10 <= min(off["audit_counts"][h][1] for h in ("heldout", "selection")), off["audit_counts"]


def test_value_cells_are_regions_of_the_inferred_minority(biased: EmbeddingBundle) -> None:
    from gradtune.methods.inferred import inference_features
    from gradtune.selection.audit import region_cells

    d = get_method("gradtune-auto", min_structure_auc=0.0, audit_coverage=False, value_cells="inferred",
                   **FAST).fit(biased, seed=0).diagnostics
    held, sel = biased.view("heldout"), biased.view("selection")
    minority = np.zeros(len(biased.labels), dtype=bool)
    minority[d["inferred_minority_rows"]] = True
    xh, _ = inference_features(biased, held, "auto")
    xs, _ = inference_features(biased, sel, "auto")
    want_sel = region_cells(xh, held.labels, minority[held.index], xs, sel.labels, 2)
    want_held = region_cells(xs, sel.labels, minority[sel.index], xh, held.labels, 2)
    assert d["value_cells"] == "inferred"
    assert d["value_cell_counts"]["selection"] == np.bincount(want_sel, minlength=4).tolist()
    assert d["value_cell_counts"]["heldout"] == np.bincount(want_held, minlength=4).tolist()
    assert d["value_cell_counts"] != d["audit_counts"]
    m = get_method("gradtune-auto", min_structure_auc=0.0, audit_coverage=False, value_cells="mistakes",
                   **FAST).fit(biased, seed=0).diagnostics
    assert m["value_cell_counts"] == m["audit_counts"]


def test_coverage_also_reads_the_regions_of_the_inferred_minority() -> None:
    # lin-imbalance-80, seed 0 (development half): the ERM head's mistakes give the rare class a
    # region of 10+ rows on both halves, but the twins flag no row of it, so a repair fitted on
    # their groups could move that class's minority unseen
    from gradtune.experiments.stress import build_member_bundle

    bundle = build_member_bundle("lin-imbalance-80", 0)
    off = get_method("gradtune-auto", audit_coverage=False, **FAST).fit(bundle, seed=0).diagnostics
    assert min(off["audit_counts"][h][3] for h in ("heldout", "selection")) >= 10, off["audit_counts"]
    assert max(off["pseudo_group_counts"]["xrm"][h][3] for h in ("heldout", "selection")) == 0
    d = get_method("gradtune-auto", **FAST).fit(bundle, seed=0).diagnostics
    assert d["guard_kept_erm"] and "class 1 (0 rows)" in d["guard_reason"], d["guard_reason"]


def test_padding_judges_a_common_class_with_few_mistakes_instead_of_refusing() -> None:
    # lin-minority-0.5pct, seed 1 (development half): equal classes, a 0.5% minority, so the
    # ERM head errs on under 10 rows of a class on some half
    from gradtune.experiments.stress import build_member_bundle

    bundle = build_member_bundle("lin-minority-0.5pct", 1)
    off = get_method("gradtune-auto").fit(bundle, seed=1).diagnostics   # the default ("off"): refused
    assert off["guard_kept_erm"] and "too few rows like the ERM head's mistakes" in off["guard_reason"]
    # one fit's padding (a repair it makes can be outvoted on other dealings, split_votes)
    d = get_method("gradtune-auto", pad_regions="margin", split_votes=1).fit(bundle, seed=1).diagnostics
    assert "too few rows" not in (d["guard_reason"] or ""), d["guard_reason"]
    for half in ("heldout", "selection"):
        assert min(d["audit_counts"][half][1::2]) >= 10, d["audit_counts"]
    assert "guard_inputs" in d
    # a rare class (20% of the rows, under half its equal share) is still refused, not padded,
    # with "veto" as with "margin"
    rare = get_method("gradtune-auto", pad_regions="veto", **FAST).fit(build_member_bundle("lin-imbalance-80", 0),
                                                                   seed=0).diagnostics
    assert rare["guard_kept_erm"] and "class 1 (0 rows)" in rare["guard_reason"], rare["guard_reason"]


def test_padded_cells_as_a_veto_are_read_but_not_judged() -> None:
    # the same run with pad_regions="veto": coverage reads the padded cells, the value and
    # the floor the learned ones, and a vetoed candidate is never chosen
    from gradtune.experiments.stress import build_member_bundle

    bundle = build_member_bundle("lin-minority-0.5pct", 1)
    d = get_method("gradtune-auto", pad_regions="veto", split_votes=1).fit(bundle, seed=1).diagnostics
    assert "too few rows" not in (d["guard_reason"] or ""), d["guard_reason"]
    veto = d["padded_veto"]
    assert len(veto) == len(d["candidates"]) and not veto[0]
    chosen = [c["setting"] == d["chosen_setting"] and c["family"] == d["chosen_family"] for c in d["candidates"]]
    assert not any(v and c for v, c in zip(veto, chosen, strict=True))
    assert all(c["value"] == 0.0 for c, v in zip(d["candidates"], veto, strict=True) if v)


def test_deployment_rows_are_read_for_their_features_only(biased: EmbeddingBundle) -> None:
    params = {**FAST, "audit_coverage": False, "deployment_split": "test"}
    ref = GradTuneAutoMethod(**params).fit(biased, seed=1)
    rng = np.random.default_rng(0)
    test = biased.split == "test"
    labels, groups = biased.labels.copy(), biased.groups.copy()
    labels[test] = rng.integers(0, biased.n_classes, int(test.sum()))
    groups[test] = rng.integers(0, 9, int(test.sum()))
    other = replace(biased, labels=labels, groups=groups)
    got = GradTuneAutoMethod(**params).fit(other, seed=1)
    np.testing.assert_array_equal(got.model.weight, ref.model.weight)
    assert got.diagnostics["deployment_shares"] == ref.diagnostics["deployment_shares"]
    halves = ref.diagnostics["deployment_shares"]
    assert len(halves) == 2 and all(sum(h["deployment"]) == pytest.approx(1.0) for h in halves)
    # none without deployment rows in the bundle: no share estimated
    assert GradTuneAutoMethod(**FAST, audit_coverage=False).fit(biased, seed=1).diagnostics["deployment_shares"] == []


def test_a_repair_must_pay_where_the_model_is_deployed(biased: EmbeddingBundle, caplog) -> None:
    # the training rows carry the validation bias: deployed there, the repair's trade of
    # majority rows for minority rows loses accuracy and the ERM head is kept; the test rows
    # are group-balanced: the minority's share rises there and the repair stands
    params = {**FAST, "audit_coverage": False}
    with caplog.at_level("INFO", logger="gradtune"):
        assert not GradTuneAutoMethod(**params).fit(biased, seed=0).diagnostics["guard_kept_erm"]
    said = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any("as if deployment weighs the inferred groups equally" in m for m in said), said
    caplog.clear()
    like_val = GradTuneAutoMethod(**params, deployment_split="train").fit(biased, seed=0).diagnostics
    assert like_val["guard_kept_erm"]
    assert "weighted as the deployment rows hold them" in like_val["guard_reason"]
    for half in like_val["deployment_shares"]:
        np.testing.assert_allclose(half["deployment"], half["validation"], atol=0.06)
    with caplog.at_level("INFO", logger="gradtune"):
        balanced = GradTuneAutoMethod(**params, deployment_split="test").fit(biased, seed=0).diagnostics
    assert not balanced["guard_kept_erm"]
    assert not any("weighs the inferred groups equally" in r.getMessage() for r in caplog.records)
    for half in balanced["deployment_shares"]:
        minority = np.asarray(half["deployment"])[[1, 3]].sum()       # ids 2 * label + minority
        assert minority > 2 * np.asarray(half["validation"])[[1, 3]].sum()


def test_the_guard_inputs_in_the_diagnostics_replay_the_fit(biased: EmbeddingBundle) -> None:
    import json

    from gradtune.selection.guard import replay_guards

    opts = dict(audit_coverage=False, value_cells="mistakes_then_inferred", **FAST)
    d = get_method("gradtune-auto", **opts).fit(biased, seed=0).diagnostics
    recs = json.loads(json.dumps([d["guard_inputs"], *d["guard_inputs_next"]]))
    assert len(recs) == 2            # judged on the mistakes' regions, then on the twins'
    used, got = replay_guards(recs)
    cands = d["candidates"]
    assert not d["guard_kept_erm"] and got.best > 0 and d["judged_on"] == ("mistakes", "inferred")[used]
    assert cands[got.best]["value"] == d["chosen_value"]
    assert [bool(a) for a in got.allowed] == [c["allowed"] for c in cands]
    # a threshold replayed is the threshold refitted: same decision, same reason (the last cell set's)
    refit = get_method("gradtune-auto", margin=1.0, **opts).fit(biased, seed=0).diagnostics
    used, again = replay_guards(recs, margin=1.0)
    assert again.best == 0 and refit["guard_kept_erm"] and used == 1 and refit["judged_on"] == "inferred"
    assert again.reason == refit["guard_reason"]


def test_minority_veto_refuses_a_repair_that_breaks_rows_the_head_handles() -> None:
    # the option is declared with the method's other parameters and checked at the door
    from gradtune.experiments.stress import build_member_bundle

    with pytest.raises(ValueError, match="minority_veto"):
        get_method("gradtune-auto", minority_veto=1.5)
    bundle = build_member_bundle("lin-minority-0.5pct", 1)
    opts = dict(pad_regions="veto", split_votes=1, max_pseudo_drop=0.0)   # one fit; the pseudo-group mean may stay
    free = get_method("gradtune-auto", **opts).fit(bundle, seed=1).diagnostics
    strict = get_method("gradtune-auto", minority_veto=0.0, **opts).fit(bundle, seed=1).diagnostics
    assert not free["guard_kept_erm"] and not any(free["padded_veto"])   # repaired (seed 1: +37 WGA)
    # with no loss allowed, each candidate changes some prediction the head gets right in the
    # inferred minority's region, so each is refused, carries no value, and the reason says why
    assert strict["guard_kept_erm"] and all(strict["padded_veto"][1:])
    assert all(c["value"] == 0.0 for c in strict["candidates"][1:])
    assert strict["guard_reason"].startswith("every candidate (7) was vetoed"), strict["guard_reason"]


def test_split_votes_are_fits_on_redealt_halves_and_the_majority_decides(biased: EmbeddingBundle) -> None:
    params = {**FAST, "audit_coverage": False, "split_votes": 1}
    res = get_method("gradtune-auto", **{**params, "split_votes": 3, "votes_on": "always"}).fit(biased, seed=0)
    votes = [v["kept"] for v in res.diagnostics["split_votes"]]
    plain = get_method("gradtune-auto", **params).fit(biased, seed=0)
    assert votes[0] == plain.diagnostics["guard_kept_erm"]
    rng = seed_streams(0, *SEED_STREAMS).rng("splits")   # the later votes: plain fits on re-dealt halves
    for v in votes[1:]:
        other = get_method("gradtune-auto", **params).fit(redealt_halves(biased, rng), seed=0)
        assert v == other.diagnostics["guard_kept_erm"]
    assert len(votes) == (2 if votes[0] == votes[1] else 3)
    assert res.diagnostics["guard_kept_erm"] == (2 * sum(votes) > len(votes))
    if votes[0] == res.diagnostics["guard_kept_erm"]:
        np.testing.assert_array_equal(res.model.weight, plain.model.weight)
