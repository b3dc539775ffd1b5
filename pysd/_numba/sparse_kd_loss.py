"""numba fallback of the sparse-teacher distillation loss (fused phase, float64 scalar math).

A line-by-line port of ``csrc/include/pysd/sparse_kd_loss.h`` (teacher_row, the row
statistics, finalize, apply) for whole rows: see that header for the formulas.  The
exponentials are recomputed in the gradient sweep instead of being kept in scratch.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .. import cpu_cache
from .._codes import Divergence, Tail, TeacherFormat
from . import CACHE, match_torch_threads

FKL, RKL, JSD = int(Divergence.FKL), int(Divergence.RKL), int(Divergence.JSD)
LOGITS, PROBS, LOGPROBS = int(TeacherFormat.LOGITS), int(TeacherFormat.PROBS), int(TeacherFormat.LOGPROBS)
RENORMALIZE, BUCKET, UNIFORM = int(Tail.RENORMALIZE), int(Tail.BUCKET), int(Tail.UNIFORM)
NEG_INF = -math.inf


@numba.njit(cache=CACHE, inline="always")
def _log_add(a, b):
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


@numba.njit(cache=CACHE)
def _teacher_row(ids, vals, fmt, tail, r, vocab, kid, lp):
    """Returns (bad, lpt, nu, mass); fills kid / lp as teacher_row in the header."""
    k = ids.shape[0]
    bad = False
    distinct = 0.0
    for e in range(k):
        idx = ids[e]
        kid[e] = -1
        lp[e] = NEG_INF
        if idx < 0:
            continue
        if idx >= vocab:
            bad = True
            continue
        v = float(vals[e])
        l = (math.log(v) if v > 0 else NEG_INF) if fmt == PROBS else v
        owner = -1
        for e2 in range(e):
            if kid[e2] == idx:
                owner = e2
                break
        if owner >= 0:
            lp[owner] = _log_add(lp[owner], l)
        else:
            kid[e] = idx
            lp[e] = l
            distinct += 1.0
    norm = NEG_INF
    pk = 0.0
    for e in range(k):
        if kid[e] < 0:
            continue
        if fmt != LOGITS:
            pk += math.exp(lp[e])
        a = r * lp[e]
        lp[e] = a
        norm = _log_add(norm, a)
    m = 1.0 - pk if pk < 1.0 else 0.0
    atom = NEG_INF
    nu = 0.0
    if tail == BUCKET:
        atom = r * math.log(m) if m > 0 and distinct < vocab else NEG_INF
        norm = _log_add(norm, atom)
    elif tail == UNIFORM:
        nu = vocab - distinct
        if nu > 0 and m > 0:
            atom = r * math.log(m / nu)
            norm = _log_add(norm, math.log(nu) + atom)
    if norm == NEG_INF:
        for e in range(k):
            lp[e] = NEG_INF
        return bad, NEG_INF, nu, 0.0
    for e in range(k):
        if kid[e] >= 0:
            lp[e] -= norm
    return bad, atom - norm, nu, 1.0


@numba.njit(cache=CACHE, inline="always")
def _jsd(beta, q, lq, p, lp):
    """(f, d) of one atom of the generalized JSD."""
    a = math.log(beta) + lp
    b = math.log(1.0 - beta) + lq
    hi, lo = max(a, b), min(a, b)
    lm = hi if hi == NEG_INF else hi + math.log1p(math.exp(lo - hi))
    f = lq - lm
    d = (beta * p * (lp - lm) if p > 0 else 0.0) + ((1.0 - beta) * q * f if q > 0 else 0.0)
    return f, d


@numba.njit(cache=CACHE, parallel=True)
def _sparse_rows(s, ids, vals, target, weight, grad_scale, grad, loss, has_target, compute_grad, fmt, tail, r, div,
                 beta, temperature, soft_coef, hw, eps, ignore_index):
    n, vocab = s.shape
    k = ids.shape[1]
    inv_t = 1.0 / temperature
    has_hard = has_target and hw != 0.0
    sep = has_hard and temperature != 1.0
    for i in numba.prange(n):
        si = s[i]
        y = target[i] if has_target else -1
        if has_target and y == ignore_index:
            loss[i] = 0.0
            if compute_grad:
                grad[i, :] = 0.0
            continue
        kid = np.empty(k, np.int64)
        lp = np.empty(k)
        delta = np.zeros(k)
        bad, lpt, nu, mass = _teacher_row(ids[i], vals[i], fmt, tail, r, vocab, kid, lp)
        bad = bad or (has_hard and (y < 0 or y >= vocab))
        if bad:
            loss[i] = np.nan
            if compute_grad:
                grad[i, :] = np.nan
            continue
        # row statistics
        ms = NEG_INF
        for j in range(vocab):
            ms = max(ms, float(si[j]))
        sz = 0.0
        s1 = 0.0
        wsum = 0.0
        ssum = 0.0
        for j in range(vocab):
            zc = (si[j] - ms) * inv_t
            e = math.exp(zc)
            sz += e
            wsum += e * zc if e > 0 else 0.0
            ssum += si[j]
            if sep:
                s1 += math.exp(si[j] - ms)
        log_sz = math.log(sz)
        uniform = tail == UNIFORM and nu > 0
        jd = 0.0
        jq = 0.0
        pt = math.exp(lpt)
        if soft_coef != 0.0 and div == JSD and uniform:
            for j in range(vocab):
                lq = (si[j] - ms) * inv_t - log_sz
                q = math.exp(lq)
                f, d = _jsd(beta, q, lq, pt, lpt)
                jd += d
                jq += q * f if q > 0 else 0.0
        g = grad_scale * (weight[i] if weight.shape[0] > 0 else 1.0)
        w = weight[i] if weight.shape[0] > 0 else 1.0
        total = 0.0
        cz = 0.0
        c1 = 0.0
        cw = 0.0
        cc = 0.0
        cy = 0.0
        cj = 0.0
        qf = 0.0
        if has_hard:
            log_s1 = math.log(s1) if sep else log_sz
            nll = log_s1 - (si[y] - ms)
            smooth = log_s1 - (ssum / vocab - ms) if eps != 0.0 else 0.0
            total += hw * ((1.0 - eps) * nll + eps * smooth)
            if sep:
                c1 = g * hw / s1
            else:
                cz = g * hw / sz
            cc = -g * hw * eps / vocab
            cy = -g * hw * (1.0 - eps)
        if soft_coef != 0.0 and mass > 0:
            gsc = g * soft_coef * inv_t
            qk = 0.0
            sum_lq = 0.0
            sum_qlq = 0.0
            for e in range(k):
                if kid[e] < 0:
                    continue
                lq = (si[kid[e]] - ms) * inv_t - log_sz
                q = math.exp(lq)
                qk += q
                sum_lq += lq
                sum_qlq += q * lq if q > 0 else 0.0
            qt = 1.0 - qk if qk < 1.0 else 0.0
            lqt = math.log(qt) if qt > 0 else NEG_INF
            D = 0.0
            aq = 0.0
            aw = 0.0
            b = 0.0
            fj = 0.0
            if div == FKL:
                for e in range(k):
                    p = math.exp(lp[e])
                    if kid[e] >= 0 and p > 0:
                        D += p * (lp[e] - ((si[kid[e]] - ms) * inv_t - log_sz))
                aq = 1.0
                if tail == BUCKET and pt > 0:
                    D += pt * (lpt - lqt)
                    aq = 1.0 - pt / qt
                elif uniform and pt > 0:
                    all_lq = (ssum - vocab * ms) * inv_t - vocab * log_sz
                    D += nu * pt * lpt - pt * (all_lq - sum_lq)
                    b = -pt
            elif div == RKL:
                for e in range(k):
                    if kid[e] < 0:
                        continue
                    lq = (si[kid[e]] - ms) * inv_t - log_sz
                    q = math.exp(lq)
                    D += q * (lq - lp[e]) if q > 0 else 0.0
                if tail == BUCKET:
                    D += qt * (lqt - lpt) if qt > 0 else 0.0
                    aq = lqt - lpt - D if qt > 0 else 0.0
                elif uniform:
                    D += (wsum / sz - log_sz - sum_qlq) - (qt * lpt if qt > 0 else 0.0)
                    aq = -log_sz - lpt - D
                    aw = 1.0
            else:
                for e in range(k):
                    if kid[e] < 0:
                        continue
                    lq = (si[kid[e]] - ms) * inv_t - log_sz
                    q = math.exp(lq)
                    f, d = _jsd(beta, q, lq, math.exp(lp[e]), lp[e])
                    D += d
                    qf += q * f if q > 0 else 0.0
                if tail == RENORMALIZE:
                    fj = -math.log(1.0 - beta)
                    D += (1.0 - beta) * qt * fj
                    qf += qt * fj
                elif tail == BUCKET:
                    f, d = _jsd(beta, qt, lqt, pt, lpt)
                    fj = f if qt > 0 else 0.0
                    D += d
                    qf += qt * fj
                elif uniform:
                    dk = 0.0
                    qfk = 0.0
                    for e in range(k):
                        if kid[e] < 0:
                            continue
                        lq = (si[kid[e]] - ms) * inv_t - log_sz
                        q = math.exp(lq)
                        f, d = _jsd(beta, q, lq, pt, lpt)
                        dk += d
                        qfk += q * f if q > 0 else 0.0
                    D += jd - dk
                    qf += jq - qfk
                if not uniform:
                    aq = (1.0 - beta) * (fj - qf)
            for e in range(k):
                if kid[e] < 0:
                    continue
                zc = (si[kid[e]] - ms) * inv_t
                lq = zc - log_sz
                q = math.exp(lq)
                p = math.exp(lp[e])
                if div == FKL:
                    ge = q - p
                    te = aq * q + b
                elif div == RKL:
                    ge = q * (lq - lp[e] - D) if q > 0 else 0.0
                    te = aq * q + aw * q * zc
                else:
                    f, d = _jsd(beta, q, lq, p, lp[e])
                    ge = (1.0 - beta) * q * (f - qf) if q > 0 else 0.0
                    if uniform:
                        ft, d = _jsd(beta, q, lq, pt, lpt)
                        te = (1.0 - beta) * q * (ft - qf) if q > 0 else 0.0
                    else:
                        te = aq * q
                delta[e] = gsc * (ge - te)
            cz += gsc * aq / sz
            cw = gsc * aw / sz
            cc += gsc * b
            if div == JSD and uniform:
                cj = gsc * (1.0 - beta) / sz
            total += soft_coef * D
        loss[i] = total * w
        if not compute_grad:
            continue
        gi = grad[i]
        for j in range(vocab):
            zc = (si[j] - ms) * inv_t
            ez = math.exp(zc)
            v = cz * ez + cc
            if sep:
                v += c1 * math.exp(si[j] - ms)
            if cw != 0.0 and ez > 0:
                v += cw * ez * zc
            if cj != 0.0 and ez > 0:
                f, d = _jsd(beta, ez / sz, zc - log_sz, pt, lpt)
                v += cj * ez * (f - qf)
            gi[j] = v
        for e in range(k):
            if kid[e] >= 0:
                gi[kid[e]] += delta[e]
        if has_hard:
            gi[y] += cy


def backend(student, indices, values, target, weight, grad_scale, *, compute_grad: bool, format: int, tail: int,
            retemper: float, divergence: int, beta: float, temperature: float, soft_coef: float,
            hard_weight: float, label_smoothing: float, ignore_index: int):
    """Backend adapter; bf16/fp16 logits are upcast to float32 (a copy) and the gradient cast back."""
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    s = student.detach().to(acc)
    n, v = s.shape
    rows = torch.empty(n, dtype=acc)
    grad = cpu_cache.empty((n, v), acc) if compute_grad else torch.empty((0, v), dtype=acc)
    y = torch.empty(0, dtype=torch.int64) if target is None else target
    w = torch.empty(0, dtype=acc) if weight is None else weight.to(acc)
    if n > 0:
        match_torch_threads()
        _sparse_rows(s.numpy(), indices.numpy(), values.to(acc).numpy(), y.numpy(), w.numpy(), float(grad_scale),
                     grad.numpy(), rows.numpy(), target is not None, compute_grad, format, tail, retemper, divergence,
                     beta, temperature, soft_coef, hard_weight, label_smoothing, ignore_index)
    return rows, (grad.to(student.dtype) if compute_grad else None)
