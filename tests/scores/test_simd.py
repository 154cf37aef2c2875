"""The vectorizable exp of the fused kernels against math.exp, and the prefetch path."""

import math

import numpy as np
import pytest
import torch

from gradtune import grad_norms

numba = pytest.importorskip("numba", reason="the fused kernels need numba: pip install 'gradtune[fast]'")
from gradtune.scores import _fused  # noqa: E402
from gradtune.scores import _fused_kernels as _kernels  # noqa: E402
from gradtune.scores._simd import EXP_MIN_ARG, exp_nonpos  # noqa: E402


@numba.njit(error_model="numpy")
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_nonpos(x[i])


def test_exp_nonpos_within_two_ulp_of_libm():
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.uniform(0, 1, 20_000), -rng.uniform(0, 80, 20_000), -rng.uniform(0, -EXP_MIN_ARG, 20_000),
                        [0.0, -0.0, -1e-300, -0.5 * math.log(2), -math.log(2), EXP_MIN_ARG]])
    got = np.empty_like(x)
    _exp_all(x, got)
    ref = np.array([math.exp(v) for v in x])
    ulp = np.spacing(ref)
    assert np.all(np.abs(got - ref) <= 2 * ulp)


def test_exp_nonpos_outside_its_range():
    """Below EXP_MIN_ARG (and at -inf) it returns exp(EXP_MIN_ARG): the kernels redo those
    rows with math.exp; NaN stays NaN."""
    x = np.array([EXP_MIN_ARG - 0.5, -745.0, -1e4, -np.inf, np.nan])
    got = np.empty_like(x)
    _exp_all(x, got)
    np.testing.assert_allclose(got[:4], math.exp(EXP_MIN_ARG), rtol=1e-15)
    assert np.isnan(got[4])


@pytest.mark.parametrize("c", [2, 3, 7])
@pytest.mark.parametrize("entry", ["logits", "head"])
def test_prefetching_kernel_gives_the_same_norms(monkeypatch, c, entry):
    """Large inputs are streamed with software prefetch; forcing it on a small one must not
    change a single bit (prefetch is only a hint)."""
    assert _fused.available()
    g = torch.Generator().manual_seed(c)
    h = torch.randn(700, 300, generator=g)
    w = torch.randn(c, 300, generator=g) * 0.1
    b = torch.randn(c, generator=g)
    y = torch.randint(0, c, (700,), generator=g)
    z = torch.addmm(b, h, w.T)

    def norms():
        if entry == "logits":
            return grad_norms(h, z, y, backend="fused")
        return grad_norms(h, labels=y, weight=w, bias=b, backend="fused")

    plain = norms()
    monkeypatch.setattr(_fused, "PREFETCH_MIN_BYTES", 0)
    # Off on AMD CPUs, where the kernels are compiled without the prefetch (the knob then
    # changes nothing; test_prefetch_row_is_only_a_hint covers the prefetch itself there).
    monkeypatch.setattr(_fused, "SOFTWARE_PREFETCH_PAYS", True)
    for ahead in (1, 3000, 10**9):  # 1 row ahead, 10 rows ahead, past the end
        monkeypatch.setattr(_fused, "PREFETCH_BYTES", ahead)
        assert torch.equal(norms(), plain)


@numba.njit(error_model="numpy")
def _sum_with_prefetch(h, ahead):
    n, d = h.shape
    hf = h.reshape(-1)
    total = 0.0
    for i in range(n):
        _kernels._prefetch_row(hf, i + ahead, d, 16)  # past the end for the last rows
        for k in range(d):
            total += h[i, k]
    return total


def test_prefetch_row_is_only_a_hint():
    """The kernels' row prefetch, compiled on every CPU: it never faults, even for rows past
    the end of the array, and changes nothing that is read."""
    h = np.random.default_rng(0).standard_normal((50, 70))
    plain = _sum_with_prefetch(h, 0)
    assert plain == pytest.approx(float(h.sum()), rel=1e-12)
    for ahead in (1, 7, 10**6):
        assert _sum_with_prefetch(h, ahead) == plain


def test_minus_inf_logit_rules_a_class_out():
    """A -inf logit (a class ruled out) sends its block of rows to the scalar form; the
    norm is that of the remaining classes."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(130, 8, generator=g, dtype=torch.float64)
    z = torch.randn(130, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (130,), generator=g)
    z[70, 2] = -torch.inf
    got = grad_norms(h, z, y, backend="fused")
    p = torch.softmax(z[70, :2], 0)
    ref = torch.linalg.vector_norm(p - torch.nn.functional.one_hot(y[70], 2)) * torch.sqrt((h[70] ** 2).sum() + 1)
    torch.testing.assert_close(got[70], ref, rtol=1e-13, atol=0)
    keep = torch.arange(130) != 70
    # The other rows of that block take the scalar form too: equal to within float64 rounding.
    torch.testing.assert_close(got[keep], grad_norms(h[keep], z[keep], y[keep], backend="fused"), rtol=1e-14, atol=0)
