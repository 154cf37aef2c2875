"""The fused (numba) backend of grad_norms against the torch backend and the autograd references."""

import importlib
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradtune import GradTuneInputError, grad_norms, grad_norms_streaming
from gradtune.scores import _fused
from tests.scores.test_grad_norms import reference_from_logits, reference_norms
from tests.scores.test_grad_norms_exact import log_softmax_reference

# The module, not the function that gradtune.scores re-exports under the same name.
gn_module = importlib.import_module("gradtune.scores.grad_norms")


@pytest.fixture
def kernel():
    """Skip (with the reason) where numba is not installed; fail if it is but won't import."""
    pytest.importorskip("numba", reason="the fused backend needs numba: pip install 'gradtune[fast]'")
    assert _fused.available(), "numba is installed but gradtune.scores._fused cannot use it"


@pytest.fixture
def spy(monkeypatch):
    """Count the calls of the fused kernel."""
    calls = []
    real = _fused.run  # every entry point runs the kernel through it

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(_fused, "run", counting)
    return calls


def make(n, d, c, seed, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(c, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    b = (torch.randn(c, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return h, w, b, y


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 40), d=st.integers(1, 30), c=st.sampled_from([2, 3, 4, 5, 10]),
       use_bias=st.booleans(), include_bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       scale=st.sampled_from([0.1, 1.0, 8.0]), seed=st.integers(0, 10_000))
def test_fused_matches_torch_and_autograd(kernel, n, d, c, use_bias, include_bias, dtype, scale, seed):
    h, w, b, y = make(n, d, c, seed, scale, dtype)
    bias = b if use_bias else None
    got = grad_norms(h, labels=y, weight=w, bias=bias, include_bias=include_bias, backend="fused")
    assert got.dtype == dtype and got.shape == (n,)
    ref = reference_norms(h, y, w, b if use_bias else torch.zeros_like(b), include_bias)
    if dtype == torch.float32:
        # fp32: the logits carry fp32 dot-product rounding, |dz_j| <= gamma_d * (|h| @ |w_j|);
        # the norm's relative error follows the logit gaps', so the bound is row-wise.
        u = 2.0 ** -24
        gamma = d * u / (1 - d * u)
        mag = h.double().abs() @ w.double().abs().T                      # (n, C)
        rtol = 1e-5 + 2 * gamma * (mag.max(dim=1).values if n else torch.zeros(0, dtype=torch.float64))
        assert torch.all((got.double() - ref).abs() <= rtol * ref.abs() + 1e-12)
    else:
        torch.testing.assert_close(got.double(), ref, rtol=1e-12, atol=1e-12)
    # The torch backend carries its own rounding of the logits (see test_grad_norms).
    tch = grad_norms(h, labels=y, weight=w, bias=bias, include_bias=include_bias, backend="torch")
    torch.testing.assert_close(got.double(), tch.double(), rtol=5e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("n", [1, 63, 65, 130, 333])
@pytest.mark.parametrize("c", [2, 3])
def test_kernel_thread_split_covers_every_row_once(kernel, n, c):
    """The kernel splits the rows into runs for the threads (not at block boundaries):
    for 1-5 runs every row gets the one-thread norm and each bad label is counted once."""
    from gradtune.scores import _fused_kernels

    h, w, b, y = make(n, 9, c, seed=n + c)
    y[::7] = c  # labels out of range, counted by the kernel
    hn, wn, bn, yn = h.numpy(), w.numpy(), b.numpy(), y.numpy()
    no_logits = np.empty((n, 0), dtype=np.float32)
    ref = np.full(n, np.nan, dtype=np.float32)
    counts_ref = _fused_kernels.kernel_serial(hn, wn, bn, no_logits, yn, 1.0, np.float32(0), ref, 0, 1)
    assert counts_ref[0] == len(range(0, n, 7))
    for parts in range(1, 6):
        out = np.full(n, np.nan, dtype=np.float32)
        counts = _fused_kernels.kernel(hn, wn, bn, no_logits, yn, 1.0, np.float32(0), out, 0, parts)
        assert tuple(counts) == tuple(counts_ref)
        ok = yn < c
        np.testing.assert_allclose(out[ok], ref[ok], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d, c", [(300, 2048, 2), (257, 768, 3), (50, 1100, 5), (130, 67, 7), (65, 2048, 16), (40, 4100, 3),
                                     (40, 33, 17)])
def test_fused_wide_features(kernel, dtype, n, d, c):
    """d = 2048 (the paper's ResNet-50 features) and d = 4100 (three segments): fp32 segment sums keep 1e-5."""
    h, w, b, y = make(n, d, c, seed=d + c, scale=0.2, dtype=dtype)
    got = grad_norms(h, labels=y, weight=w, bias=b, backend="fused")
    z64 = h.double() @ w.double().T + b.double()
    ref = reference_from_logits(h, z64, y, include_bias=True)
    # atol: the fp64 reference's own p_y - 1 cancels (~1e-16 * ||h||) when p_y is near 1.
    torch.testing.assert_close(got.double(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-12)
    tch = grad_norms(h, labels=y, weight=w, bias=b, backend="torch")
    torch.testing.assert_close(got.double(), tch.double(), rtol=5e-5 if dtype == torch.float32 else 1e-11,
                               atol=1e-12)


def test_fused_stable_when_confident(kernel):
    """p_y = 1 - O(1e-10 .. 1e-16): 1 - p_y as a sum of small probabilities, 1e-5 relative in fp32."""
    h = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
    w = torch.tensor([[12.0, 6.0], [-2.0, -1.0], [0.0, 0.5]])
    y = torch.tensor([0, 1, 0])
    got = grad_norms(h, labels=y, weight=w, backend="fused")
    z64 = h.double() @ w.double().T
    assert float(torch.softmax(z64, 1)[0, 0]) > 1 - 1e-9
    # Autograd's p_y - 1 cancels even in fp64 here; each p_c = exp(z_c - logsumexp(z)) does not.
    p = torch.exp(z64 - torch.logsumexp(z64, 1, keepdim=True)).scatter(1, y[:, None], 0.0)
    ref = ((p * p).sum(1) + p.sum(1) ** 2).sqrt() * ((h.double() ** 2).sum(1) + 1).sqrt()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_norms(h.double(), labels=y, weight=w.double(), backend="fused"), ref,
                               rtol=1e-13, atol=0)


def test_fused_empty_and_noncontiguous(kernel):
    w = torch.randn(3, 5)
    out = grad_norms(torch.empty(0, 5), labels=torch.empty(0, dtype=torch.int64), weight=w, backend="fused")
    assert out.shape == (0,) and out.dtype == torch.float32
    # Non-contiguous features are copied first (one extra pass), not refused.
    g = torch.Generator().manual_seed(3)
    ht = torch.randn(5, 50, generator=g)
    y = torch.randint(0, 3, (50,), generator=g)
    assert not ht.T.is_contiguous()
    torch.testing.assert_close(grad_norms(ht.T, labels=y, weight=w, backend="fused"),
                               grad_norms(ht.T.contiguous(), labels=y, weight=w, backend="torch"), rtol=5e-5, atol=0)
    # Array-likes go through the same conversion as the torch backend.
    torch.testing.assert_close(grad_norms(ht.T.numpy(), labels=y.numpy(), weight=w.numpy(), backend="fused"),
                               grad_norms(ht.T, labels=y, weight=w, backend="fused"))


def test_fused_reports_non_finite_rows(kernel):
    h = torch.randn(6, 4)
    h[2, 1] = float("nan")
    h[4, 0] = float("inf")
    with pytest.raises(GradTuneInputError, match=r"NaN or infinite values in 2 row\(s\), e.g. rows \[2, 4\]"):
        grad_norms(h, labels=torch.zeros(6, dtype=torch.int64), weight=torch.ones(2, 4), backend="fused")


def test_auto_dispatch(kernel, spy, monkeypatch):
    h, w, b, y = make(64, 16, 3, seed=0)
    grad_norms(h, labels=y, weight=w, bias=b)  # 1024 elements: below the threshold
    assert spy == []
    monkeypatch.setattr(gn_module, "FUSED_MIN_ELEMENTS", 1000)
    auto = grad_norms(h, labels=y, weight=w, bias=b)
    assert spy == [(64, 16)]
    torch.testing.assert_close(auto, grad_norms(h, labels=y, weight=w, bias=b, backend="fused"))
    spy.clear()
    # Cases auto leaves to torch: many classes, non-contiguous, half precision, backend="torch".
    hc, wc, _, yc = make(64, 16, gn_module.FUSED_MAX_CLASSES + 1, seed=1)
    grad_norms(hc, labels=yc, weight=wc)
    grad_norms(h.T.contiguous().T, labels=y, weight=w)
    grad_norms(h.to(torch.bfloat16), labels=y, weight=w)
    grad_norms(h, labels=y, weight=w, backend="torch")
    grad_norms(h, h @ w.T, y, backend="torch")
    assert spy == []
    # With the logits given, auto takes the fused kernel at any class count (it only reads them).
    z = hc @ wc.T
    auto = grad_norms(hc, z, yc)
    assert spy == [(64, 16)]
    torch.testing.assert_close(auto, grad_norms(hc, z, yc, backend="torch"), rtol=1e-6, atol=0)


def test_streaming_fused_matches_torch(kernel, spy, tmp_path):
    h, w, b, y = make(2500, 40, 3, seed=5)
    path = tmp_path / "feats.npy"
    np.save(path, h.numpy())
    mm = np.load(path, mmap_mode="r")
    got = grad_norms_streaming(mm, y.numpy(), weight=w, bias=b, chunk_rows=300, backend="fused")
    assert len(spy) == 9
    ref = grad_norms_streaming(mm, y.numpy(), weight=w, bias=b, chunk_rows=300, backend="torch")
    np.testing.assert_allclose(got, ref, rtol=5e-5)
    # Same kernel per row; torch's softmax may round the last bit differently per chunk.
    np.testing.assert_allclose(got, grad_norms(h, labels=y, weight=w, bias=b, backend="fused").numpy(), rtol=1e-6)
    got64 = grad_norms_streaming((h[i:i + 999].numpy() for i in range(0, 2500, 999)), y, weight=w, bias=b,
                                 dtype=torch.float64, backend="fused")
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, got, rtol=1e-5)
    bad = h.numpy().copy()
    bad[1234, 3] = np.nan
    with pytest.raises(GradTuneInputError, match=r"rows \[1234\]"):
        grad_norms_streaming(bad, y, weight=w, chunk_rows=300, backend="fused")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=torch.zeros(2, 3, device="meta"), weight=torch.ones(2, 3)), "CPU only"),
        (dict(features=torch.zeros(2, 3, dtype=torch.float16), weight=torch.ones(2, 3)), "float32 and float64"),
        (dict(features=torch.zeros(2, 3, device="meta"), logits=torch.zeros(2, 2, device="meta")), "CPU only"),
    ],
)
def test_fused_refuses_unsupported_input(kwargs, match):
    # Raised before the kernel is needed, so these run without numba too.
    with pytest.raises(GradTuneInputError, match=match):
        grad_norms(labels=torch.tensor([0, 1]), backend="fused", **kwargs)


