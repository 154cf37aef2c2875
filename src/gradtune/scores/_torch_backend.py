"""The torch backend of :func:`gradtune.grad_norms`: residuals and row norms with torch ops.

Any device. With the head given, the logits are taken relative to class 0
(``(W[j] - W[0]) @ h``, one dot product fewer per row) by the BLAS call measured fastest
for the row count, and on the CPU the rows go in cache-sized blocks so that the row
norms reread them from cache. The residual is computed in float64 as described in
:mod:`gradtune.scores.grad_norms`.

Shapes: N (or n, per chunk) samples, d features, C classes.
"""

from __future__ import annotations

import math

import torch

__all__: list[str] = []

# Head given, on the CPU: features of more than _BLOCKED_MIN_BYTES go in blocks of rows of
# about _CACHE_BLOCK_BYTES, small enough that each thread's share stays in its L2 cache
# between the two passes (see _relative_logits_and_norms). Smaller features go in one
# block: there the two torch calls per block would cost more than the cache saves.
_CACHE_BLOCK_BYTES = 1 << 20
_BLOCKED_MIN_BYTES = 16 << 20
_SQRT2 = math.sqrt(2.0)


def _wide(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the residual is computed in: float64, except on devices without it."""
    return dtype if device.type == "mps" else torch.float64


def _residual_t(z_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`residual_norms` on class-major logits ``z_t`` (C, N) (the layout ``W @ h.T`` gives).

    Returns float64 (N,). With ``s = 1 - p_y``, the largest component of ``p - e_y`` in
    magnitude, the norm is ``s * sqrt(1 + sum_{j != y} (p_j / s)^2)``: each component
    is divided by ``s`` before it is squared, so no square underflows where the norm is
    representable. ``s`` is the ratio of ``sum exp(z_j - max z)`` over the other
    classes to that over all classes: no cancellation when ``p_y`` is near 1.
    """
    res, scale = _residual_scaled(z_t, y)
    return res.mul_(scale) if scale != 1.0 else res


def _residual_scaled(z_t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(r float64 (N,), scale): :func:`_residual_t` of ``z_t`` (C, N) is ``r * scale``.

    The scale is left to the caller, which folds it into its last product: at the
    paper's smallest held-out set each elementwise call is a noticeable share of the
    time.
    """
    wide = _wide(z_t.dtype, z_t.device)
    if z_t.shape[0] == 2:  # z_1 - z_0 as one product with (-1, 1), exact in float64
        diff = torch.mv(z_t.T.to(wide), _const((-1.0, 1.0), wide, z_t.device))
        return _two_class(diff, y), _SQRT2
    return _residual_wide(z_t.to(wide).contiguous(), y), 1.0


def _two_class(diff: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sigmoid(z_other - z_y)`` (N,) from ``diff = z_1 - z_0`` (N,).

    ``||p - e_y|| = sqrt(2) * sigmoid(z_other - z_y)`` for two classes, accurate at
    both ends; ``z_other - z_y`` is ``diff`` for y = 0 and ``-diff`` for y = 1, i.e.
    ``diff - 2 y diff``.
    """
    return torch.addcmul(diff, y, diff, value=-2).sigmoid_()


def _residual_wide(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The C >= 3 form of :func:`_residual_t` on contiguous wide logits z (C, N)."""
    e = (z - z.amax(dim=0)).exp_()  # (C, N), the largest entry of each column is 1
    e_all = e.sum(dim=0)
    e.scatter_(0, y[None, :], 0.0)  # the other classes
    s_other = e.sum(dim=0)
    # q_j = p_j / (1 - p_y) for j != y, scaled before squaring; 0 where s_other underflowed to 0.
    # (The sum of squares by hand: on the CPU, vector_norm over dim 0 of a (C, N) tensor is far slower.)
    q = e.div_(s_other.clamp_min(torch.finfo(z.dtype).tiny))
    return q.mul_(q).sum(dim=0).add_(1.0).sqrt_().mul_(s_other.div_(e_all))  # (1 - p_y) * sqrt(1 + |q|^2)


def _relative_residual(r: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """:func:`_residual_scaled` from logits relative to class 0: ``r`` (C - 1, N) holds
    ``(W[j] - W[0]) @ h`` for j = 1..C-1, without the bias, which is added here in float64.

    Softmax is unchanged by the shift, so the result is that of the full logits.
    """
    wide = _wide(r.dtype, r.device)
    rb = r.to(wide)
    if rb.shape[0] == 1:  # two classes: rb[0] is z_1 - z_0 less the bias difference
        if bias is not None:
            b0, b1 = bias.tolist()  # Python floats: exact, and the difference is float64's
            rb[0].add_(b1 - b0)
        return _two_class(rb[0], y), _SQRT2
    if bias is not None:
        b = bias.to(wide)
        rb += (b[1:] - b[0])[:, None]
    return _residual_wide(torch.cat([rb.new_zeros(1, rb.shape[1]), rb]), y), 1.0


def _relative_logits(h: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(C - 1, n) ``w @ h_i`` for the relative weight rows w (C - 1, d) and h (n, d), into
    ``out`` if given.

    The BLAS call is the one measured fastest for the row count: for one row (two
    classes) a matrix-vector product, which streams ``h`` at the speed of a read; for
    2-3 rows the class-major product ``w @ h.T``, for which BLAS also streams ``h``
    once; beyond, ``h @ w.T``, which BLAS then handles better than the class-major form.
    """
    if w.shape[0] == 1:
        return torch.mv(h, w[0])[None] if out is None else torch.mv(h, w[0], out=out[0])[None]
    if w.shape[0] <= 3:
        return torch.mm(w, h.T, out=out)
    r = (h @ w.T).T
    return r if out is None else out.copy_(r)


def _relative_logits_and_norms(h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`_relative_logits` (C - 1, n), ``||h_i||`` (n,)) of h (n, d).

    On the CPU, features of more than ``_BLOCKED_MIN_BYTES`` go in blocks of rows of
    about ``_CACHE_BLOCK_BYTES``: BLAS reads each block from memory and the row norms
    read it again from cache.
    """
    n, d = h.shape
    k = w.shape[0]
    row_bytes = d * h.element_size()
    if h.device.type != "cpu" or n * row_bytes <= _BLOCKED_MIN_BYTES:  # one block
        return _relative_logits(h, w), torch.linalg.vector_norm(h, dim=1)
    rows = max(1, min(n, _CACHE_BLOCK_BYTES // row_bytes))  # row_bytes > 0 here
    hn = torch.empty(n, dtype=h.dtype, device=h.device)
    # The per-block views come from split/unbind, one call each, rather than from a
    # slice per block and array: the per-call overhead is a visible share at these sizes.
    if k == 1:  # matrix-vector products straight into the (n,) output
        r = torch.empty(1, n, dtype=h.dtype, device=h.device)
        w0 = w[0]
        for hb, rb, nb in zip(h.split(rows), r[0].split(rows), hn.split(rows), strict=True):
            torch.mv(hb, w0, out=rb)
            torch.linalg.vector_norm(hb, dim=1, out=nb)
        return r, hn
    n_blocks = -(-n // rows)
    blocks = torch.empty(n_blocks, k, rows, dtype=h.dtype, device=h.device)  # contiguous outputs per block
    for hb, ob, nb in zip(h.split(rows), blocks.unbind(0), hn.split(rows), strict=True):
        _relative_logits(hb, w, ob if hb.shape[0] == rows else ob[:, :hb.shape[0]])
        torch.linalg.vector_norm(hb, dim=1, out=nb)
    return blocks.permute(1, 0, 2).reshape(k, n_blocks * rows)[:, :n], hn


def _relative_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C - 1, d): ``W[j] - W[0]`` for j = 1..C-1 of weight (C, d).

    Logits relative to class 0 give the same softmax with one dot product fewer per
    row. Where two finite rows differ by more than the dtype holds, this holds inf:
    check it with :func:`gradtune._validation.all_finite` and pass ``relative=False``.
    """
    return weight[1:] - weight[0]


def _norms_chunk(h: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None,
                 weight: torch.Tensor | None, bias: torch.Tensor | None,
                 include_bias: bool, relative: bool = True) -> torch.Tensor:
    """One chunk: the residual from the logits, times the row norms.

    With the head given, ``weight`` holds the :func:`_relative_weight` rows (C - 1, d),
    or with ``relative=False`` the weight (C, d) itself (for a finite head whose rows
    differ by more than the dtype holds).
    """
    if logits is None and relative:
        r, hn = _relative_logits_and_norms(h, weight)
        res, scale = _relative_residual(r, y, bias)
    else:
        if logits is None:
            logits = h @ weight.T
            if bias is not None:
                logits += bias
        hn = torch.linalg.vector_norm(h, dim=1)
        res, scale = _residual_scaled(logits.T, y)
    if include_bias:
        hn = torch.hypot(hn, _const(1.0, hn.dtype))  # sqrt(||h||^2 + 1)
    # 0 + scale * res * hn in one call, computed in float64 and rounded once into out.
    out = torch.empty(h.shape[0], dtype=h.dtype, device=h.device)
    return torch.addcmul(_const(0.0, h.dtype), res, hn, value=scale, out=out)


_CONSTS: dict[tuple, torch.Tensor] = {}


def _const(value: float | tuple[float, ...], dtype: torch.dtype,
           device: torch.device | None = None) -> torch.Tensor:
    """A cached constant tensor: 0-dim on the CPU for a float (a CPU scalar tensor combines
    with tensors on any device), 1-dim on ``device`` for a tuple."""
    key = (value, dtype, device)
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS.setdefault(key, torch.tensor(value, dtype=dtype, device=device))
    return t


def _torch_norms(h: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, w: torch.Tensor | None,
                 b: torch.Tensor | None, include_bias: bool, chunk_rows: int, relative: bool = True) -> torch.Tensor:
    """The torch backend on checked inputs, ``chunk_rows`` rows at a time: (N,) norms."""
    n = h.shape[0]
    if n <= chunk_rows:
        return _norms_chunk(h, y, z, w, b, include_bias, relative)
    out = torch.empty(n, dtype=h.dtype, device=h.device)
    for start in range(0, n, chunk_rows):
        sl = slice(start, min(start + chunk_rows, n))
        out[sl] = _norms_chunk(h[sl], y[sl], None if z is None else z[sl], w, b, include_bias, relative)
    return out
