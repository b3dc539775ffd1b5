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


@numba.njit(cache=CACHE, parallel=True)
def _rows(p, out, k, renormalize):
    n, c = p.shape
    top = k <= c - k
    passes = k if top else c - k
    for i in numba.prange(n):
        lv = p.dtype.type(0)
        li = -1
        for _ in range(passes):
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
        match_torch_threads()
        _rows(p.numpy(), out.numpy(), k, renormalize)
    return out.to(probs.dtype)