def test_bad_backend_name():
    with pytest.raises(GradTuneInputError, match="backend must be one of"):
        grad_norms(torch.zeros(2, 3), labels=[0, 1], weight=torch.ones(2, 3), backend="numba")
    with pytest.raises(GradTuneInputError, match="backend must be one of"):
        grad_norms_streaming(np.zeros((2, 3)), [0, 1], weight=np.ones((2, 3)), backend="cuda")


def test_fused_unavailable(monkeypatch):
    """Without numba: 'fused' raises with the install hint, 'auto' quietly uses torch."""
    monkeypatch.setattr(_fused, "available", lambda: False)
    monkeypatch.setattr(gn_module, "FUSED_MIN_ELEMENTS", 0)
    h, w, b, y = make(20, 6, 3, seed=2)
    with pytest.raises(GradTuneInputError, match=r"needs numba.*gradtune\[fast\]"):
        grad_norms(h, labels=y, weight=w, backend="fused")
    with pytest.raises(GradTuneInputError, match="needs numba"):
        grad_norms_streaming(h.numpy(), y, weight=w, backend="fused")
    torch.testing.assert_close(grad_norms(h, labels=y, weight=w, bias=b),
                               grad_norms(h, labels=y, weight=w, bias=b, backend="torch"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_fused_in_forked_child(kernel):
    """After the parallel kernel ran, a forked child gets the serial kernel: numba would abort
    it ("fork() called from a process already using GNU OpenMP"). The child limits torch to
    one thread, as fork workers should (torch's own OpenMP pool hangs after fork otherwise)."""
    h, w, b, y = make(3000, 40, 3, seed=7)
    parent = grad_norms(h, labels=y, weight=w, bias=b, backend="fused")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            import faulthandler

            faulthandler.dump_traceback_later(120, exit=True)
            torch.set_num_threads(1)
            child = grad_norms(h, labels=y, weight=w, bias=b, backend="fused")
            os.write(write_fd, child.numpy().tobytes())
            code = 0
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    np.testing.assert_allclose(np.frombuffer(data, dtype=np.float32), parent.numpy(), rtol=1e-6)


def test_fused_from_threads(kernel):
    """Concurrent calls are serialized by a lock (numba's workqueue layer would abort)."""
    from concurrent.futures import ThreadPoolExecutor

    h, w, b, y = make(5000, 64, 3, seed=8)
    ref = grad_norms(h, labels=y, weight=w, bias=b, backend="fused")
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: grad_norms(h, labels=y, weight=w, bias=b, backend="fused"), range(8)))
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad, match", [(-1, "labels must be >= 0, found -1"), (3, "labels must be < 3"),
                                        (7, "labels must be < 3")])
