"""XRM twins against a slow reference: two nn.Linear + torch.optim.Adam + autograd, per-row flips."""

import numpy as np
import pytest
import torch

from gradtune import GradTuneInputError
from gradtune._threads import torch_threads
from gradtune.groups.xrm import XRMConfig, draw_xrm_schedule, fit_xrm, xrm_groups


def reference_xrm(x, y, c, schedule, config):
    """Train two separate probes with autograd over the schedule's batches; flip row by row."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    xs = (x - mean) / std if config.standardize else x
    nets = [torch.nn.Linear(x.shape[1], c, dtype=x.dtype) for _ in range(2)]
    for net in nets:
        torch.nn.init.zeros_(net.weight)
        torch.nn.init.zeros_(net.bias)
    opts = [torch.optim.Adam(net.parameters(), lr=config.lr) for net in nets]
    labels = y.clone()
    flips = {s: f for f, s in enumerate(schedule.flip_steps)}
    for s in range(schedule.batches.shape[0]):
        for t in (0, 1):
            idx = schedule.batches[s, t]
            out = nets[t](xs[idx])
            yb = labels[idx]
            if config.class_balanced:
                losses = [torch.nn.functional.cross_entropy(out[yb == k], yb[yb == k])
                          for k in range(c) if (yb == k).any()]
                loss = sum(losses) / len(losses)
            else:
                loss = torch.nn.functional.cross_entropy(out, yb)
            opts[t].zero_grad()
            loss.backward()
            opts[t].step()
        f = flips.get(s + 1)
        if f is None:
            continue
        with torch.no_grad():
            new = labels.clone()
            for i in range(x.shape[0]):
                sib = nets[1 - int(schedule.assignment[i])]
                p = torch.softmax(sib(xs[i]), dim=0)
                conf, pred = p.max(dim=0)
                prob = conf if config.flip_probability == "confidence" else (conf - 1 / c) * c / (c - 1)
                if pred != labels[i] and schedule.flip_draws[f, i] < prob:
                    new[i] = pred
            labels = new
    w = torch.stack([n.weight.detach() for n in nets])
    b = torch.stack([n.bias.detach() for n in nets])
    return w, b, labels, (mean, std)


def biased_pool(n=240, d=12, c=2, seed=0, dtype=torch.float64, shift=3.0):
    """Class signal weak, a spurious coordinate agreeing with the class for 90% of rows."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    a = torch.where(torch.rand(n, generator=g) < 0.9, y, torch.randint(0, c, (n,), generator=g))
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x[:, 0] += shift * a.to(dtype)
    x[:, 1] += 0.7 * y.to(dtype)
    x[:, 2] = x[:, 2] * 5 + 10  # a shifted, scaled column: standardization matters
    return x, y, a


@pytest.mark.parametrize("c,flip_probability,class_balanced", [
    (2, "confidence", False), (3, "rescaled", True), (3, "confidence", False)])
