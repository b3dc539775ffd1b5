"""numba fallback of label propagation (float32 / float64).

Same passes and fixed-block reductions as ``csrc/cpu/propagate.cpp``: per
iteration one gather over the graph for all columns, per-column partial sums
per block of rows, added in block order (deterministic for any thread count).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .. import cpu_cache
from .._codes import Solver
from . import CACHE, match_torch_threads

BLOCK = 64
_JIT = dict(cache=CACHE, parallel=True, fastmath={"nsz", "arcp", "contract"})
_SERIAL = dict(cache=CACHE, fastmath={"nsz", "arcp", "contract"})


@numba.njit(**_SERIAL)
def _gather(indptr, indices, values, z, i, acc, clip):
    acc[:] = 0
    for e in range(indptr[i], indptr[i + 1]):
        s = values[e]
        j = indices[e]
        for c in range(acc.shape[0]):
            v = z[j, c]
            acc[c] += s * (max(v, 0) if clip else v)


@numba.njit(**_SERIAL)
def _argmax(row):
    arg = 0
    for c in range(1, row.shape[0]):
        if row[c] > row[arg]:
            arg = c
    return arg


@numba.njit(**_JIT)
def _init(src, dst, zero, part):
    n, cols = src.shape
    for blk in numba.prange(part.shape[0]):
        part[blk, :] = 0
        for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            for c in range(cols):
                v = src[i, c]
                dst[i, c] = v
                zero[i, c] = 0
                part[blk, c] += float(v) * float(v)


@numba.njit(**_JIT)
def _cg(indptr, indices, values, x, r, p, q, residual, alpha, max_iter, tol, part, acc):
    n, cols = r.shape
    blocks = part.shape[0]
    _init(r, p, x, part)
    bb = part.sum(0)
    bnorm = np.sqrt(bb)
    atol = tol * bnorm
    rho = bb.copy()
    active = (bnorm != 0) & ~(bnorm < atol)
    a = np.zeros(cols)
    beta = np.zeros(cols)
    it = 0
    al = x.dtype.type(alpha)
    for step in range(max_iter):
        if not active.any():
            break
        for blk in numba.prange(blocks):
            t = numba.get_thread_id()
            part[blk, :] = 0
            for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                _gather(indptr, indices, values, p, i, acc[t], False)
                for c in range(cols):
                    qv = p[i, c] - al * acc[t, c]
                    q[i, c] = qv
                    part[blk, c] += float(p[i, c]) * float(qv)
        pq = part.sum(0)
        for c in range(cols):
            if active[c] and pq[c] == 0:
                active[c] = False
            a[c] = rho[c] / pq[c] if active[c] else 0.0
        for blk in numba.prange(blocks):
            part[blk, :] = 0
            for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                for c in range(cols):
                    ac = x.dtype.type(a[c])
                    x[i, c] += ac * p[i, c]
                    r[i, c] -= ac * q[i, c]
                    part[blk, c] += float(r[i, c]) * float(r[i, c])
        rr = part.sum(0)
        for c in range(cols):
            if not active[c]:
                beta[c] = 0
                continue
            beta[c] = rr[c] / rho[c]
            rho[c] = rr[c]
            if math.sqrt(rr[c]) < atol[c]:
                active[c] = False
                beta[c] = 0
        it = step + 1
        if not active.any():
            break
        for i in numba.prange(n):
            for c in range(cols):
                p[i, c] = r[i, c] + x.dtype.type(beta[c]) * p[i, c]
    for c in range(cols):
        residual[c] = math.sqrt(rho[c]) / bnorm[c] if bnorm[c] > 0 else 0.0
    return it


@numba.njit(**_JIT)
def _flips(z0, z1):
    n = z0.shape[0]
    count = 0
    for i in numba.prange(n):
        count += _argmax(z0[i]) != _argmax(z1[i])
    return count


@numba.njit(**_JIT)
def _iterate(indptr, indices, values, y, z0, z1, residual, alpha, max_iter, tol, part, acc):
    n, cols = y.shape
    blocks = part.shape[0]
    _init(y, z0, z1, part)
    ynorm = np.sqrt(part.sum(0))
    al = y.dtype.type(alpha)
    it = 0
    for step in range(max_iter):
        zc = z1 if step % 2 else z0
        zn = z0 if step % 2 else z1
        for blk in numba.prange(blocks):
            t = numba.get_thread_id()
            part[blk, :] = 0
            for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                _gather(indptr, indices, values, zc, i, acc[t], False)
                for c in range(cols):
                    v = al * acc[t, c] + y[i, c]
                    d = float(v) - float(zc[i, c])
                    part[blk, c] += d * d
                    zn[i, c] = v
        dnorm = np.sqrt(part.sum(0))
        converged = True
        for c in range(cols):
            residual[c] = dnorm[c] / ynorm[c] if ynorm[c] > 0 else 0.0
            converged &= not (ynorm[c] > 0) or dnorm[c] < tol * ynorm[c]
        it = step + 1
        if converged:
            break
    # the last two iterates are still in z0 / z1
    return it, (_flips(z0, z1) if it > 0 else 0)


@numba.njit(**_JIT)
def _post(indptr, indices, values, z, given, scores, oos, labels, confidence, weight, margin, acc):
    n, cols = z.shape
    one = z.dtype.type(1)
    logc = math.log(cols) if cols > 1 else 1.0
    for i in numba.prange(n):
        t = numba.get_thread_id()
        l1 = 0.0
        zlogz = 0.0
        top = 0.0
        arg = -1
        for c in range(cols):
            v = max(float(z[i, c]), 0.0)
            l1 += v
            if v > 0:
                zlogz += v * math.log(v)
            if v > top:
                top = v
                arg = c
        labels[i] = arg
        if l1 > 0:
            inv = one / z.dtype.type(l1)
            for c in range(cols):
                scores[i, c] = max(z[i, c], 0) * inv
            h = math.log(l1) - zlogz / l1
            gv = max(float(z[i, given[i]]), 0.0) if given[i] >= 0 else 0.0
            confidence[i] = top / l1
            weight[i] = 1 - h / logc if cols > 1 else 1.0
            margin[i] = (top - gv) / l1
        else:
            scores[i, :] = 0
            confidence[i] = 0
            weight[i] = 0
            margin[i] = 0
        _gather(indptr, indices, values, z, i, acc[t], True)
        s = 0.0
        for c in range(cols):
            acc[t, c] = max(acc[t, c], 0)
            s += acc[t, c]
        inv_s = 1.0 / s if s > 0 else 0.0
        for c in range(cols):
            oos[i, c] = acc[t, c] * inv_s


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def backend(indptr, indices, values, seeds, given, *, alpha, solver, max_iter, tol):
    """Backend adapter, same contract as ``pysd._ref.propagate.backend``."""
    n, cols = seeds.shape
    blocks = max(1, -(-n // BLOCK))
    dt = _np(seeds).dtype
    part = np.empty((blocks, cols), dtype=np.float64)
    acc = np.empty((match_torch_threads(), cols), dtype=dt)
    residual = torch.zeros(cols, dtype=torch.float64)
    g = (_np(indptr), _np(indices), _np(values))
    if solver == Solver.CG:
        x, p, q = (cpu_cache.empty_like(seeds) for _ in range(3))
        it = _cg(*g, _np(x), _np(seeds), _np(p), _np(q), _np(residual), alpha, max_iter, tol, part, acc)
        flips, z, scores, oos = -1, x, q, p
    else:
        z0, z1, oos = (cpu_cache.empty_like(seeds) for _ in range(3))
        it, flips = _iterate(*g, _np(seeds), _np(z0), _np(z1), _np(residual), alpha, max_iter, tol, part, acc)
        z, scores = (z1, z0) if it % 2 else (z0, z1)
    labels = torch.empty(n, dtype=torch.int64)
    confidence, weight, margin = (torch.empty(n, dtype=seeds.dtype) for _ in range(3))
    _post(*g, _np(z), _np(given), _np(scores), _np(oos), _np(labels), _np(confidence), _np(weight), _np(margin),
          acc)
    return z, scores, oos, labels, confidence, weight, margin, residual, int(it), int(flips)