def test_fused_reports_labels_out_of_range(kernel, bad, match):
    """The kernel counts out-of-range labels (it never indexes with one); the error is the torch path's."""
    h, w, b, y = make(300, 16, 3, seed=4)
    y[123] = bad
    for backend in ("fused", "torch"):
        with pytest.raises(GradTuneInputError, match=match):
            grad_norms(h, labels=y, weight=w, bias=b, backend=backend)
    h2, w2, b2, y2 = make(300, 16, 2, seed=4)  # the two-class residual takes its own branch
    y2[7] = 2
    with pytest.raises(GradTuneInputError, match="labels must be < 2"):
        grad_norms(h2, labels=y2, weight=w2, bias=b2, backend="fused")


@pytest.mark.parametrize("c", [2, 3])
@pytest.mark.parametrize("what, value", [("weight", float("nan")), ("weight", float("inf")),
                                         ("bias", float("-inf")), ("bias", float("nan"))])
def test_fused_names_non_finite_head(kernel, c, what, value):
    """A NaN/inf in the head is refused up front (a -inf bias can leave every norm finite)."""
    h, w, b, y = make(50, 8, c, seed=6)
    (w if what == "weight" else b)[c - 1, ...] = value
    for backend in ("fused", "torch"):
        with pytest.raises(GradTuneInputError, match=f"{what} contains NaN or infinite values"):
            grad_norms(h, labels=y, weight=w, bias=b, backend=backend)


