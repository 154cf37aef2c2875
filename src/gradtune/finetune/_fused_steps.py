"""Optional numba kernels for one epoch of :func:`gradtune.finetune_linear` (needs ``numba``).

The torch loop pays a dozen tensor-operation dispatches per optimizer step, which is
most of its time on small heads (a step of 32 rows x 2048 features is ~130k
multiply-adds). These kernels run a whole epoch of steps in compiled code with the
same arithmetic: the closed-form cross-entropy gradient of a linear layer, then the
``torch.optim.SGD`` (momentum, no dampening, coupled weight decay) or
``torch.optim.AdamW`` update, written out element by element. Dot products and
gradient sums may be reassociated (``fastmath={"reassoc", "contract"}``, for SIMD),
so the results agree with the torch loop to rounding, not bitwise.

The kernels run on one thread (the steps are too small to split) and are compiled on
first use per dtype, then cached on disk like :mod:`gradtune.scores._fused`.

Shapes: N samples, D = d + 1 features with the ones column, C classes, B batch size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["available", "epoch_dual", "epoch_primal"]

try:  # numba is optional: ``pip install 'gradtune[fast]'``
    from numba import njit
except Exception:  # not installed, or a broken install
    njit = None


def available() -> bool:
    """Whether the compiled epoch kernels can run here (``numba`` is installed and imports)."""
    return njit is not None


if njit is not None:
    _FM = {"reassoc", "contract"}

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _lr(step, total, base_lr, schedule):
        if total <= 0:
            return base_lr
        if schedule == 1:
            return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
        if schedule == 2:
            return base_lr * (1.0 - step / total)
        return base_lr

    @njit(fastmath=_FM, inline="always", nogil=True)
    def _softmax_grad(z, y_b, w_b, use_w, g):
        """In place: z (C, B) logits -> g (C, B) = (p - e_y) * w. Returns (sum log p_y / B, 1 / scale)."""
        c, nb = z.shape
        log_py = 0.0
        wsum = 0.0
        for i in range(nb):
            m = z[0, i]
            for j in range(1, c):
                m = max(m, z[j, i])
            s = 0.0
            for j in range(c):
                g[j, i] = math.exp(z[j, i] - m)
                s += g[j, i]
            inv = 1.0 / s
            wi = w_b[i] if use_w else 1.0
            wsum += wi
            for j in range(c):
                p = g[j, i] * inv
                if j == y_b[i]:
                    log_py += math.log(p)
                    p -= 1.0
                g[j, i] = p * wi
        return log_py / nb, wsum

    @njit(fastmath=_FM, cache=True, nogil=True)
    def _epoch_primal(theta, buf, sq, ha, y, order, weights, use_w, anchor, use_anchor, bs, step, total,
                      base_lr, schedule, adamw, wd, mom, b1, b2, eps, pull, train_bias, zero):
        c, dd = theta.shape
        n = order.shape[0]
        z = np.empty((c, bs), dtype=theta.dtype)
        g = np.empty((c, bs), dtype=theta.dtype)
        grad = np.empty((c, dd), dtype=theta.dtype)
        y_b = np.empty(bs, dtype=np.int64)
        w_b = np.empty(bs, dtype=theta.dtype)
        coef = np.empty(bs, dtype=theta.dtype)  # typed scratch: keeps the inner loops in the array dtype
        loss = 0.0
        for start in range(0, n, bs):
            nb = min(bs, n - start)
            for i in range(nb):
                r = order[start + i]
                y_b[i] = y[r]
                if use_w:
                    w_b[i] = weights[r]
                row = ha[r]
                for j in range(c):
                    t = theta[j]
                    acc = zero
                    for k in range(dd):
                        acc += t[k] * row[k]
                    z[j, i] = acc
            lp, wsum = _softmax_grad(z[:, :nb], y_b[:nb], w_b[:nb], use_w, g[:, :nb])
            loss -= lp
            scale = 1.0 / wsum
            lr = _lr(step, total, base_lr, schedule)
            decay = 0.0 if adamw else wd
            for j in range(c):
                gj = grad[j]
                tj = theta[j]
                for k in range(dd):
                    gj[k] = decay * tj[k]
                for i in range(nb):
                    coef[i] = g[j, i] * scale
                for i in range(nb):
                    ci = coef[i]
                    row = ha[order[start + i]]
                    for k in range(dd):
                        gj[k] += ci * row[k]
                if not train_bias:
                    gj[dd - 1] = 0.0
                if use_anchor:
                    aj = anchor[j]
                    for k in range(dd):
                        gj[k] += pull * (tj[k] - aj[k])
            if adamw:
                t_ = step + 1
                c1 = lr / (1.0 - b1 ** t_)
                c2 = 1.0 / (1.0 - b2 ** t_)
                for j in range(c):
                    for k in range(dd):
                        gk = grad[j, k]
                        theta[j, k] *= 1.0 - lr * wd
                        buf[j, k] = b1 * buf[j, k] + (1.0 - b1) * gk
                        sq[j, k] = b2 * sq[j, k] + (1.0 - b2) * gk * gk
                        theta[j, k] -= c1 * buf[j, k] / (math.sqrt(sq[j, k] * c2) + eps)
            elif mom != 0.0:
                for j in range(c):
                    for k in range(dd):
                        buf[j, k] = grad[j, k] if step == 0 else mom * buf[j, k] + grad[j, k]
                        theta[j, k] -= lr * buf[j, k]
            else:
                for j in range(c):
                    for k in range(dd):
                        theta[j, k] -= lr * grad[j, k]
            if not train_bias:
                for j in range(c):
                    theta[j, dd - 1] = 0.0
            step += 1
        return step, loss

    @njit(fastmath=_FM, cache=True, nogil=True)
    def _epoch_dual(a_coef, buf_a, alpha, buf_alpha, gram, z0_t, y, order, weights, use_w, bs, step, total,
                    base_lr, schedule, wd, mom, pull, zero):
        c, n_all = a_coef.shape
        n = order.shape[0]
        z = np.empty((c, bs), dtype=a_coef.dtype)
        g = np.empty((c, bs), dtype=a_coef.dtype)
        y_b = np.empty(bs, dtype=np.int64)
        w_b = np.empty(bs, dtype=a_coef.dtype)
        loss = 0.0
        for start in range(0, n, bs):
            nb = min(bs, n - start)
            for i in range(nb):
                r = order[start + i]
                y_b[i] = y[r]
                if use_w:
                    w_b[i] = weights[r]
                grow = gram[r]
                for j in range(c):
                    a = a_coef[j]
                    acc = zero
                    for k in range(n_all):
                        acc += a[k] * grow[k]
                    z[j, i] = acc + alpha * z0_t[j, r]
            lp, wsum = _softmax_grad(z[:, :nb], y_b[:nb], w_b[:nb], use_w, g[:, :nb])
            loss -= lp
            scale = 1.0 / wsum
            lr = _lr(step, total, base_lr, schedule)
            # grad_a = a_coef * (wd + pull), plus the batch's residuals at its rows (repeats add up);
            # it is formed in buf_a's place in one sweep: buf_a = mom * buf_a + grad_a.
            keep = 0.0 if (step == 0 or mom == 0.0) else mom
            for j in range(c):
                for k in range(n_all):
                    buf_a[j, k] = keep * buf_a[j, k] + (wd + pull) * a_coef[j, k]
                for i in range(nb):
                    buf_a[j, order[start + i]] += g[j, i] * scale
                for k in range(n_all):
                    a_coef[j, k] -= lr * buf_a[j, k]
            grad_alpha = wd * alpha + pull * (alpha - 1.0)
            buf_alpha = grad_alpha if (step == 0 or mom == 0.0) else mom * buf_alpha + grad_alpha
            alpha -= lr * buf_alpha
            step += 1
        return step, loss, alpha, buf_alpha


def _opt(a: np.ndarray | None, dtype: np.dtype, ndim: int) -> tuple[np.ndarray, bool]:
    """``a`` and True, or an empty stand-in of the same type and False (numba needs an array)."""
    return (np.empty((0,) * ndim, dtype=dtype), False) if a is None else (a, True)


def epoch_primal(theta: np.ndarray, buf: np.ndarray, sq: np.ndarray, ha: np.ndarray, y: np.ndarray,
                 order: np.ndarray, weights: np.ndarray | None, anchor: np.ndarray | None, bs: int, step: int,
                 total: int, base_lr: float, schedule: int, adamw: bool, wd: float, mom: float, b1: float,
                 b2: float, eps: float, pull: float, train_bias: bool) -> tuple[int, float]:
    """All optimizer steps of one epoch in the feature space; ``theta``, ``buf``, ``sq`` are updated in place.

    theta, buf, sq : (C, D); ha : (N, D) features with the ones column; y : (N,) int64;
    order : (N,) int64 this epoch's sample order; weights : (N,) loss weights or None;
    anchor : (C, D) the pull's target or None. All float arrays share one dtype and
    are C-contiguous. Returns (next step, sum over batches of the mean batch loss).
    """
    w, use_w = _opt(weights, theta.dtype, 1)
    a, use_a = _opt(anchor, theta.dtype, 2)
    step, loss = _epoch_primal(theta, buf, sq, ha, y, order, w, use_w, a, use_a, bs, step, total, base_lr,
                               schedule, adamw, wd, mom, b1, b2, eps, pull, train_bias, theta.dtype.type(0))
    return int(step), float(loss)


def epoch_dual(a_coef: np.ndarray, buf_a: np.ndarray, alpha: float, buf_alpha: float, gram: np.ndarray,
               z0_t: np.ndarray, y: np.ndarray, order: np.ndarray, weights: np.ndarray | None, bs: int, step: int,
               total: int, base_lr: float, schedule: int, wd: float, mom: float,
               pull: float) -> tuple[int, float, float, float]:
    """All SGD steps of one epoch in the sample space (see ``linear._epoch_steps_dual``).

    a_coef, buf_a : (C, N); gram : (N, N); z0_t : (C, N); y, order : (N,) int64;
    weights : (N,) or None. Returns (next step, loss sum, alpha, buf_alpha).
    """
    w, use_w = _opt(weights, a_coef.dtype, 1)
    out: Any = _epoch_dual(a_coef, buf_a, float(alpha), float(buf_alpha), gram, z0_t, y, order, w, use_w, bs,
                           step, total, base_lr, schedule, wd, mom, pull, a_coef.dtype.type(0))
    return int(out[0]), float(out[1]), float(out[2]), float(out[3])
