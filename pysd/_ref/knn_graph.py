"""Reference exact kNN graph in plain torch, and the pieces every backend shares.

* :func:`knn_graph`: the public signature of :func:`pysd.knn_graph` (exact search only): brute force
  over row blocks, in any dtype, then the affinity / CSR recipe.
* :func:`backend`: the ``torch`` backend of the top-k search (blocks of ``(block, N)`` similarities,
  never ``(N, N)``), with the library's tie rule: higher similarity first, lower index on equal
  similarity.
* :func:`similarity` (the l2 arithmetic, written once), :func:`tiled_topk` (the GEMM tile driver of
  the compiled and numba merges) and the graph recipe (:func:`affinity`, :func:`build_csr` and its
  steps, reused by the sharded graph of :mod:`pysd.distributed`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._codes import NO_INDEX
from ..graph import Graph


def similarity(dots: Tensor, sqnorm_rows: Optional[Tensor], sqnorm_cols: Optional[Tensor]) -> Tensor:
    """Similarities from a block of dot products ``(B, M)``, in place.  With squared norms (metric
    ``"l2"``) the negative squared distance ``2 x_i.x_j - (|x_i|^2 + |x_j|^2)``: both norms are added
    first, as ``csrc/include/pysd/knn_graph.h`` does, so that sim(i, j) and sim(j, i) round identically."""
    if sqnorm_rows is None:
        return dots
    return dots.mul_(2.0).sub_(sqnorm_rows[:, None] + sqnorm_cols[None, :])


def select_topk(sims: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The k best columns of each row of ``sims: (B, M)``, best first, ties to the lower column.

    Returns ``(indices int64 (B, k), similarities (B, k))``.
    """
    kth = torch.topk(sims, k, dim=1).values[:, -1:]
    above = sims > kth
    tied = sims == kth
    room = k - above.sum(1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(1) <= room))
    cols = chosen.nonzero()[:, 1].view(-1, k)  # row-major: ascending column within a row
    vals = sims.gather(1, cols)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return cols.gather(1, order), vals.gather(1, order)