@pytest.mark.parametrize("c", [2, 3])
def test_fused_head_rows_whose_difference_overflows(kernel, c, spy):
    """The kernel works with W[j] - W[0]; rows of opposite sign near the float32 limit
    make that difference overflow though the head is finite: the torch path then gives
    the norms (equal to an fp64 reference), and no error is raised."""
    h, _, _, y = make(40, 6, c, seed=12)
    h[:, 0] *= 1e-38  # logits of order 1 from the 3e38 weights
    w = torch.zeros(c, 6)
    w[0, 0], w[1, 0] = 3e38, -3e38
    b = torch.linspace(-1.0, 1.0, c)
    got = grad_norms(h, labels=y, weight=w, bias=b, backend="fused")
    assert len(spy) >= 1  # the kernel was tried first
    z64 = h.double() @ w.double().T + b.double()
    ref = reference_from_logits(h.double(), z64, y, include_bias=True)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-13)])
def test_fused_two_classes_at_extreme_confidence(kernel, dtype, rtol):
    """C = 2: sqrt(2) / (1 + exp(z_y - z_other)) stays relative-accurate for p_y near 0 and near 1."""
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.3, -0.2], [2.0, 1.0]], dtype=dtype)
    w = torch.tensor([[40.0, 0.0], [0.0, 0.0]], dtype=dtype)  # z = (40, 0) for the first two rows
    y = torch.tensor([0, 1, 1, 0])
    got = grad_norms(h, labels=y, weight=w, backend="fused").double()
    z64 = h.double() @ w.double().T
    logp = z64 - torch.logsumexp(z64, 1, keepdim=True)
    p_other = torch.exp(logp.gather(1, (1 - y)[:, None])).squeeze(1)  # exact even at 4e-18
    ref = 2 ** 0.5 * p_other * ((h.double() ** 2).sum(1) + 1).sqrt()
    torch.testing.assert_close(got, ref, rtol=rtol, atol=0)
    assert float(got[0]) < 1e-16 and abs(float(got[1]) - 2 ** 0.5 * 2 ** 0.5) < 1e-6


