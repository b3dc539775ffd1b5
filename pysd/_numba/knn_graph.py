"""numba fallback of the streaming top-k merge (float32 / float64).

Same contract as ``csrc/cpu/knn_graph.cpp``: one call merges one tile of
``X X^T`` into the running lists, a row pass over rows ``i0..i1`` and, for
columns ``j >= col_from``, a column pass with the transposed tile.
"""

from __future__ import annotations

import numba
import numpy as np

from .._ref.knn_graph import tiled_topk
from . import CACHE, match_torch_threads


@numba.njit(cache=CACHE, inline="always")
def _insert(sims, idx, s, j):
    k = sims.shape[0]
    if not (s > sims[k - 1] or (s == sims[k - 1] and j < idx[k - 1])):
        return
    p = k - 1
    while p > 0 and (s > sims[p - 1] or (s == sims[p - 1] and j < idx[p - 1])):
        sims[p] = sims[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    sims[p] = s
    idx[p] = j


@numba.njit(cache=CACHE, parallel=True)
def _merge(dots, i0, j0, col_from, sqnorm, l2, exclude_self, sims, idx, block, two, zero):
    # `two` and `zero` carry the tile's dtype so float32 tiles are not promoted to float64.
    rows, ncols = dots.shape
    k = sims.shape[1]
    for r in numba.prange(rows):
        i = i0 + r
        ni = sqnorm[i] if l2 else zero
        for c in range(ncols):
            j = j0 + c
            s = two * dots[r, c] - (ni + sqnorm[j]) if l2 else dots[r, c]
            if s < sims[i, k - 1] or (exclude_self and j == i):
                continue
            _insert(sims[i], idx[i], s, j)
    start = min(max(col_from - j0, 0), ncols)
    for b in numba.prange((ncols - start + block - 1) // block):
        c0 = start + b * block
        c1 = min(ncols, c0 + block)
        for r in range(rows):
            i = i0 + r
            ni = sqnorm[i] if l2 else zero
            for c in range(c0, c1):
                j = j0 + c
                s = two * dots[r, c] - (ni + sqnorm[j]) if l2 else dots[r, c]
                if s >= sims[j, k - 1]:
                    _insert(sims[j], idx[j], s, i)


def merge(tile, i0, i1, j0, j1, col_from, sqnorm, exclude_self, sims, idx):
    """Tile merge in the calling convention of ``pysd._ref.knn_graph.tiled_topk``."""
    dots = tile.numpy()
    scalar = dots.dtype.type
    norms = sqnorm.numpy() if sqnorm is not None else np.empty(0, dtype=dots.dtype)
    _merge(dots, i0, j0, col_from, norms, sqnorm is not None, exclude_self, sims.numpy(), idx.numpy(), 512,
           scalar(2), scalar(0))


def backend(x, sqnorm, k, exclude_self, tile_rows, tile_cols):
    """Same contract as ``pysd._ref.knn_graph.backend``."""
    match_torch_threads()
    return tiled_topk(x, sqnorm, k, exclude_self, tile_rows, tile_cols, merge, symmetric=True)