def empty_lists(x: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """``(sims (N, k), idx int32 (N, k))`` for the merges to fill: every slot ``(-inf, NO_INDEX)``, worse
    than any finite candidate."""
    n = x.shape[0]
    return (torch.full((n, k), -torch.inf, dtype=x.dtype, device=x.device),
            torch.full((n, k), NO_INDEX, dtype=torch.int32, device=x.device))


def tiled_topk(x: Tensor, sqnorm: Optional[Tensor], k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
               merge, symmetric: bool) -> Tuple[Tensor, Tensor]:
    """Exact top-k of the self-join ``x x^T`` from GEMM tiles, merged by ``merge``.

    With ``symmetric`` only the tiles on or right of the diagonal block are computed (about
    half the GEMM) and ``merge`` feeds each pair to both rows; otherwise every tile is
    computed and fed to its rows only.  Memory: the ``(N, k)`` lists and one tile.
    """
    n = x.shape[0]
    sims, idx = empty_lists(x, k)
    tile_rows, tile_cols = min(tile_rows, n), min(tile_cols, n)
    buf = torch.empty(tile_rows * tile_cols, dtype=x.dtype, device=x.device)
    for i0 in range(0, n, tile_rows):
        i1 = min(n, i0 + tile_rows)
        xi = x[i0:i1]
        for j0 in range(i0 if symmetric else 0, n, tile_cols):
            j1 = min(n, j0 + tile_cols)
            tile = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
            torch.mm(xi, x[j0:j1].t(), out=tile)
            merge(tile, i0, i1, j0, j1, max(j0, i1) if symmetric else j1, sqnorm, exclude_self, sims, idx)
    return idx, sims


def backend(x: Tensor, sqnorm: Optional[Tensor], k: int, exclude_self: bool, tile_rows: int,
                     tile_cols: int) -> Tuple[Tensor, Tensor]:
    """``x: (N, d)`` → ``(indices int32 (N, k), similarities (N, k))``; ``sqnorm: (N,)`` selects
    the l2 similarity ``-|x_i - x_j|^2``.  A block spans all N columns and holds as many
    similarities as one ``(tile_rows, tile_cols)`` tile (plus a few masks of that size)."""
    n = x.shape[0]
    block = max(1, tile_rows * tile_cols // n)
    out_idx = torch.empty((n, k), dtype=torch.int32, device=x.device)
    out_sim = torch.empty((n, k), dtype=x.dtype, device=x.device)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        s = similarity(x[i0:i1] @ x.t(), None if sqnorm is None else sqnorm[i0:i1], sqnorm)
        if exclude_self:
            rows = torch.arange(i1 - i0, device=x.device)
            s[rows, rows + i0] = -torch.inf
        cols, vals = select_topk(s, k)
        out_idx[i0:i1] = cols.to(torch.int32)
        out_sim[i0:i1] = vals
    return out_idx, out_sim


def affinity(sims: Tensor, metric: str, power: float, scale: Optional[Tensor] = None) -> Tensor:
    """Edge weights from the ``(n, k)`` similarities; for l2 ``scale`` is the mean squared distance to
    the k-th neighbour over all rows (computed from ``sims`` when None; a sharded caller reduces it)."""
    if metric == "l2":
        d2 = (-sims).clamp(min=0)
        if scale is None:
            scale = d2[:, -1].mean()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.exp(-power * d2 / scale)
    return sims.clamp(min=0).pow(power)


def edge_list(idx: Tensor, weights: Tensor, row_start: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """``(rows, cols, values)`` of the edges ``row_start + i -> idx[i, :]``: rows and cols int64
    ``(E,)`` (global ids), self loops and zero weights dropped."""
    n, k = idx.shape
    rows = torch.arange(row_start, row_start + n, device=idx.device).repeat_interleave(k)
    cols = idx.reshape(-1).to(torch.int64)
    vals = weights.reshape(-1)
    keep = (rows != cols) & (vals != 0)
    return rows[keep], cols[keep], vals[keep]


def coalesce(rows: Tensor, cols: Tensor, vals: Tensor, n_cols: int, symmetrize: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Duplicate ``(row, col)`` entries combined (max for ``symmetrize="max"``, else summed), sorted
    by row then column: ``(rows int64, cols int64, values)``."""
    keys, inverse = torch.unique(rows * n_cols + cols, sorted=True, return_inverse=True)
    out = vals.new_zeros(keys.numel())
    if symmetrize == "max":
        out.scatter_reduce_(0, inverse, vals, "amax", include_self=False)
    else:
        out.index_add_(0, inverse, vals)
    return keys // n_cols, keys % n_cols, out


def degrees(rows: Tensor, vals: Tensor, n: int) -> Tensor:
    """``(n,)`` row sums of the coalesced entries, a zero degree counted as 1."""
    deg = vals.new_zeros(n).index_add_(0, rows, vals)
    return torch.where(deg > 0, deg, torch.ones_like(deg))


def normalized(vals: Tensor, deg_rows: Tensor, deg_cols: Tensor, normalize: str) -> Tensor:
    """Entries of ``D^-1/2 W D^-1/2`` (``"sym"``) or ``D^-1 W`` (``"rw"``) from each entry's row and
    column degrees."""
    return vals / (deg_rows.sqrt() * deg_cols.sqrt()) if normalize == "sym" else vals / deg_rows


def row_pointers(rows: Tensor, n: int) -> Tensor:
    """``(n + 1,)`` int64 CSR row pointers of the row-sorted entries ``rows`` (local ids)."""
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    indptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return indptr


def build_csr(idx: Tensor, weights: Tensor, n: int, symmetrize: str, normalize: Optional[str]) -> Tuple[Tensor, ...]:
    """``(indptr int64, indices int32, values)`` of the graph with edges ``i -> idx[i, :]`` weighted
    ``weights``: diagonal and zero weights dropped, symmetrized, normalised.  Sort-based, O(N k)."""
    rows, cols, vals = edge_list(idx, weights)
    if symmetrize != "none":
        rows, cols, vals = torch.cat([rows, cols]), torch.cat([cols, rows]), torch.cat([vals, vals])
    rows, cols, out = coalesce(rows, cols, vals, n, symmetrize)
    if normalize is not None:
        deg = degrees(rows, out, n)
        out = normalized(out, deg[rows], deg[cols], normalize)
    return row_pointers(rows, n), cols.to(torch.int32), out


def knn_graph(features: Tensor, k: int = 10, *, metric: str = "cosine", power: float = 3.0,
              symmetrize: str = "sum", normalize: Optional[str] = "sym", exclude_self: bool = True) -> Graph:
    """:func:`pysd.knn_graph` (``method="exact"``) in plain torch for valid ``(N, d)`` float features,
    computed in their dtype (float64 for the tests)."""
    x = features.detach()
    if metric == "cosine":
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    sqnorm = (x * x).sum(1) if metric == "l2" else None
    n = x.shape[0]
    idx, sims = backend(x, sqnorm, k, exclude_self, 1024, 8192)
    indptr, indices, values = build_csr(idx, affinity(sims, metric, float(power)), n, symmetrize, normalize)
    return Graph(indptr=indptr, indices=indices, values=values, num_nodes=n, knn_indices=idx,
                 knn_similarities=sims, metric=metric)