def test_fast_path_takes_canonical_tensors_only(kernel, monkeypatch):
    """Canonical CPU tensors skip the general validation; every other form goes through it,
    with bitwise the same norms (one kernel, one rounding)."""
    h, w, b, y = make(300, 40, 3, seed=9)
    lin = torch.nn.Linear(40, 3)  # parameters that require grad are taken too
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    general = grad_norms(h.numpy(), labels=y.numpy(), weight=w.numpy(), bias=b.numpy(), backend="fused")

    def no_general_path(*args, **kwargs):
        raise AssertionError("the general validation ran for canonical input")

    with monkeypatch.context() as m:
        m.setattr(gn_module, "check_features", no_general_path)
        fast = grad_norms(h, labels=y, weight=w, bias=b, backend="fused")
        fast_params = grad_norms(h, labels=y, weight=lin.weight, bias=lin.bias, backend="fused")
        unbiased = grad_norms(h, labels=y, weight=w, backend="fused", include_bias=False)
    assert torch.equal(fast, general) and torch.equal(fast_params, general)
    torch.testing.assert_close(unbiased, grad_norms(h.numpy(), labels=y.numpy(), weight=w.numpy(), backend="fused",
                                                    include_bias=False), rtol=0, atol=0)
    # Not canonical: int32 labels, float64 weight for float32 features, a transposed view.
    calls = []
    real = gn_module.check_features
    monkeypatch.setattr(gn_module, "check_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    for kwargs in (dict(features=h, labels=y.int(), weight=w), dict(features=h, labels=y, weight=w.double()),
                   dict(features=h.T.contiguous().T, labels=y, weight=w)):
        ref = grad_norms(**{k: (v.numpy() if k != "features" else v.contiguous().numpy()) for k, v in kwargs.items()},
                         backend="torch")
        torch.testing.assert_close(grad_norms(**kwargs, backend="fused"), ref, rtol=5e-5, atol=0)
    assert len(calls) >= 3


def test_fast_path_validates_chunk_rows(kernel):
    h, w, b, y = make(20, 4, 2, seed=1)
    with pytest.raises(GradTuneInputError, match="chunk_rows must be > 0"):
        grad_norms(h, labels=y, weight=w, bias=b, backend="fused", chunk_rows=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_entry_point_one_kernel_call(kernel, spy, monkeypatch, dtype):
    """Logits given: canonical tensors go straight to the one-pass kernel (no general
    validation), with the norms of the torch backend; bad labels and NaN are still named."""
    h, w, b, y = make(300, 40, 3, seed=12, dtype=dtype)
    z = torch.addmm(b, h, w.T)

    def no_general_path(*args, **kwargs):
        raise AssertionError("the general validation ran for canonical input")

    with monkeypatch.context() as m:
        m.setattr(gn_module, "check_features", no_general_path)
        fast = grad_norms(h, z, y, backend="fused")
    assert spy == [(300, 40)] and fast.dtype == dtype
    ref = log_softmax_reference(z, y, h)  # autograd's p_y - 1 would cancel at confident rows
    torch.testing.assert_close(fast.double(), ref, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
    # Another form (float64 logits for float32 features, a strided view) takes the general path.
    torch.testing.assert_close(grad_norms(h, z.double(), y, backend="fused"), grad_norms(h, z, y, backend="torch"),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_norms(h, z.T.contiguous().T, y, backend="fused"), fast, rtol=0, atol=0)
    bad_y = y.clone()
    bad_y[5] = 3
    with pytest.raises(GradTuneInputError, match="labels must be < 3"):
        grad_norms(h, z, bad_y, backend="fused")
    bad_z = z.clone()
    bad_z[7, 1] = float("nan")
    with pytest.raises(GradTuneInputError, match=r"logits contain NaN or infinite values in 1 row\(s\), e.g. rows \[7\]"):
        grad_norms(h, bad_z, y, backend="fused")


@pytest.mark.parametrize("entry", ["logits", "head"])
def test_fast_path_refuses_scalar_labels_cleanly(kernel, entry):
    """A 0-d label tensor leaves the fast path for the general validation (no IndexError)."""
    h = torch.randn(1, 4)
    kwargs = dict(logits=torch.randn(1, 2)) if entry == "logits" else dict(weight=torch.randn(2, 4))
    with pytest.raises(GradTuneInputError, match="labels must be 1-dimensional"):
        grad_norms(h, labels=torch.tensor(0), backend="fused", **kwargs)
