"""numba fallback of the offline teacher pass: per row one sweep with an online
log-sum-exp and a streaming top-k heap (ties by lower index), as ``csrc/include/pysd/topk_teacher.h``."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._codes import TeacherFormat
from . import CACHE, match_torch_threads

LOGITS, PROBS = int(TeacherFormat.LOGITS), int(TeacherFormat.PROBS)


@numba.njit(cache=CACHE, inline="always")
def _worse(va, ia, vb, ib):
    return va < vb or (va == vb and ia > ib)


@numba.njit(cache=CACHE)
def _sift_down(hv, hi, k, r):
    while True:
        w = r
        left = 2 * r + 1
        right = left + 1
        if left < k and _worse(hv[left], hi[left], hv[w], hi[w]):
            w = left
        if right < k and _worse(hv[right], hi[right], hv[w], hi[w]):
            w = right
        if w == r:
            return
        hv[r], hv[w] = hv[w], hv[r]
        hi[r], hi[w] = hi[w], hi[r]
        r = w


@numba.njit(cache=CACHE, parallel=True)
def _topk_rows(x, k, inv_t, fmt, ids, vals):
    n, v = x.shape
    for i in numba.prange(n):
        xi = x[i]
        hv = np.empty(k)
        hi = np.empty(k, np.int64)
        for j in range(k):
            hv[j] = xi[j]
            hi[j] = j
        for r in range(k // 2 - 1, -1, -1):
            _sift_down(hv, hi, k, r)
        m = -math.inf
        total = 0.0
        for j in range(v):
            xv = float(xi[j])
            if j >= k and xv > hv[0]:
                hv[0] = xv
                hi[0] = j
                _sift_down(hv, hi, k, 0)
            if xv > m:
                total = total * math.exp((m - xv) * inv_t) if m != -math.inf else 0.0
                m = xv
            if m != -math.inf:
                total += math.exp((xv - m) * inv_t)
        for cnt in range(k, 1, -1):
            hv[0], hv[cnt - 1] = hv[cnt - 1], hv[0]
            hi[0], hi[cnt - 1] = hi[cnt - 1], hi[0]
            _sift_down(hv, hi, cnt - 1, 0)
        log_sum = math.log(total)
        for j in range(k):
            ids[i, j] = hi[j]
            z = (hv[j] - m) * inv_t - log_sum
            vals[i, j] = hv[j] * inv_t if fmt == LOGITS else (math.exp(z) if fmt == PROBS else z)


def backend(logits: torch.Tensor, k: int, temperature: float, format: int):
    """Backend adapter; bf16/fp16 logits are upcast to float32 (a copy)."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.detach().to(acc)
    n = x.shape[0]
    ids = torch.empty(n, k, dtype=torch.int64)
    vals = torch.empty(n, k, dtype=acc)
    if n > 0:
        match_torch_threads()
        _topk_rows(x.numpy(), k, 1.0 / temperature, format, ids.numpy(), vals.numpy())
    return ids, vals
