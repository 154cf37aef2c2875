"""grad_norms at extreme confidence against an fp64 log-softmax reference.

The features, weights and biases are small dyadic numbers, so every logit
``W h + b`` is exact in float32 whatever the summation order: the head-given entry
point then sees the same logits as the logits-given one, and any error left is the
residual's own. The reference takes every ``p_j`` and ``1 - p_y`` from
``log_softmax`` in float64 (``1 - p_y`` as the log-sum-exp of the other classes),
never as ``1 - p_y`` by subtraction.
"""

import numpy as np
import pytest
import torch

from gradtune import grad_norms
from gradtune.scores import _fused, residual_norms

BACKENDS = ["torch", "fused"]


def needs(backend):
    if backend == "fused" and not _fused.available():
        pytest.skip("the fused backend needs numba: pip install 'gradtune[fast]'")


def log_softmax_reference(z, y, h=None, include_bias=True):
    """||p - e_y|| (times sqrt(||h||^2 + include_bias) when h is given), in float64."""
    z = torch.as_tensor(z, dtype=torch.float64)
    lp = torch.log_softmax(z, dim=1)
    other = lp.scatter(1, y[:, None], -torch.inf)
    log_s = torch.logsumexp(other, dim=1)  # log(1 - p_y)
    # Scaled by 1 - p_y so that the reference's own squares cannot underflow either.
    q = torch.exp(other - log_s[:, None])
    res = torch.exp(log_s) * torch.sqrt(1.0 + (q * q).sum(1))
    if h is None:
        return res
    return res * torch.sqrt((torch.as_tensor(h, dtype=torch.float64) ** 2).sum(1) + float(include_bias))


def exact_problem(c, n=400, max_gap=80.0, with_bias=True, seed=0):
    """Rows whose logits (exact in fp32) have gaps z_y - max_{j != y} z_j spread over
    [-max_gap, max_gap], with a head (W, b) that reproduces them exactly.

    Returns h (n, d), z (n, c), y (n,), W (c, d), b (c,) or None, all float64 tensors
    holding multiples of 1/8.
    """
    rng = np.random.default_rng(seed)
    extra = 5
    gap = np.round(rng.uniform(0, max_gap, n) * 8) / 8
    gap[:8] = [0.0, 20.0, 40.0, 55.0, 60.0, 70.0, 75.0, max_gap]
    sign = np.where(rng.random(n) < 0.8, 1.0, -1.0)  # mostly confident and right, some confident and wrong
    y = rng.integers(0, c, n)
    base = np.round(rng.uniform(-10, 10, n) * 8) / 8
    z = base[:, None] - np.round(rng.uniform(0, 4, (n, c)) * 8) / 8  # the classes near each other
    lead = (y + 1 + rng.integers(0, c - 1, n)) % c  # the strongest other class
    z[np.arange(n), lead] = base
    z[np.arange(n), y] = base + sign * gap
    x = rng.integers(-4, 5, (n, extra)) / 2  # extra features, halves
    r = rng.integers(-8, 9, (c, extra)) / 4  # their weights, quarters
    b = rng.integers(-8, 9, c) / 8 if with_bias else np.zeros(c)
    h = np.concatenate([z - x @ r.T - b, x], axis=1)  # W = [I | r] maps h back onto z exactly
    w = np.concatenate([np.eye(c), r], axis=1)
    as_t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return as_t(h), as_t(z), torch.tensor(y), as_t(w), (as_t(b) if with_bias else None)


def check_exact(got, ref, rtol, floor):
    got = got.double()
    mask = ref >= floor
    assert bool(mask.any())
    rel = ((got[mask] - ref[mask]).abs() / ref[mask]).max()
    assert float(rel) <= rtol, f"max relative error {float(rel):.3g} > {rtol} (rows with exact norm >= {floor})"
    assert bool((got >= 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [2, 3, 10])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("entry", ["logits", "head"])
def test_fp32_exact_at_large_gaps(backend, c, with_bias, entry):
    """fp32: 1e-5 relative wherever the exact norm is >= 1e-30, at logit gaps up to 80."""
    needs(backend)
    h64, z64, y, w64, b64 = exact_problem(c, with_bias=with_bias, seed=c)
    h, z = h64.float(), z64.float()
    assert torch.equal(z.double(), z64)  # the logits are exact in fp32
    if entry == "head":
        assert torch.equal(h64 @ w64.T + (0 if b64 is None else b64), z64)
    for include_bias in (True, False):
        if entry == "logits":
            got = grad_norms(h, z, y, include_bias=include_bias, backend=backend)
        else:
            got = grad_norms(h, labels=y, weight=w64.float(), bias=None if b64 is None else b64.float(),
                             include_bias=include_bias, backend=backend)
        assert got.dtype == torch.float32
        ref = log_softmax_reference(z64, y, h64, include_bias)
        assert float(ref.min()) < 1e-30  # the range of the issue is covered
        check_exact(got, ref, 1e-5, 1e-30)
        # The rows the old squares underflowed: exact norm 1e-26 .. 1e-30.
        assert bool((got[(ref > 1e-30) & (ref < 1e-20)] > 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [2, 3, 10])
@pytest.mark.parametrize("entry", ["logits", "head"])
def test_fp64_exact_down_to_1e_300(backend, c, entry):
    """fp64 input: the squares would underflow past gaps of ~350; the scaled form holds to ~690."""
    needs(backend)
    h, z, y, w, b = exact_problem(c, max_gap=680.0, seed=10 + c)
    if entry == "logits":
        got = grad_norms(h, z, y, backend=backend)
    else:
        got = grad_norms(h, labels=y, weight=w, bias=b, backend=backend)
    assert got.dtype == torch.float64
    ref = log_softmax_reference(z, y, h)
    assert float(ref.min()) < 1e-280
    check_exact(got, ref, 1e-12, 1e-300)


def test_issue_example_and_residual_norms():
    """h = ones(8), logits (60, 0), label 0: 3.7e-26, not 0."""
    h = torch.ones(1, 8)
    z = torch.tensor([[60.0, 0.0]])
    y = torch.tensor([0])
    exact = 2 ** 0.5 * np.exp(-60.0) * 3.0
    for backend in BACKENDS:
        if backend == "fused" and not _fused.available():
            continue
        got = float(grad_norms(h, z, y, backend=backend))
        assert abs(got - exact) <= 1e-6 * exact
    for c in (2, 3, 10):
        _, z64, yc, _, _ = exact_problem(c, seed=20 + c)
        got = residual_norms(z64.float(), yc)
        assert got.dtype == torch.float32
        check_exact(got, log_softmax_reference(z64, yc), 1e-5, 1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_below_normal_range(backend):
    """Below fp32's smallest normal (1.2e-38) the float64 norm is rounded to an fp32
    subnormal, and to 0 below half the smallest subnormal (7e-46); float64 input keeps it."""
    needs(backend)
    h = torch.ones(4, 8)
    z = torch.tensor([[90.0, 0.0], [95.0, 0.0], [100.0, 0.0], [120.0, 0.0]])
    y = torch.zeros(4, dtype=torch.int64)
    ref = log_softmax_reference(z, y, h)
    got = grad_norms(h, z, y, backend=backend)
    assert got.dtype == torch.float32
    sub = 2.0 ** -149  # the smallest fp32 subnormal
    assert bool(((got.double() - ref).abs() <= sub).all())  # rounded once, from the exact value
    assert float(got[0]) > 0 and float(got[3]) == 0.0 and float(ref[3]) > 0
    check_exact(grad_norms(h.double(), z.double(), y, backend=backend), ref, 1e-12, 0.0)
