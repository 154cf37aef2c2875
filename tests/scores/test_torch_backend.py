"""The torch backend's head path (relative logits, cache blocks, the overflow fallback)
against autograd and fp64 references."""

import numpy as np
import pytest
import torch

from gradtune import grad_norms, grad_norms_streaming
from gradtune.scores import _torch_backend
from tests.scores.test_grad_norms import reference_from_logits, reference_norms


@pytest.mark.parametrize("c", [2, 3, 5])  # one relative weight row (a matrix-vector product), 2, and 4
@pytest.mark.parametrize("block_rows", [1, 5, 53, 80])
def test_torch_head_in_cache_blocks_matches_autograd(monkeypatch, c, block_rows):
    """The torch backend takes the head's rows in cache-sized blocks (here shrunk to a few
    rows, the last block ragged): every block size gives the autograd norms."""
    monkeypatch.setattr(_torch_backend, "_CACHE_BLOCK_BYTES", block_rows * 7 * 4)
    monkeypatch.setattr(_torch_backend, "_BLOCKED_MIN_BYTES", 0)
    g = torch.Generator().manual_seed(c * 100 + block_rows)
    h = torch.randn(53, 7, generator=g)
    w = torch.randn(c, 7, generator=g)
    b = torch.randn(c, generator=g)
    y = torch.randint(0, c, (53,), generator=g)
    for bias in (b, None):
        for include_bias in (True, False):
            got = grad_norms(h, labels=y, weight=w, bias=bias, include_bias=include_bias, backend="torch")
            ref = reference_norms(h, y, w, torch.zeros(c) if bias is None else bias, include_bias)
            torch.testing.assert_close(got.double(), ref, rtol=5e-5, atol=1e-12)


@pytest.mark.parametrize("c", [2, 3])
def test_torch_head_rows_whose_difference_overflows(c):
    """The torch backend works with W[j] - W[0] too: for rows of opposite sign near the
    float32 limit that difference overflows though the head is finite, and both entry
    points that take a head (in memory and streamed) fall back to the logits themselves."""
    g = torch.Generator().manual_seed(12)
    h = torch.randn(40, 6, generator=g)
    h[:, 0] *= 1e-38  # logits of order 1 from the 3e38 weights
    w = torch.zeros(c, 6)
    w[0, 0], w[1, 0] = 3e38, -3e38
    b = torch.linspace(-1.0, 1.0, c)
    y = torch.randint(0, c, (40,), generator=g)
    z64 = h.double() @ w.double().T + b.double()
    ref = reference_from_logits(h.double(), z64, y, include_bias=True)
    got = grad_norms(h, labels=y, weight=w, bias=b, backend="torch")
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)
    streamed = grad_norms_streaming(h.numpy(), y, weight=w, bias=b, chunk_rows=15, backend="torch")
    np.testing.assert_allclose(streamed, ref.numpy(), rtol=1e-5, atol=0)
