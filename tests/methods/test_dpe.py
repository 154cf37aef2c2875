"""DPE: the IPS term by hand, the closed-form step against autograd, the batched loop against
torch.optim.SGD run member by member, the ensemble's logits against numpy, and the method's
seeding, data use and effect on a synthetic shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods import get_method, list_methods
from gradtune.methods.dpe import (
    DPEMethod,
    DPEModel,
    class_balanced_subsets,
    dpe_loss_and_grad,
    ips_penalty,
    ips_weights,
    normalize_features,
    train_dpe,
    train_dpe_sequential,
)
from gradtune.metrics import worst_class_accuracy, worst_group_accuracy
from tests.methods._synthetic import make_spurious_bundle
from tests.methods.conftest import garbage_test_rows


def test_registered_and_label_free():
    assert "dpe" in list_methods()
    assert DPEMethod().group_label_use == "none"
    assert DPEMethod.description


def test_normalize_features_is_standardize_then_l2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)) * 3 + 1
    x[2] = 4.0  # a constant row: zero after centring, and stays zero
    std = x.std(axis=1, keepdims=True)
    z = (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)  # the authors' per-row standardization
    expected = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(normalize_features(x).numpy(), expected, atol=1e-6)
    assert not normalize_features(x).isnan().any()
    plain = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(normalize_features(x, center=False).numpy(), plain, atol=1e-6)


def test_ips_schedule_by_hand():
    np.testing.assert_allclose(ips_weights(100.0, 0.5, 4), [100.0, 100.0, 100.0 / 1.5, 100.0 / 2.0])


def test_ips_penalty_by_hand():
    # M = 3 members, C = 2 classes, d = 3
    p = np.array([
        [[1, 0, 0], [0, 1, 0]],
        [[2, 1, 0], [0, 3, 1]],
        [[1, 1, 1], [-1, 0, -5]],
    ], dtype=np.float64)
    w = np.array([7.0, 2.0, 3.0])
    # member 1 vs 0: class 0 <(2,1,0),(1,0,0)> = 2, class 1 <(0,3,1),(0,1,0)> = 3 -> 5 / (C (d-1) (m+1)) = 5 / 8
    # member 2 vs 0 and 1: class 0: 1 + 3 = 4, class 1: 0 + (-5) = -5 -> |-1| / (2 * 2 * 3) = 1 / 12
    expected = [0.0, 2.0 * 5 / 8, 3.0 * 1 / 12]
    np.testing.assert_allclose(ips_penalty(p, w), expected, rtol=1e-12)
    with pytest.raises(GradTuneInputError, match="weights"):
        ips_penalty(p, w[:2])


def _unit64(x: np.ndarray) -> torch.Tensor:
    """Centred unit rows in float64 (so the reference's F.normalize leaves them unchanged)."""
    z = torch.as_tensor(x - x.mean(axis=1, keepdims=True), dtype=torch.float64)
    return z / z.norm(dim=1, keepdim=True)


def _reference_member_loss(u, y, p_m, s_m, earlier, *, entropic, wd_weight, lam):
    """One member's loss written the way the authors' code builds it (cdist on normalized
    vectors, IsoMax+ second part, einsum penalties), the earlier prototypes as constants."""
    dist = torch.abs(s_m) * torch.cdist(F.normalize(u), F.normalize(p_m), p=2.0,
                                        compute_mode="donot_use_mm_for_euclid_dist")
    probs = torch.softmax(-entropic * dist, dim=1)
    ce = -torch.log(probs[torch.arange(u.shape[0]), y]).mean()
    wd = (torch.einsum("ijk,ilk->ijl", p_m[:, None], p_m[:, None]) * wd_weight).squeeze().mean()
    loss = ce + wd
    if earlier is not None and lam > 0:
        allp = torch.cat([p_m[:, None], earlier], dim=1)  # (C, m + 1, d)
        n_pro, n_dim = allp.shape[1:]
        cov = torch.einsum("ijk,ilk->ijl", allp, allp) / (n_dim - 1)
        loss = loss + lam * torch.abs(cov[:, 0, 1:].sum(1).div(n_pro).mean())
    return loss


def test_loss_and_grad_match_autograd():
    rng = np.random.default_rng(1)
    m_, b, c, d = 4, 9, 3, 5
    u = _unit64(rng.normal(size=(m_ * b, d))).reshape(m_, b, d)
    y = torch.as_tensor(rng.integers(0, c, (m_, b)))
    protos = torch.as_tensor(rng.normal(size=(m_, c, d)) * 0.3)
    scales = torch.tensor([1.0, -0.7, 1.3, 0.4], dtype=torch.float64)  # a negative scale tests |s|
    lam = torch.as_tensor(ips_weights(50.0, 0.1, m_))
    loss, g_p, g_s = dpe_loss_and_grad(u, y, protos, scales, entropic_scale=7.0, wd_weight=0.3, ips_weight=lam)
    for m in range(m_):
        p_m = protos[m].clone().requires_grad_(True)
        s_m = scales[m:m + 1].clone().requires_grad_(True)
        earlier = protos[:m].transpose(0, 1).clone() if m else None  # (C, m, d), no gradient
        ref = _reference_member_loss(u[m], y[m], p_m, s_m, earlier, entropic=7.0, wd_weight=0.3,
                                     lam=float(lam[m]))
        ref.backward()
        np.testing.assert_allclose(float(loss[m]), ref.item(), rtol=1e-10, err_msg=f"member {m}")
        np.testing.assert_allclose(g_p[m].numpy(), p_m.grad.numpy(), rtol=1e-8, atol=1e-10, err_msg=f"member {m}")
        np.testing.assert_allclose(float(g_s[m]), float(s_m.grad[0]), rtol=1e-8, atol=1e-12, err_msg=f"member {m}")


def _reference_training(u, y, subsets, c, *, epochs, batch, lr, momentum, weight_decay, entropic, wd_weight,
                        lam, init_std, seed, scores=None):
    """Member by member with torch.optim.SGD and autograd, on the documented random stream;
    returns the final parameters and a snapshot after every epoch."""
    gen = torch.Generator().manual_seed(seed)
    m_, s_rows = subsets.shape
    init = torch.randn(m_, c, u.shape[1], generator=gen, dtype=u.dtype) * init_std
    params = [(init[m].clone().requires_grad_(True), torch.ones(1, dtype=u.dtype, requires_grad=True))
              for m in range(m_)]
    opts = [torch.optim.SGD(list(pm), lr=lr, momentum=momentum, weight_decay=weight_decay) for pm in params]
    snaps = []
    for _ in range(epochs):
        order = torch.gather(subsets, 1, torch.rand(m_, s_rows, generator=gen).argsort(dim=1))
        for bi in range(s_rows // batch):
            idx = order[:, bi * batch:(bi + 1) * batch]
            before = torch.stack([p.detach().clone() for p, _ in params])  # all members step from here
            for m, (p_m, s_m) in enumerate(params):
                opts[m].zero_grad()
                earlier = before[:m].transpose(0, 1) if m else None
                _reference_member_loss(u[idx[m]], y[idx[m]], p_m, s_m, earlier, entropic=entropic,
                                       wd_weight=wd_weight, lam=float(lam[m])).backward()
            for opt in opts:
                opt.step()
        snaps.append((torch.stack([p.detach().clone() for p, _ in params]),
                      torch.cat([s.detach().clone() for _, s in params])))
    return snaps


def _loop_setup():
    rng = np.random.default_rng(2)
    n, d, c = 60, 4, 2
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 1.5 * (2 * y[:, None] - 1) * np.array([1.0, -0.5, 0.0, 0.3])
    u = _unit64(x)
    subsets = torch.as_tensor(class_balanced_subsets(y, 3, 5))
    kw = dict(epochs=4, batch=8, lr=0.05, momentum=0.9, weight_decay=0.01, entropic=5.0, wd_weight=0.5,
              lam=torch.as_tensor(ips_weights(20.0, 0.2, 3)), init_std=0.1)
    return u, torch.as_tensor(y), subsets, c, kw


def _train(u, y, subsets, c, kw, seed, score_fn=None):
    return train_dpe(u, y, subsets, c, epochs=kw["epochs"], batch_size=kw["batch"], lr=kw["lr"],
                     momentum=kw["momentum"], weight_decay=kw["weight_decay"], entropic_scale=kw["entropic"],
                     wd_weight=kw["wd_weight"], ips_weight=kw["lam"], init_std=kw["init_std"],
                     generator=torch.Generator().manual_seed(seed), score_fn=score_fn)


def test_batched_loop_matches_torch_optim_member_by_member():
    u, y, subsets, c, kw = _loop_setup()
    out = _train(u, y, subsets, c, kw, seed=11)
    snaps = _reference_training(u, y, subsets, c, seed=11, **kw)
    np.testing.assert_allclose(out["prototypes"].numpy(), snaps[-1][0].numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(out["scales"].numpy(), snaps[-1][1].numpy(), rtol=1e-9, atol=1e-11)
    assert out["loss"].shape == (kw["epochs"], 3) and np.isfinite(out["loss"]).all()
    assert (out["best_epoch"] == kw["epochs"] - 1).all()


def test_each_member_keeps_its_best_epoch_ties_to_later():
    u, y, subsets, c, kw = _loop_setup()
    table = np.array([[0.5, 0.2, 0.9],
                      [0.7, 0.2, 0.1],
                      [0.7, 0.1, 0.3],
                      [0.6, 0.0, 0.9]])  # (epochs, M): member 0 ties at epochs 1, 2; member 2 at 0, 3
    calls = []

    def score_fn(protos, scales):
        calls.append(None)
        return table[len(calls) - 1]

    out = _train(u, y, subsets, c, kw, seed=4, score_fn=score_fn)
    snaps = _reference_training(u, y, subsets, c, seed=4, **kw)
    expected = [max(e for e in range(4) if table[e, m] == table[:, m].max()) for m in range(3)]
    assert out["best_epoch"].tolist() == expected == [2, 1, 3]
    np.testing.assert_allclose(out["best_score"], table.max(axis=0))
    for m, e in enumerate(expected):
        np.testing.assert_allclose(out["prototypes"][m].numpy(), snaps[e][0][m].numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(float(out["scales"][m]), float(snaps[e][1][m]), rtol=1e-9)


def test_class_balanced_subsets_counts():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    subs = class_balanced_subsets(y, 4, 0)
    assert subs.shape == (4, 9)
    for row in subs:
        assert len(set(row.tolist())) == 9
        np.testing.assert_array_equal(np.bincount(y[row], minlength=3), [3, 3, 3])
    assert len({tuple(sorted(r)) for r in subs.tolist()}) > 1  # members see different rows


def test_model_logits_against_numpy():
    rng = np.random.default_rng(3)
    protos = rng.normal(size=(3, 4, 6))
    scales = np.array([0.8, -1.5, 2.0])
    x = rng.normal(size=(10, 6))
    model = DPEModel(protos, scales)
    u = x - x.mean(axis=1, keepdims=True)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    probs = np.zeros((10, 4))
    for m in range(3):  # a slow loop over members, rows and classes
        q = protos[m] / np.linalg.norm(protos[m], axis=1, keepdims=True)
        z = np.array([[-abs(scales[m]) * np.linalg.norm(u[i] - q[k]) for k in range(4)] for i in range(10)])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs += e / e.sum(axis=1, keepdims=True) / 3
    np.testing.assert_allclose(model.logits(x), np.log(probs), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x), probs.argmax(axis=1))
    assert model.member_logits(x).shape == (3, 10, 4)
    with pytest.raises(GradTuneInputError, match="columns"):
        model.logits(x[:, :5])


FAST = dict(num_members=4, epochs=5)


def _strip_groups(b: EmbeddingBundle) -> EmbeddingBundle:
    return EmbeddingBundle(features=b.features, labels=b.labels, split=b.split, logits=b.logits,
                           early_logits=b.early_logits, head_weight=b.head_weight, head_bias=b.head_bias,
                           n_classes=b.n_classes)


@pytest.mark.parametrize("params", [{}, {"balance": "pseudo_group", "selection": "worst_class"}])
def test_never_reads_test_rows_or_groups(bundle, params):
    a = DPEMethod(**FAST, **params).fit(bundle, seed=3)
    b = DPEMethod(**FAST, **params).fit(_strip_groups(garbage_test_rows(bundle)), seed=3)
    np.testing.assert_array_equal(a.model.prototypes, b.model.prototypes)
    np.testing.assert_array_equal(a.model.scales, b.model.scales)
    assert a.diagnostics == b.diagnostics


def test_seeded_and_deterministic(bundle):
    r1 = DPEMethod(**FAST).fit(bundle, seed=0)
    r2 = DPEMethod(**FAST).fit(bundle, seed=0)
    r3 = DPEMethod(**FAST).fit(bundle, seed=1)
    np.testing.assert_array_equal(r1.model.prototypes, r2.model.prototypes)
    assert r1.diagnostics == r2.diagnostics
    assert not np.array_equal(r1.model.prototypes, r3.model.prototypes)
    assert r1.model.prototypes.shape == (4, 2, bundle.features.shape[1])
    assert len(r1.diagnostics["best_epoch"]) == 4


def test_beats_erm_on_a_shortcut():
    """Class-balanced held-out rows carry no shortcut, so the ensemble relies on the core
    feature more than the ERM head does: worst class at least as good, worst group better."""
    for seed in (1, 2):
        b = make_spurious_bundle(n_train=600, n_heldout=400, n_selection=400, n_test=800, d=16, seed=seed)
        test = b.view("test")
        erm = get_method("erm").fit(b, seed=0).model.logits(test.features)
        dpe = DPEMethod().fit(b, seed=0).model.logits(test.features)
        assert worst_class_accuracy(dpe.argmax(1), test.labels) >= worst_class_accuracy(erm.argmax(1), test.labels)
        assert worst_group_accuracy(dpe.argmax(1), test.labels, test.groups) > \
            worst_group_accuracy(erm.argmax(1), test.labels, test.groups) + 0.15, seed


@pytest.mark.parametrize("params, match", [
    ({"balance": "groups"}, "balance"),
    ({"selection": "worst_group"}, "selection"),
    ({"num_members": 0}, "num_members"),
    ({"lr": 0.0}, "lr"),
    ({"cov_reg": -1.0}, "cov_reg"),
])
def test_bad_parameters(bundle, params, match):
    with pytest.raises(GradTuneInputError, match=match):
        DPEMethod(**params).fit(bundle, seed=0)


def test_bad_bundles(bundle):
    held = bundle.split == "heldout"
    labels = bundle.labels.copy()
    labels[held] = 0  # class 1 has no held-out row
    one_class = EmbeddingBundle(features=bundle.features, labels=labels, split=bundle.split,
                                head_weight=bundle.head_weight, head_bias=bundle.head_bias, n_classes=2)
    with pytest.raises(GradTuneInputError, match="class"):
        DPEMethod(**FAST).fit(one_class, seed=0)
    narrow = EmbeddingBundle(features=bundle.features[:, :1], labels=bundle.labels, split=bundle.split)
    with pytest.raises(GradTuneInputError, match="2 columns"):
        DPEMethod(**FAST).fit(narrow, seed=0)
    headless = EmbeddingBundle(features=bundle.features, labels=bundle.labels, split=bundle.split)
    with pytest.raises(GradTuneInputError, match="head_weight"):
        DPEMethod(**FAST, selection="pseudo_erm_worst").fit(headless, seed=0)
    DPEMethod(**FAST, selection="worst_class").fit(headless, seed=0)  # needs no ERM head
    DPEMethod(**FAST, selection="last").fit(headless, seed=0)  # nor does the last epoch


def _reference_sequential(u, y, subsets, c, *, epochs, batch, lr, momentum, weight_decay, entropic, wd_weight,
                          lam, init_std, seed, score=None):
    """The authors' order: one member at a time with its own torch.optim.SGD, its IPS term
    against the finished (kept-epoch) prototypes of the members before it."""
    gen = torch.Generator().manual_seed(seed)
    m_, s_rows = subsets.shape
    finished = []
    for m in range(m_):
        p_m = (torch.randn(1, c, u.shape[1], generator=gen, dtype=u.dtype)[0] * init_std).requires_grad_(True)
        s_m = torch.ones(1, dtype=u.dtype, requires_grad=True)
        opt = torch.optim.SGD([p_m, s_m], lr=lr, momentum=momentum, weight_decay=weight_decay)
        earlier = torch.stack(finished).transpose(0, 1) if finished else None  # (C, m, d)
        keep, best = p_m.detach().clone(), -np.inf
        for epoch in range(epochs):
            order = subsets[m][torch.rand(s_rows, generator=gen).argsort()]
            for bi in range(s_rows // batch):
                idx = order[bi * batch:(bi + 1) * batch]
                opt.zero_grad()
                _reference_member_loss(u[idx], y[idx], p_m, s_m, earlier, entropic=entropic,
                                       wd_weight=wd_weight, lam=float(lam[m])).backward()
                opt.step()
            if score is not None and score(m, epoch) >= best:
                keep, best = p_m.detach().clone(), score(m, epoch)
        finished.append(keep if score is not None else p_m.detach().clone())
    return torch.stack(finished)


@pytest.mark.parametrize("scored", [False, True])
def test_sequential_members_match_a_sequential_reference(scored):
    u, y, subsets, c, kw = _loop_setup()
    # a deterministic stand-in for the selection score: it peaks at epoch 1 for every member
    fake = (lambda m, epoch: -abs(epoch - 1) + 0.1 * m) if scored else None
    calls = {"n": 0}

    def score_fn(protos, scales):
        m, epoch = divmod(calls["n"], kw["epochs"])
        calls["n"] += 1
        return np.array([fake(m, epoch)])

    out = train_dpe_sequential(u, y, subsets, c, epochs=kw["epochs"], batch_size=kw["batch"], lr=kw["lr"],
                               momentum=kw["momentum"], weight_decay=kw["weight_decay"],
                               entropic_scale=kw["entropic"], wd_weight=kw["wd_weight"], ips_weight=kw["lam"],
                               init_std=kw["init_std"], generator=torch.Generator().manual_seed(11),
                               score_fn=score_fn if scored else None)
    ref = _reference_sequential(u, y, subsets, c, seed=11, score=fake, **kw)
    np.testing.assert_allclose(out["prototypes"].numpy(), ref.numpy(), rtol=1e-9, atol=1e-11)
    assert (out["best_epoch"] == (1 if scored else kw["epochs"] - 1)).all()
    # the batched run (members against each other's moving prototypes) is a different model
    batched = _train(u, y, subsets, c, kw, seed=11)
    assert not np.allclose(batched["prototypes"].numpy()[1:], out["prototypes"].numpy()[1:])


def test_val_groups_variant_keeps_each_members_best_true_wga_epoch(bundle):
    """The authors' epoch choice: worst-group accuracy of each member on the selection rows' true groups."""
    from gradtune.methods.dpe_groups import DPEValGroupsMethod

    m = get_method("dpe-val-groups", **FAST)
    assert isinstance(m, DPEValGroupsMethod) and m.group_label_use == "val"
    res = m.fit(bundle, seed=0)
    sel = bundle.view("selection")
    z = res.model.member_logits(sel.features)  # (M, n_sel, C) of the kept epochs
    kept = [worst_group_accuracy(z[k].argmax(1), sel.labels, sel.groups) for k in range(z.shape[0])]
    np.testing.assert_allclose(res.diagnostics["member_selection_score"], kept, rtol=1e-6)
    assert res.diagnostics["ensemble_selection_score"] == pytest.approx(
        worst_group_accuracy(res.model.predict(sel.features), sel.labels, sel.groups))
    with pytest.raises(GradTuneInputError, match="selection"):
        get_method("dpe-val-groups", **FAST, selection="worst_class").fit(bundle, seed=0)