def test_matches_autograd_reference_fp64(c, flip_probability, class_balanced):
    x, y, _ = biased_pool(n=181, c=c, seed=c)
    cfg = XRMConfig(n_steps=150, batch_size=32, lr=1e-2, flip_start=30, flip_every=20,
                    flip_probability=flip_probability, class_balanced=class_balanced)
    twins = fit_xrm(x, y, seed=7, config=cfg)
    schedule = draw_xrm_schedule(x.shape[0], cfg, 7, dtype=x.dtype)
    with torch_threads(1):
        w, b, labels, (mean, std) = reference_xrm(x, y, c, schedule, cfg)
    assert len(schedule.flip_steps) == 6
    assert twins.final_labels.tolist() == labels.tolist()
    assert (labels != y).any(), "the run must flip some labels, or the flip path is untested"
    torch.testing.assert_close(twins.mean, mean)
    torch.testing.assert_close(twins.scale, std)
    torch.testing.assert_close(twins.weight, w, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(twins.bias, b, rtol=1e-9, atol=1e-9)
    assert twins.n_flipped == int((labels != y).sum())


def test_matches_reference_fp32_default_schedule():
    """The defaults' flip timing (200, 250, ...) in float32, on a shortened run."""
    x, y, _ = biased_pool(n=200, d=30, seed=3, dtype=torch.float32)
    cfg = XRMConfig(n_steps=320)
    twins = fit_xrm(x, y, seed=1, config=cfg)
    schedule = draw_xrm_schedule(x.shape[0], cfg, 1, dtype=x.dtype)
    assert schedule.flip_steps == (200, 250, 300)
    with torch_threads(1):
        w, b, labels, _ = reference_xrm(x, y, 2, schedule, cfg)
    torch.testing.assert_close(twins.weight, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(twins.bias, b, rtol=1e-5, atol=1e-5)
    assert twins.final_labels.tolist() == labels.tolist()


def test_schedule_halves_and_batches():
    cfg = XRMConfig(n_steps=50, batch_size=16)
    sch = draw_xrm_schedule(101, cfg, 5)
    a = sch.assignment
    assert sorted(np.bincount(a.numpy()).tolist()) == [50, 51]
    assert sch.batches.shape == (50, 2, 16)
    for t in (0, 1):
        rows = sch.batches[:, t].reshape(-1)
        assert (a[rows] == t).all()
        members = torch.nonzero(a == t).squeeze(1)
        m = members.numel()
        # Each consecutive pass over the stream is a permutation of the twin's half.
        for k in range(rows.numel() // m):
            assert sorted(rows[k * m:(k + 1) * m].tolist()) == members.tolist()
    assert sch.flip_draws.shape == (0, 101)  # 50 steps: no flip before step 200
    again = draw_xrm_schedule(101, cfg, 5)
    assert torch.equal(again.batches, sch.batches) and torch.equal(again.assignment, a)
    other = draw_xrm_schedule(101, cfg, 6)
    assert not torch.equal(other.batches, sch.batches)
    # A batch larger than a half is capped at the half's size.
    assert draw_xrm_schedule(10, cfg, 0).batches.shape == (50, 2, 5)


def test_pool_rules_against_twin_probabilities():
    x, y, _ = biased_pool(n=300, seed=11, dtype=torch.float32)
    twins = fit_xrm(x, y, seed=0, config=XRMConfig(n_steps=400, flip_start=100))
    p = twins.twin_probabilities(x).numpy()            # (2, N, C)
    xs = (x - x.mean(0)) / x.std(0, unbiased=False)
    by_hand = torch.stack([torch.softmax(xs @ twins.weight[t].T + twins.bias[t], dim=1) for t in (0, 1)])
    np.testing.assert_allclose(p, by_hand.numpy(), rtol=1e-5, atol=1e-6)
    yy = y.numpy()
    rows = np.arange(len(yy))
    avg = p.mean(0)
    held = p[1 - twins.assignment.numpy(), rows]
    expect = {
        "average": (avg.argmax(1) != yy, 1 - avg[rows, yy]),
        "held-out": (held.argmax(1) != yy, 1 - held[rows, yy]),
        "either": ((p.argmax(2) != yy).any(0), 1 - p[:, rows, yy].min(0)),
    }
    for rule, (minority, score) in expect.items():
        r = twins.pool_groups(x, y, rule=rule)
        assert r.method == "xrm" and r.n_groups == 4 and r.info["rule"] == rule
        np.testing.assert_array_equal(r.minority, minority)
        np.testing.assert_allclose(r.scores, score, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(r.groups, 2 * yy + minority)
    default = xrm_groups(x, y, seed=0, config=XRMConfig(n_steps=400, flip_start=100))
    np.testing.assert_array_equal(default.minority, expect["average"][0])
    # New rows: the averaged prediction of both twins.
    new = twins.assign(x[:50] + 0.1, y[:50])
    pn = twins.twin_probabilities(x[:50] + 0.1).mean(0).numpy()
    np.testing.assert_array_equal(new.minority, pn.argmax(1) != yy[:50])
    np.testing.assert_allclose(twins.predict_proba(x[:50] + 0.1).numpy(), pn)


def spread_pool(n, d, seed):
    """A shortcut spread over every coordinate (as in encoder features), 5% minority."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    a = torch.where(torch.rand(n, generator=g) < 0.95, y, 1 - y)
    va = torch.randint(0, 2, (d,), generator=g) * 2 - 1.0
    vy = torch.randint(0, 2, (d,), generator=g) * 2 - 1.0
    sign = lambda t: (2 * t[:, None] - 1).float()  # noqa: E731
    x = torch.randn(n, d, generator=g) + 0.5 * sign(a) * va + 0.1 * sign(y) * vy
    return x, y, a


def test_flipping_finds_the_shortcut_minority():
    """The twins alone memorize much of the minority; with label flipping they find all of it."""
    x, y, a = spread_pool(1000, 100, seed=0)
    true = (a != y).numpy()
    r = xrm_groups(x, y, seed=0)
    both = (r.minority & true).sum()
    assert both / r.minority.sum() > 0.95 and both / true.sum() > 0.95
    plain = xrm_groups(x, y, seed=0, config=XRMConfig(flip_start=10_000))
    assert plain.info["n_flipped"] == 0
    assert (plain.minority & true).sum() / true.sum() < 0.7


def test_seed_determinism_and_errors():
    x, y, _ = biased_pool(n=100, seed=0, dtype=torch.float32)
    cfg = XRMConfig(n_steps=250)
    r1 = xrm_groups(x, y, seed=3, config=cfg)
    r2 = xrm_groups(x.numpy(), y.numpy(), seed=3, config=cfg)
    np.testing.assert_array_equal(r1.scores, r2.scores)
    with pytest.raises(GradTuneInputError, match="seed"):
        xrm_groups(x, y, seed=None)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(GradTuneInputError, match="NaN"):
        xrm_groups(bad, y, seed=0)
    with pytest.raises(GradTuneInputError, match="entries"):
        xrm_groups(x, y[:-1], seed=0)
    with pytest.raises(GradTuneInputError, match="at least 2 classes"):
        xrm_groups(x, torch.zeros(100, dtype=torch.int64), seed=0)
    with pytest.raises(GradTuneInputError, match="rule"):
        xrm_groups(x, y, seed=0, rule="majority")
    with pytest.raises(GradTuneInputError, match="flip_probability"):
        XRMConfig(flip_probability="always")
    with pytest.raises(GradTuneInputError, match="n_steps"):
        XRMConfig(n_steps=0)
    twins = fit_xrm(x, y, seed=0, config=cfg)
    with pytest.raises(GradTuneInputError, match="columns"):
        twins.assign(x[:, :5], y)
    with pytest.raises(GradTuneInputError, match="rule"):
        twins.assign(x, y, rule="held-out")
    with pytest.raises(GradTuneInputError, match="assign"):
        twins.pool_groups(x[:10], y[:10])
    with pytest.raises(GradTuneInputError, match="< 2"):
        twins.assign(x[:4], torch.tensor([0, 1, 2, 1]))
