"""numba fallback of the partial-label refinement (the passes of ``csrc/include/pysd/partial_labels.h``)."""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._codes import acc_dtype
from . import CACHE, match_torch_threads


@numba.njit(cache=CACHE, inline="always")
def _before(va, ia, vb, ib):
    return va > vb or (va == vb and ia < ib)


LIST_MAX = 16  # k up to this (from the top): one pass with a sorted list, as csrc/cpu/partial_labels.cpp
CHUNK = 64     # candidates per vector threshold test


@numba.njit(cache=CACHE, inline="always")
def _rank_key(row, c, k, val, idx):
    """The key of rank k-1 in one pass: the best k so far sorted in ranking order (candidates come in
    index order, so only ``v > last`` enters); a full list tests each chunk with one vector loop first."""
    size = 0
    for c0 in range(0, c, CHUNK):
        c1 = min(c, c0 + CHUNK)
        if size == k:
            thr = val[k - 1]
            hits = 0
            for j in range(c0, c1):
                hits += row[j] > thr
            if hits == 0:
                continue
        for j in range(c0, c1):
            v = row[j]
            if size == k and not v > val[k - 1]:
                continue
            q = size if size < k else k - 1
            size = min(size + 1, k)
            while q > 0 and v > val[q - 1]:
                val[q] = val[q - 1]
                idx[q] = idx[q - 1]
                q -= 1
            val[q] = v
            idx[q] = j
    return val[k - 1], idx[k - 1]


@numba.njit(cache=CACHE, parallel=True)
def _rows(p, out, k, renormalize, lists, list_idx):
    n, c = p.shape
    top = k <= c - k
    passes = k if top else c - k
    # short rows keep the k passes: a row's list views cost more than k walks over a few entries
    one_pass = top and k <= LIST_MAX and c > CHUNK
    for i in numba.prange(n):
        lv = p.dtype.type(0)
        li = -1
        if one_pass:
            t = numba.get_thread_id()
            lv, li = _rank_key(p[i], c, k, lists[t], list_idx[t])
            passes_here = 0
        else:
            passes_here = passes
        for _ in range(passes_here):
            bv = p.dtype.type(0)
            bi = -1
            for j in range(c):
                v = p[i, j]
                if top:
                    ok = (li < 0 or _before(lv, li, v, j)) and (bi < 0 or _before(v, j, bv, bi))
                else:
                    ok = (li < 0 or _before(v, j, lv, li)) and (bi < 0 or _before(bv, bi, v, j))
                if ok:
                    bv = v
                    bi = j
            lv = bv
            li = bi
        mass = 0.0
        if renormalize:
            for j in range(c):
                v = p[i, j]
                sel = (not _before(lv, li, v, j)) if top else (li < 0 or _before(v, j, lv, li))
                if sel:
                    mass += v
        for j in range(c):
            v = p[i, j]
            sel = (not _before(lv, li, v, j)) if top else (li < 0 or _before(v, j, lv, li))
            if not sel:
                out[i, j] = 0.0
            elif renormalize and mass > 0.0:
                out[i, j] = v / mass
            else:
                out[i, j] = 1.0 / k


def backend(probs: torch.Tensor, *, k: int, renormalize: bool) -> torch.Tensor:
    """Backend adapter; bf16/fp16 rows are upcast to float32 (a copy) and the result cast back."""
    acc = acc_dtype(probs.dtype)
    p = probs.to(acc).contiguous()
    out = torch.empty_like(p)
    if p.numel():
        threads = match_torch_threads()
        lists = np.empty((threads, min(k, LIST_MAX)), dtype=p.numpy().dtype)
        _rows(p.numpy(), out.numpy(), k, renormalize, lists, np.empty(lists.shape, dtype=np.int64))
    return out.to(probs.dtype)
