"""Reference exact kNN of a self-join: brute force over row blocks, in any dtype.

Each block of rows is compared with every row (``(block, N)`` similarities, never
``(N, N)``) and the k best are picked with the library's tie rule: higher similarity
first, lower index on equal similarity.  It doubles as the ``torch`` backend.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend


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


@_backend.register("knn_graph", "torch")
def knn_topk_backend(x: Tensor, sqnorm: Optional[Tensor], k: int, exclude_self: bool, tile_rows: int,
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
        s = x[i0:i1] @ x.t()
        if sqnorm is not None:
            s = 2.0 * s - (sqnorm[i0:i1, None] + sqnorm[None, :])
        if exclude_self:
            rows = torch.arange(i1 - i0, device=x.device)
            s[rows, rows + i0] = -torch.inf
        cols, vals = select_topk(s, k)
        out_idx[i0:i1] = cols.to(torch.int32)
        out_sim[i0:i1] = vals
    return out_idx, out_sim
