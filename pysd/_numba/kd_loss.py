"""numba fallback of the fused distillation loss (float32 / float64).

Same passes as ``csrc/cpu/kd_loss.cpp``: row max, exponentials into a
per-thread scratch row, (rkl/jsd) the divergence, then the gradient.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from . import CACHE

FKL, RKL, JSD = 0, 1, 2
NO_TEACHER, LOGITS, PROBS, LOGPROBS = -1, 0, 1, 2


@numba.njit(cache=CACHE, parallel=True, fastmath={"nsz", "arcp", "contract", "reassoc"})
def _kd_rows(s, t, target, weight, grad_scale, grad, loss, tf, div, beta, temperature, soft_coef,
             hard_weight, smoothing, ignore_index, has_target, compute_grad, scratch):
    n, c = s.shape
    one = 1.0
    zero = 0.0
    inv_t = one / temperature
    has_teacher = tf != NO_TEACHER
    t_logits = tf == LOGITS or tf == LOGPROBS
    has_soft = has_teacher and soft_coef != 0.0
    has_hard = has_target and hard_weight != 0.0
    sep = has_hard and temperature != 1.0
    for i in numba.prange(n):
        buf = scratch[numba.get_thread_id()]
        bz, bu, b1, bf = buf[0], buf[1], buf[2], buf[3]
        y = target[i] if has_target else -1
        w = weight[i] if weight.shape[0] > 0 else one
        if has_target and y == ignore_index:
            loss[i] = zero
            if compute_grad:
                grad[i, :] = zero
            continue
        ms = -np.inf
        mt = -np.inf
        for j in range(c):
            ms = max(ms, s[i, j])
        if t_logits:
            for j in range(c):
                mt = max(mt, t[i, j])
        sz = zero
        su = zero
        s1 = zero
        fkl = zero
        ssum = zero
        for j in range(c):
            zs = (s[i, j] - ms) * inv_t
            ez = math.exp(zs)
            bz[j] = ez
            sz += ez
            ssum += s[i, j] - ms
            if t_logits:
                us = (t[i, j] - mt) * inv_t
                eu = math.exp(us)
                bu[j] = eu
                su += eu
                if eu > 0:
                    fkl += eu * (us - zs)
            elif tf == PROBS:
                p = t[i, j]
                bu[j] = p
                su += p
                if p > 0:
                    fkl += p * (math.log(p) - zs)
            if sep:
                e1 = math.exp(s[i, j] - ms)
                b1[j] = e1
                s1 += e1
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
        if has_hard and not bad:
            log_s1 = math.log(s1) if sep else log_sz
            nll = log_s1 - (s[i, y] - ms)
            smooth = log_s1 - ssum / c
            total += hard_weight * ((one - smoothing) * nll + smoothing * smooth)
            if sep:
                c1 = g * hard_weight / s1
            else:
                cz = g * hard_weight / sz
            cc = -g * hard_weight * smoothing / c
            cy = -g * hard_weight * (one - smoothing)
        log_su = zero
        qf = zero
        if has_soft:
            gs = g * soft_coef * inv_t
            if t_logits:
                log_su = math.log(su)
            if div == FKL:
                if t_logits:
                    kl = fkl / su - log_su + log_sz
                    cp = -gs / su
                    cz += gs / sz
                else:
                    kl = fkl + su * log_sz
                    cp = -gs
                    cz += gs * su / sz
                total += soft_coef * kl
            else:
                cq = gs * ((one - beta) if div == JSD else one) / sz
                inv_su = one if tf == PROBS else one / su
                dsum = zero
                for j in range(c):
                    q = bz[j] / sz
                    p = bu[j] * inv_su
                    lq = (s[i, j] - ms) * inv_t - log_sz
                    lp = math.log(p) if tf == PROBS else (t[i, j] - mt) * inv_t - log_su
                    if div == RKL:
                        f = lq - lp
                        d = q * f if q > 0 else zero
                    else:
                        a = math.log(beta) + lp
                        b = math.log(one - beta) + lq
                        hi = max(a, b)
                        lm = hi + math.log(one + math.exp(min(a, b) - hi))
                        f = lq - lm
                        d = zero
                        if p > 0:
                            d += beta * p * (lp - lm)
                        if q > 0:
                            d += (one - beta) * q * f
                    bf[j] = f
                    dsum += d
                    if q > 0:
                        qf += q * f
                total += soft_coef * dsum
        loss[i] = np.nan if bad else total * w
        if compute_grad:
            for j in range(c):
                v = cz * bz[j] + cc
                if sep:
                    v += c1 * b1[j]
                if has_soft:
                    if div == FKL:
                        v += cp * bu[j]
                    elif bz[j] > 0:
                        v += cq * bz[j] * (bf[j] - qf)
                grad[i, j] = np.nan if bad else v
            if not bad and has_hard:
                grad[i, y] += cy


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def kd_loss_backend(student, teacher, target, weight, grad_scale, *, compute_grad: bool, teacher_format: int,
                    divergence: int, beta: float, temperature: float, soft_coef: float, hard_weight: float,
                    label_smoothing: float, ignore_index: int):
    """Backend adapter; bf16/fp16 inputs are upcast to float32 (a copy) and the gradient cast back."""
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    s = student.to(acc)
    n, c = s.shape
    t = s[:0] if teacher is None else teacher.to(acc)
    y = torch.empty(0, dtype=torch.int64) if target is None else target
    w = torch.empty(0, dtype=acc) if weight is None else weight.to(acc)
    rows = torch.empty(n, dtype=acc)
    grad = torch.empty((n, c), dtype=acc) if compute_grad else torch.empty((0, c), dtype=acc)
    threads = numba.get_num_threads()
    scratch = np.empty((threads, 4, max(c, 1)), dtype=_np(s).dtype)
    if n > 0:
        _kd_rows(_np(s), _np(t), _np(y), _np(w), float(grad_scale), _np(grad), _np(rows),
                 teacher_format if teacher is not None else NO_TEACHER, divergence, beta, temperature, soft_coef,
                 hard_weight, label_smoothing, ignore_index, target is not None, compute_grad, scratch)
    return rows, (grad.to(student.dtype) if compute_grad else None)
