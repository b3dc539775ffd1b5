"""Community labels of a CSR graph, for :meth:`pysd.Graph.locality_order`.

Propagation's step gathers the rows of each row's neighbours; numbering the nodes of one
community next to each other turns most of those gathers into cache hits.  The communities come
from label propagation (Raghavan, Albert & Kumara 2007) run sequentially over the rows, so the
result is deterministic.
"""

from __future__ import annotations

import numba
import numpy as np

from . import CACHE


@numba.njit(cache=CACHE)
def communities(indptr, indices, values, max_sweeps, min_changes):
    """``(n,)`` int64 community label of each row (the id of one of its members).

    Every row starts in its own community.  A sweep visits rows 0..n-1 in order; row ``i`` moves to
    the community with the largest total weight over its stored edges ``(i, j)`` (ties: the smaller
    label; a row without edges keeps its label).  Sweeps stop after ``max_sweeps`` or once fewer than
    ``min_changes`` rows moved.  Time O(max_sweeps * nnz); memory one ``(n,)`` float64 accumulator.
    """
    n = indptr.shape[0] - 1
    label = np.arange(n)
    weight = np.zeros(n)
    for _ in range(max_sweeps):
        changes = 0
        for i in range(n):
            for e in range(indptr[i], indptr[i + 1]):
                weight[label[indices[e]]] += values[e]
            best, best_w = label[i], -1.0
            for e in range(indptr[i], indptr[i + 1]):
                lab = label[indices[e]]
                w = weight[lab]
                if w > best_w or (w == best_w and lab < best):
                    best, best_w = lab, w
            for e in range(indptr[i], indptr[i + 1]):
                weight[label[indices[e]]] = 0.0
            if best != label[i]:
                label[i] = best
                changes += 1
        if changes < min_changes:
            break
    return label
