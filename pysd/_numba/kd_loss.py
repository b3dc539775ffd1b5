"""numba fallback of the fused distillation loss (float32 / float64).

Same passes as ``csrc/cpu/kd_loss.cpp``: row max, exponentials into a per-thread
scratch row, (rkl/jsd) the divergence, then the gradient.  The per-element exponentials use
:func:`pysd._numba.fastexp.exp`, which vectorizes for float32 (libm's scalar ``exp`` made
this kernel exp-bound).  Scalars are kept in the
input's precision (typed constants are passed in) and every inner loop is
branch-free, so LLVM can vectorize all but the ``exp``/``log`` calls.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .. import cpu_cache
from .._codes import Divergence, TeacherFormat, acc_dtype
from . import CACHE, match_torch_threads
from .fastexp import exp

# plain ints: numba folds them into the kernel as constants
FKL, RKL, JSD = int(Divergence.FKL), int(Divergence.RKL), int(Divergence.JSD)
NO_TEACHER, LOGITS = int(TeacherFormat.NONE), int(TeacherFormat.LOGITS)
PROBS, LOGPROBS = int(TeacherFormat.PROBS), int(TeacherFormat.LOGPROBS)
_FAST = {"nsz", "arcp", "contract", "reassoc"}  # no "nnan"/"ninf": inf and NaN keep IEEE meaning


@numba.njit(cache=CACHE, fastmath=_FAST, inline="always")
def _row_max(x, c):
    m = x[0]
    for j in range(1, c):
        m = max(m, x[j])
    return m


@numba.njit(cache=CACHE, fastmath=_FAST, inline="always")
def _row_max2(x, y, c):
    """Both row maxima in one walk over the two rows."""
    mx = x[0]
    my = y[0]
    for j in range(1, c):
        mx = max(mx, x[j])
        my = max(my, y[j])
    return mx, my


@numba.njit(cache=CACHE, fastmath=_FAST, inline="always")
def _int_pow(x, n, one):
    """``x ** n`` for 1 <= n <= 16 by branch-free binary powering, as csrc/include/pysd/kd_loss.h
    (``**`` with an integer exponent is a scalar call per element that LLVM does not vectorize)."""
    x2 = x * x
    x4 = x2 * x2
    x8 = x4 * x4
    return ((x if n & 1 else one) * (x2 if n & 2 else one) * (x4 if n & 4 else one) * (x8 if n & 8 else one)
            * (x8 * x8 if n & 16 else one))


# One kernel body of ~140 lines, over the ~60-line rule on purpose: it is the fused per-row loss and
# gradient pass (the numba twin of csrc/cpu/kd_loss.cpp), whose passes share a dozen row statistics
# that helpers would have to pass in and out.
@numba.njit(cache=CACHE, parallel=True, fastmath=_FAST)
def _kd_rows(s, t, target, weight, grad_scale, grad, loss, tf, div, beta, inv_t, soft_coef, hard_weight,
             smoothing, ignore_index, has_target, compute_grad, scratch, zero, one, npow, floor):
    n, c = s.shape
    t_logits = tf == LOGITS or tf == LOGPROBS
    has_soft = tf != NO_TEACHER and soft_coef != zero
    has_hard = has_target and hard_weight != zero
    sep = has_hard and inv_t != one
    for i in numba.prange(n):
        buf = scratch[numba.get_thread_id()]
        bz, bu, b1, bf = buf[0], buf[1], buf[2], buf[3]
        si = s[i]
        ti = t[i]
        y = target[i] if has_target else -1
        w = weight[i] if weight.shape[0] > 0 else one
        if has_target and y == ignore_index:
            loss[i] = zero
            if compute_grad:
                grad[i, :] = zero
            continue
        sz = zero
        su = zero
        fkl = zero
        mt = zero
        if t_logits:
            # the two rows in one walk each for the maxima and the exponentials
            ms, mt = _row_max2(si, ti, c)
            for j in range(c):
                zs = (si[j] - ms) * inv_t
                ez = exp(zs)
                bz[j] = ez
                sz += ez
                us = (ti[j] - mt) * inv_t
                eu = exp(us)
                bu[j] = eu
                su += eu
                fkl += eu * (us - zs) if eu > zero else zero
        else:
            ms = _row_max(si, c)
            for j in range(c):
                ez = exp((si[j] - ms) * inv_t)
                bz[j] = ez
                sz += ez
        if tf == PROBS:
            for j in range(c):
                p = ti[j]
                bu[j] = p
                su += p
                fkl += p * (math.log(p) - (si[j] - ms) * inv_t) if p > zero else zero
        s1 = zero
        ssum = zero
        if sep and npow > 0:
            # integer T: exp(s - m) = exp((s - m) / T)^T, as csrc/include/pysd/kd_loss.h
            for j in range(c):
                e1 = _int_pow(bz[j] if bz[j] > floor else zero, npow, one)
                b1[j] = e1
                s1 += e1
        elif sep:
            for j in range(c):
                e1 = exp(si[j] - ms)
                b1[j] = e1
                s1 += e1
        if has_hard and smoothing != zero:
            for j in range(c):
                ssum += si[j] - ms
        bad = has_hard and (y < 0 or y >= c)
        g = grad_scale * w
        log_sz = math.log(sz)
        total = zero
        cz = zero
        c1 = zero
        cp = zero
        cc = zero
        cy = zero
        cq = zero
        qf = zero
        if has_hard and not bad:
            log_s1 = math.log(s1) if sep else log_sz
            nll = log_s1 - (si[y] - ms)
            smooth = log_s1 - ssum / c
            total += hard_weight * ((one - smoothing) * nll + smoothing * smooth)
            if sep:
                c1 = g * hard_weight / s1
            else:
                cz = g * hard_weight / sz
            cc = -g * hard_weight * smoothing / c
            cy = -g * hard_weight * (one - smoothing)
        if has_soft:
            gs = g * soft_coef * inv_t
            log_su = math.log(su) if t_logits else zero
            if div == FKL:
                if t_logits:
                    total += soft_coef * (fkl / su - log_su + log_sz)
                    cp = -gs / su
                    cz += gs / sz
                else:
                    total += soft_coef * (fkl + su * log_sz)
                    cp = -gs
                    cz += gs * su / sz
            else:
                cq = gs * ((one - beta) if div == JSD else one) / sz
                inv_su = one if tf == PROBS else one / su
                log_b = math.log(beta) if div == JSD else zero
                log_1b = math.log(one - beta) if div == JSD else zero
                dsum = zero
                for j in range(c):
                    q = bz[j] / sz
                    p = bu[j] * inv_su
                    lq = (si[j] - ms) * inv_t - log_sz
                    lp = math.log(p) if tf == PROBS else (ti[j] - mt) * inv_t - log_su
                    if div == RKL:
                        f = lq - lp
                        d = q * f if q > zero else zero
                    else:
                        # log m in log space, as csrc/include/pysd/kd_loss.h
                        a = log_b + lp
                        b = log_1b + lq
                        hi = max(a, b)
                        lm = hi + math.log(one + math.exp(min(a, b) - hi))
                        f = lq - lm
                        d = (beta * p * (lp - lm) if p > zero else zero) + ((one - beta) * q * f if q > zero else zero)
                    bf[j] = f
                    dsum += d
                    qf += q * f if q > zero else zero
                total += soft_coef * dsum
        loss[i] = np.nan if bad else total * w
        if compute_grad:
            gi = grad[i]
            if bad:
                gi[:] = np.nan
                continue
            # one write of the row for the common cases (the scratch rows are L1/L2-resident)
            fkl_grad = has_soft and div == FKL
            if sep and fkl_grad:
                for j in range(c):
                    gi[j] = cz * bz[j] + cc + c1 * b1[j] + cp * bu[j]
            elif fkl_grad:
                for j in range(c):
                    gi[j] = cz * bz[j] + cc + cp * bu[j]
            else:
                for j in range(c):
                    gi[j] = cz * bz[j] + cc
                if sep:
                    for j in range(c):
                        gi[j] += c1 * b1[j]
                if has_soft:
                    for j in range(c):
                        gi[j] += cq * bz[j] * (bf[j] - qf) if bz[j] > zero else zero
            if has_hard:
                gi[y] += cy


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def backend(student, teacher, target, weight, grad_scale, *, compute_grad: bool, teacher_format: int,
                    divergence: int, beta: float, temperature: float, soft_coef: float, hard_weight: float,
                    label_smoothing: float, ignore_index: int):
    """Backend adapter; bf16/fp16 inputs are upcast to float32 (a copy) and the gradient cast back."""
    acc = acc_dtype(student.dtype)
    s = student.to(acc)
    n, c = s.shape
    t = s[:1] if teacher is None else teacher.to(acc)
    y = torch.empty(0, dtype=torch.int64) if target is None else target
    w = torch.empty(0, dtype=acc) if weight is None else weight.to(acc)
    rows = torch.empty(n, dtype=acc)
    grad = cpu_cache.empty((n, c), acc) if compute_grad else torch.empty((0, c), dtype=acc)
    typ = np.float64 if acc == torch.float64 else np.float32
    scratch = np.empty((match_torch_threads(), 4, c), dtype=typ)
    integer_t = float(temperature).is_integer() and 2 <= temperature <= 16
    npow = int(temperature) if integer_t else 0
    min_exp = -1022.0 if typ is np.float64 else -126.0
    floor = typ(math.exp(math.log(2.0) * min_exp / npow)) if npow else typ(0.0)
    if n > 0:
        _kd_rows(_np(s), _np(t), _np(y), _np(w), typ(grad_scale), _np(grad), _np(rows),
                 int(teacher_format) if teacher is not None else NO_TEACHER, int(divergence), typ(beta),
                 typ(1.0 / temperature),
                 typ(soft_coef), typ(hard_weight), typ(label_smoothing), ignore_index, target is not None,
                 compute_grad, scratch, typ(0.0), typ(1.0), npow, floor)
    return rows, (grad.to(student.dtype) if compute_grad else None)
