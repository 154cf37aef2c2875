"""The numba kernels behind :mod:`gradtune.scores._fused` (imported only when numba is).

Layout of a kernel call: each thread takes a contiguous run of rows (as equal as rows
allow), cuts it into blocks of ``ROWS_PER_BLOCK`` and allocates its scratch once. Per block:

1. *Stream* (memory-bound): each row of ``h`` is read once. With the head given, a
   ``_SEGMENT``-long piece of the row is swept once per 4 classes while it sits in L1,
   giving the row's logits relative to class 0 (C - 1 dot products, with the weight
   rows ``W[j] - W[0]``) and ``||h||^2`` together; with the logits given, only
   ``||h||^2``. Where software prefetch pays (``_PREFETCH``), a row ``prefetch_rows``
   ahead is prefetched, so the next rows are on their way while this one is
   multiplied. The block's logits go into a class-major (C, R) float64 scratch.
2. *Residual* (compute): ``||softmax(z) - e_y||`` for the whole block, as loops over
   rows with the classes outside, so that they run on SIMD lanes; ``exp`` is
   :func:`gradtune.scores._simd.exp_nonpos`. A block holding a row with a logit gap
   beyond ~708, with ``E_other`` below ``_TINY_OTHER`` (gaps beyond ~345, with C >= 3)
   or with a -inf logit is redone with the scalar :func:`_residual`, which uses
   ``math.exp`` and the form scaled before squaring.
3. ``out[i] = residual * sqrt(||h_i||^2 + extra)``, counting labels outside ``0..C-1``
   and non-finite norms on the way.

Numerics are described in :mod:`gradtune.scores._fused`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from gradtune.scores._simd import (
    EXP_MIN_ARG,
    SOFTWARE_PREFETCH_PAYS,
    exp_nonpos,
    prefer_wide_vectors,
    prefetch,
)

ROWS_PER_BLOCK = 64
_SEGMENT = 2048  # row elements accumulated in the input dtype before adding into float64 (see _fused)
_SQRT2 = math.sqrt(2.0)
_TINY_OTHER = 1e-150  # below this E_other the block form's squares could leave the normal range
_FM = {"reassoc", "contract"}  # SIMD partial sums and FMA; no nnan/ninf/afn: IEEE semantics kept
# Whether the stream loops contain the prefetch at all. numba reads this global at compile
# time, so where software prefetch does not pay (AMD CPUs) the loops are compiled without
# it: kept in behind a branch never taken, it still slowed the loops there, more so when
# the kernels were loaded from numba's disk cache (see the notes in _fused).
_PREFETCH = SOFTWARE_PREFETCH_PAYS


# Partial dot products over one segment r (m,) of a row and the same columns of up to
# 4 weight rows a, b, ... (m,), plus sum(r * r), accumulated in the input dtype (that
# of the scalar ``zero``). With reassoc, LLVM keeps 32-64 SIMD partial sums per sum
# (8 or 16 lanes x 4), so each adds at most 64 products of a segment.
@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _seg4(r, a, b, c, e, zero):
    s = t0 = t1 = t2 = t3 = zero
    for k in range(r.shape[0]):
        x = r[k]
        s += x * x
        t0 += a[k] * x
        t1 += b[k] * x
        t2 += c[k] * x
        t3 += e[k] * x
    return s, t0, t1, t2, t3


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _seg3(r, a, b, c, zero):
    s = t0 = t1 = t2 = zero
    for k in range(r.shape[0]):
        x = r[k]
        s += x * x
        t0 += a[k] * x
        t1 += b[k] * x
        t2 += c[k] * x
    return s, t0, t1, t2


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _seg2(r, a, b, zero):
    s = t0 = t1 = zero
    for k in range(r.shape[0]):
        x = r[k]
        s += x * x
        t0 += a[k] * x
        t1 += b[k] * x
    return s, t0, t1


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _seg1(r, a, zero):
    s = t0 = zero
    for k in range(r.shape[0]):
        x = r[k]
        s += x * x
        t0 += a[k] * x
    return s, t0


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _row_sq(r, zero):
    """||r||^2 of one row r (d,): segment sums in the input dtype, added in float64."""
    d = r.shape[0]
    ss = 0.0
    for k0 in range(0, d, _SEGMENT):
        rs = r[k0:min(k0 + _SEGMENT, d)]
        s = zero
        for k in range(rs.shape[0]):
            s += rs[k] * rs[k]
        ss += s
    return ss


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _row_logits(r, w, bias, z, zero):
    """z (C,) = logits of row r (d,) relative to class 0; returns ||r||^2.

    ``w`` (C - 1, d) holds ``W[j] - W[0]`` for j = 1..C-1 and ``bias`` (C,) the
    original bias: ``z[0] = 0`` and ``z[j] = (b_j - b_0) + w[j - 1] @ r`` in float64
    across segments (softmax is unchanged by the shift, and one dot product fewer
    per row is one FMA stream fewer per element). Each _SEGMENT-long piece of r is
    read from memory once and swept once per 4 weight rows while it sits in L1. The
    loops index from 0 over slices: a runtime start offset would stop LLVM from
    proving unit stride (it would emit gathers).
    """
    c = w.shape[0]  # C - 1 >= 1
    d = r.shape[0]
    b0 = np.float64(bias[0])
    z[0] = 0.0
    for j in range(c):
        z[j + 1] = np.float64(bias[j + 1]) - b0
    ss = 0.0
    for k0 in range(0, d, _SEGMENT):
        k1 = min(k0 + _SEGMENT, d)
        rs = r[k0:k1]
        j = 0
        while j < c:
            m = c - j
            if m >= 4:
                s, t0, t1, t2, t3 = _seg4(rs, w[j, k0:k1], w[j + 1, k0:k1], w[j + 2, k0:k1],
                                          w[j + 3, k0:k1], zero)
                z[j + 1] += t0
                z[j + 2] += t1
                z[j + 3] += t2
                z[j + 4] += t3
                step = 4
            elif m == 3:
                s, t0, t1, t2 = _seg3(rs, w[j, k0:k1], w[j + 1, k0:k1], w[j + 2, k0:k1], zero)
                z[j + 1] += t0
                z[j + 2] += t1
                z[j + 3] += t2
                step = 3
            elif m == 2:
                s, t0, t1 = _seg2(rs, w[j, k0:k1], w[j + 1, k0:k1], zero)
                z[j + 1] += t0
                z[j + 2] += t1
                step = 2
            else:
                s, t0 = _seg1(rs, w[j, k0:k1], zero)
                z[j + 1] += t0
                step = 1
            if j == 0:
                ss += s
            j += step
    return ss


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _prefetch_row(hf, i, d, step):
    """Prefetch row i of the flattened (N * d,) features, one request per cache line."""
    base = i * d
    for k in range(0, d, step):
        prefetch(hf, base + k)


@njit(fastmath=_FM, nogil=True, error_model="numpy")
def _residual(z, y, e):
    """||softmax(z) - onehot(y)||_2 for one row's float64 logits z (C,); e: (C,) scratch.

    The scalar form, with ``math.exp``, for the rows the block form hands back. With
    ``s = 1 - p_y`` (the largest component of ``p - e_y`` in magnitude) the norm is
    ``s * sqrt(1 + sum_{j != y} (p_j / s)^2)``: no component is squared before it is
    scaled by ``s``. ``s`` is ``E_other / E_all`` with ``E = sum exp(z_j - max z)`` over
    the other classes and over all, so it does not cancel when ``p_y`` is near 1. ``y``
    is only compared with class indices, never used as one. NaN/+inf logits give NaN.
    """
    c = z.shape[0]
    if c == 2 and (y == 0 or y == 1):
        # Two classes: ||p - e_y|| = sqrt(2) * p_other, p_other = sigmoid(z_other - z_y),
        # written so that exp never overflows and the tiny end keeps its digits.
        t = z[1 - y] - z[y]
        if not math.isfinite(z[0] + z[1]):
            return math.nan
        if t < 0.0:
            u = math.exp(t)
            return _SQRT2 * u / (1.0 + u)
        return _SQRT2 / (1.0 + math.exp(-t))
    jm = 0
    for j in range(1, c):
        if z[j] > z[jm]:
            jm = j
    m = z[jm]
    e_all = 0.0
    e_other = 0.0
    for j in range(c):
        e[j] = math.exp(z[j] - m)  # NaN for every j when the largest logit is inf
        e_all += e[j]
        if j != y:
            e_other += e[j]
    if e_other == 0.0:  # the other classes' exp underflowed: the norm is below 1e-308
        return 0.0 if e_all == e_all else math.nan
    inv = 1.0 / e_other
    q2 = 0.0
    for j in range(c):
        if j != y:
            q = e[j] * inv
            q2 += q * q
    return e_other / e_all * math.sqrt(1.0 + q2)


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _residual_block2(zb, yb, m, res, low):
    """Two classes, rows 0..m-1 of zb (2, R): res = sqrt(2) * sigmoid(z_other - z_y), NaN
    for non-finite logits; low (R,) = the exp argument (below EXP_MIN_ARG: redo the row).

    Per-row stores, not a running minimum: LLVM vectorizes a floating-point min
    reduction only under the nnan fast-math flag, which the kernels do not set."""
    for ii in range(m):
        z0 = zb[0, ii]
        z1 = zb[1, ii]
        t = z0 - z1 if yb[ii] == 1 else z1 - z0  # z_other - z_y
        a = -abs(t)
        u = exp_nonpos(a)
        r = _SQRT2 * (u if t < 0.0 else 1.0) / (1.0 + u)
        res[ii] = r if math.isfinite(z0 + z1) else math.nan
        low[ii] = a


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _residual_blockc(zb, yb, m, res, low, mx, e_all, e_oth, ss):
    """C classes, rows 0..m-1 of zb (C, R): res as in :func:`_residual`; low (R,) = the
    row's smallest exp argument; e_oth (R,) = E_other; mx, e_all and ss are (R,) scratch.

    With ``e_j = exp(z_j - max z)`` (the largest is 1) the norm is
    ``sqrt(E_other^2 + sum_{j != y} e_j^2) / E_all``: no cancellation, one square root
    and one division per row. The squares stay normal floats while ``E_other >= 1e-150``.
    A row with ``low < EXP_MIN_ARG`` or ``E_other < _TINY_OTHER`` must be redone with the
    scaled scalar form.
    """
    c = zb.shape[0]
    for ii in range(m):
        mx[ii] = zb[0, ii]
    for j in range(1, c):
        for ii in range(m):
            v = zb[j, ii]
            mx[ii] = v if v > mx[ii] else mx[ii]
    for ii in range(m):
        x = zb[0, ii] - mx[ii]
        low[ii] = x
        ej = exp_nonpos(x)
        o = 0.0 if yb[ii] == 0 else ej
        e_all[ii] = ej
        e_oth[ii] = o
        ss[ii] = o * o
    for j in range(1, c):
        for ii in range(m):
            x = zb[j, ii] - mx[ii]
            low[ii] = x if x < low[ii] else low[ii]
            ej = exp_nonpos(x)
            o = 0.0 if yb[ii] == j else ej
            e_all[ii] += ej
            e_oth[ii] += o
            ss[ii] += o * o
    for ii in range(m):
        eo = e_oth[ii]
        res[ii] = math.sqrt(eo * eo + ss[ii]) / e_all[ii]


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _finish_block(zb, sqb, y, extra, out, start, stop, work, zrow, erow):
    """Norms of rows start..stop-1 from their float64 logits zb (C, R) and ||h||^2 sqb
    (R,); work (6, R), zrow and erow (C,) are scratch.

    Returns (labels outside 0..C-1, non-finite norms) among these rows.
    """
    c = zb.shape[0]
    m = stop - start
    yb = y[start:stop]
    res = work[0]
    low = work[1]
    e_oth = work[2]
    redo = 0
    if c == 2:
        _residual_block2(zb, yb, m, res, low)
        for ii in range(m):
            redo += low[ii] < EXP_MIN_ARG
    else:
        _residual_blockc(zb, yb, m, res, low, work[3], work[4], e_oth, work[5])
        for ii in range(m):
            redo += (low[ii] < EXP_MIN_ARG) | (e_oth[ii] < _TINY_OTHER)
    if redo:  # rare: huge logit gaps or a -inf logit
        for ii in range(m):
            for j in range(c):
                zrow[j] = zb[j, ii]
            res[ii] = _residual(zrow, yb[ii], erow)
    bad_labels = 0
    non_finite = 0
    ob = out[start:stop]
    for ii in range(m):
        yi = yb[ii]
        bad_labels += (yi < 0) | (yi >= c)
        v = ob.dtype.type(res[ii] * math.sqrt(sqb[ii] + extra))
        ob[ii] = v
        non_finite += not (abs(v) < math.inf)  # as stored: float32 may overflow where float64 did not
    return bad_labels, non_finite


@njit(fastmath=_FM, nogil=True, error_model="numpy")
def _stream_head(h, hf, w, bias, zero, zb, sqb, zrow, start, stop, prefetch_rows, step):
    """Rows start..stop-1: zb[:, i - start] = the logits of h[i] relative to class 0 (see
    :func:`_row_logits`) and sqb[i - start] = ||h[i]||^2."""
    prefer_wide_vectors()
    n, d = h.shape
    c = bias.shape[0]
    if c == 2 and d <= _SEGMENT:
        # Two classes and one segment (the paper's heads): one dot product per row, without
        # _row_logits' loops over segments and weight rows, whose bookkeeping per row is a
        # large share of a short row's time.
        db = np.float64(bias[1]) - np.float64(bias[0])
        w1 = w[0]
        for i in range(start, stop):
            if _PREFETCH and prefetch_rows > 0 and i + prefetch_rows < n:
                _prefetch_row(hf, i + prefetch_rows, d, step)
            s, t = _seg1(h[i], w1, zero)
            sqb[i - start] = s
            zb[0, i - start] = 0.0
            zb[1, i - start] = db + t
        return
    for i in range(start, stop):
        if _PREFETCH and prefetch_rows > 0 and i + prefetch_rows < n:
            _prefetch_row(hf, i + prefetch_rows, d, step)
        sqb[i - start] = _row_logits(h[i], w, bias, zrow, zero)
        for j in range(c):
            zb[j, i - start] = zrow[j]


@njit(fastmath=_FM, nogil=True, error_model="numpy")
def _stream_logits(h, hf, logits, zero, zb, sqb, start, stop, prefetch_rows, step):
    """Rows start..stop-1: zb[:, i - start] = logits[i] (in float64), sqb[i - start] = ||h[i]||^2."""
    prefer_wide_vectors()
    n, d = h.shape
    c = logits.shape[1]
    for i in range(start, stop):
        if _PREFETCH and prefetch_rows > 0 and i + prefetch_rows < n:
            _prefetch_row(hf, i + prefetch_rows, d, step)
        sqb[i - start] = _row_sq(h[i], zero)
        for j in range(c):
            zb[j, i - start] = logits[i, j]


@njit(fastmath=_FM, nogil=True, error_model="numpy")
def _blocks(h, w, bias, logits, y, extra, zero, out, prefetch_rows, r0, r1):
    """Rows r0..r1-1 of :func:`kernel`, in blocks of ``ROWS_PER_BLOCK`` from r0 (the last
    one shorter). Returns (bad labels, non-finite norms)."""
    prefer_wide_vectors()
    n, d = h.shape
    have_logits = logits.shape[1] > 0
    c = logits.shape[1] if have_logits else bias.shape[0]
    hf = h.reshape(-1)
    step = max(1, 64 // h.itemsize)  # elements per cache line
    zb = np.empty((c, ROWS_PER_BLOCK), dtype=np.float64)
    sqb = np.empty(ROWS_PER_BLOCK, dtype=np.float64)
    work = np.empty((6, ROWS_PER_BLOCK), dtype=np.float64)
    zrow = np.empty(c, dtype=np.float64)
    erow = np.empty(c, dtype=np.float64)
    bad_labels = 0
    non_finite = 0
    for start in range(r0, r1, ROWS_PER_BLOCK):
        stop = min(r1, start + ROWS_PER_BLOCK)
        if have_logits:
            _stream_logits(h, hf, logits, zero, zb, sqb, start, stop, prefetch_rows, step)
        else:
            _stream_head(h, hf, w, bias, zero, zb, sqb, zrow, start, stop, prefetch_rows, step)
        bl, nf = _finish_block(zb, sqb, y, extra, out, start, stop, work, zrow, erow)
        bad_labels += bl
        non_finite += nf
    return bad_labels, non_finite


@njit(fastmath=_FM, nogil=True, error_model="numpy")
def _relative_rows(weight, head_given):
    """(C - 1, d): the rows ``weight[j] - weight[0]`` for j = 1..C-1 of weight (C, d), each
    an IEEE subtraction in weight's dtype (correctly rounded; inf where it overflows, which
    :func:`_head_bad` then flags). (0, d) when ``head_given`` is False."""
    c, d = weight.shape
    m = c - 1 if head_given else 0
    w = np.empty((m, d), dtype=weight.dtype)
    for j in range(m):
        for k in range(d):
            w[j, k] = weight[j + 1, k] - weight[0, k]
    return w


@njit(fastmath=_FM, inline="always", nogil=True, error_model="numpy")
def _head_bad(w, bias):
    """1 if w or bias holds a NaN/inf, else 0.

    Sums ``x * 0.0``: 0 for finite x, NaN otherwise (without the nnan/ninf fastmath
    flags LLVM may not fold it away), so the loop stays vectorized.
    """
    check = 0.0
    for j in range(bias.shape[0]):
        check += np.float64(bias[j]) * 0.0
    for j in range(w.shape[0]):
        for k in range(w.shape[1]):
            check += np.float64(w[j, k]) * 0.0
    return 0 if check == 0.0 else 1


@njit(parallel=True, fastmath=_FM, cache=True, nogil=True, error_model="numpy")
def kernel(h, weight, bias, logits, y, extra, zero, out, prefetch_rows, parts):
    """out[i] = ||softmax(z_i) - onehot(y[i])|| * sqrt(||h[i]||^2 + extra), in parallel.

    h (N, d) C-contiguous; out (N,) of its dtype (that of the scalar ``zero``); y (N,)
    int64. Either the logits z (N, C) are given (``logits``; then weight, bias are
    ignored) or ``logits`` has no columns and the head is given as ``weight`` (C, d)
    and ``bias`` (C,), all of h's dtype; the logits are then taken relative to class 0
    (see :func:`_relative_rows` and :func:`_row_logits`).
    ``parts`` runs of rows, equal to within one row, go to the threads (equal runs of
    blocks would split a short input unevenly). Returns (labels outside 0..C-1,
    non-finite norms, 1 if the weight or bias holds a NaN/inf, or two weight rows
    differ by more than the dtype holds, else 0).
    """
    n = h.shape[0]
    nblocks = (n + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
    w = _relative_rows(weight, logits.shape[1] == 0)
    bad_head = _head_bad(w, bias) if logits.shape[1] == 0 else 0
    parts = max(1, min(parts, nblocks))
    bad_labels = 0
    non_finite = 0
    for p in prange(parts):
        bl, nf = _blocks(h, w, bias, logits, y, extra, zero, out, prefetch_rows,
                         p * n // parts, (p + 1) * n // parts)
        bad_labels += bl
        non_finite += nf
    return bad_labels, non_finite, bad_head


@njit(fastmath=_FM, cache=True, nogil=True, error_model="numpy")
def kernel_serial(h, weight, bias, logits, y, extra, zero, out, prefetch_rows, parts):
    """:func:`kernel` on one thread (for forked children; ``parts`` is ignored)."""
    n = h.shape[0]
    w = _relative_rows(weight, logits.shape[1] == 0)
    bad_head = _head_bad(w, bias) if logits.shape[1] == 0 else 0
    bl, nf = _blocks(h, w, bias, logits, y, extra, zero, out, prefetch_rows, 0, n)
    return bl, nf, bad_head
