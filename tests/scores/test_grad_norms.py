"""grad_norms against autograd per-sample gradients (fp64 reference), one sample at a time."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradtune import GradTuneInputError, grad_norms, grad_norms_streaming
from gradtune.scores import residual_norms


def reference_norms(h, y, w, b, include_bias):
    """Slow reference: autograd gradient of each sample's CE loss w.r.t. (W, b), in fp64."""
    h, w, b = h.double(), w.double(), b.double()
    out = []
    for i in range(h.shape[0]):
        wi = w.clone().requires_grad_(True)
        bi = b.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy((h[i:i + 1] @ wi.T + bi), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, (wi, bi))
        sq = (gw ** 2).sum() + ((gb ** 2).sum() if include_bias else 0.0)
        out.append(sq.sqrt())
    return torch.stack(out) if out else torch.empty(0, dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), d=st.integers(1, 30), c=st.sampled_from([2, 3, 10]),
       include_bias=st.booleans(), scale=st.sampled_from([0.1, 1.0, 8.0]), seed=st.integers(0, 10_000))
def test_matches_autograd_reference(n, d, c, include_bias, scale, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(c, d, generator=g) * scale
    b = torch.randn(c, generator=g) * scale
    y = torch.randint(0, c, (n,), generator=g)
    ref = reference_norms(h, y, w, b, include_bias)
    got = grad_norms(h, labels=y, weight=w, bias=b, include_bias=include_bias)
    assert got.dtype == torch.float32 and got.shape == (n,)
    # Head path: the fp32 logits themselves carry rounding (|z| up to ~100 here), which moves
    # exp() by up to ~|z| * 6e-8 relative; atol covers the fp64 reference's own p_y - 1 rounding.
    torch.testing.assert_close(got.double(), ref, rtol=5e-5, atol=1e-12)
    # Logits path: given the same fp32 logits, the norm itself is accurate to 1e-5 relative.
    z32 = (h.double() @ w.double().T + b.double()).float()
    got2 = grad_norms(h, z32, y, include_bias=include_bias)
    ref2 = reference_from_logits(h, z32, y, include_bias)
    torch.testing.assert_close(got2.double(), ref2, rtol=1e-5, atol=1e-12)


def reference_from_logits(h, z, y, include_bias):
    """Autograd (fp64) of the loss w.r.t. the logits r = p - e_y; the layer gradient is r [h, 1]^T."""
    z = z.double().clone().requires_grad_(True)
    if z.shape[0] == 0:
        return torch.empty(0, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(z, y, reduction="sum")
    (r,) = torch.autograd.grad(loss, z)
    hn = (h.double() ** 2).sum(1) + (1.0 if include_bias else 0.0)
    return r.norm(dim=1) * hn.sqrt()


def test_fp32_stable_when_confident():
    """p_y near 1: the textbook softmax - onehot loses digits in fp32; grad_norms must not."""
    h = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
    logits = torch.tensor([[12.0, -3.0, 0.0], [20.0, 1.0, 2.0], [9.0, 9.5, -4.0]])
    y = torch.tensor([0, 0, 1])
    w64 = logits.double()
    p = torch.softmax(w64, 1)
    resid = p.clone()
    resid[torch.arange(3), y] -= 1
    ref = resid.norm(dim=1) * (h.double().norm(dim=1) ** 2 + 1).sqrt()
    got = grad_norms(h, logits, y)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)


def test_binary_closed_form_is_loss_like():
    """For C=2, ||p - e_y|| = sqrt(2) (1 - p_y)."""
    z = torch.tensor([[0.3, -1.2], [2.0, 0.1], [-0.5, 0.5]])
    y = torch.tensor([0, 1, 1])
    py = torch.softmax(z, 1)[torch.arange(3), y]
    torch.testing.assert_close(residual_norms(z, y), np.sqrt(2) * (1 - py))


def test_chunking_does_not_change_result():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1000, 7, generator=g)
    w = torch.randn(3, 7, generator=g)
    y = torch.randint(0, 3, (1000,), generator=g)
    a = grad_norms(h, labels=y, weight=w, chunk_rows=1000)
    b = grad_norms(h, labels=y, weight=w, chunk_rows=37)
    torch.testing.assert_close(a, b)


def test_streaming_memmap_matches_in_memory(tmp_path):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2500, 16, generator=g)
    w = torch.randn(2, 16, generator=g)
    b = torch.randn(2, generator=g)
    y = torch.randint(0, 2, (2500,), generator=g)
    path = tmp_path / "feats.npy"
    np.save(path, h.numpy())
    mm = np.load(path, mmap_mode="r")
    got = grad_norms_streaming(mm, y.numpy(), weight=w, bias=b, chunk_rows=300)
    ref = grad_norms(h, labels=y, weight=w, bias=b).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # An iterator of chunks works too.
    chunks = (h[i:i + 999].numpy() for i in range(0, 2500, 999))
    np.testing.assert_allclose(grad_norms_streaming(chunks, y, weight=w, bias=b), ref, rtol=1e-6)


def test_streaming_row_count_mismatch():
    h = np.zeros((10, 3), np.float32)
    with pytest.raises(GradTuneInputError, match="10 rows but 12 labels"):
        grad_norms_streaming(h, np.zeros(12, int), weight=np.ones((2, 3)))
    with pytest.raises(GradTuneInputError, match="more rows than"):
        grad_norms_streaming(h, np.zeros(8, int), weight=np.ones((2, 3)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=np.zeros(3), labels=[0, 1, 0], weight=np.ones((2, 3))), "2-dimensional"),
        (dict(features=np.full((2, 3), np.nan), labels=[0, 1], weight=np.ones((2, 3))), "NaN"),
        (dict(features=np.zeros((2, 3)), labels=[0, 2], weight=np.ones((2, 3))), "< 2"),
        (dict(features=np.zeros((2, 3)), labels=[0, -1], weight=np.ones((2, 3))), ">= 0"),
        (dict(features=np.zeros((2, 3)), labels=[0, 1, 1], weight=np.ones((2, 3))), "3 entries but 2"),
        (dict(features=np.zeros((2, 3)), labels=[0, 1], weight=np.ones((2, 4))), "weight has shape"),
        (dict(features=np.zeros((2, 3)), labels=[0, 1]), "either logits"),
        (dict(features=np.zeros((2, 3)), labels=[0.5, 1], weight=np.ones((2, 3))), "integer"),
        (dict(features=np.zeros((2, 3)), logits=np.zeros((3, 2)), labels=[0, 1]), "logits have 3 rows"),
        (dict(features=np.zeros((2, 3)), labels=[0, 1], weight=np.ones((2, 3)), bias=np.ones(3)), "bias has 3"),
    ],
)
def test_bad_input_errors(kwargs, match):
    with pytest.raises(GradTuneInputError, match=match):
        grad_norms(**kwargs)
