"""knn_graph through the extension bindings (csrc/bind/knn_graph.h): ``knn_search`` of ``pysd._C`` (the fused
CPU search) and ``knn_graph`` of ``pysd._C_cuda`` (one tile merge)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._codes import DTYPE_NAMES, stream
from .._ref.knn_graph import empty_lists, tiled_topk


def merge(ext, tile: Tensor, i0: int, i1: int, j0: int, j1: int, col_from: int, sqnorm: Optional[Tensor],
          exclude_self: bool, sims: Tensor, idx: Tensor) -> None:
    """Merges the CUDA ``tile`` (rows ``i0..i1`` x columns ``j0..j1`` of X X^T) into the lists of its rows.

    ``col_from`` is the merge interface's start of the transposed pass (see ``pysd._numba.knn_graph``);
    the CUDA merge has none, so it must be ``j1``.
    """
    if col_from < j1:
        raise ValueError(f"knn_graph merge: the CUDA merge feeds a tile to its rows only; col_from must be "
                         f"j1 = {j1}, got {col_from}")
    ext.knn_graph(dtype=DTYPE_NAMES[tile.dtype], dots=tile.data_ptr(), ld=tile.stride(0), i0=i0, i1=i1, j0=j0,
                  j1=j1, sqnorm=0 if sqnorm is None else sqnorm.data_ptr(),
                  exclude_self=exclude_self, sims=sims.data_ptr(), idx=idx.data_ptr(), k=sims.shape[1],
                  stream=stream(tile))


def backend(ext, x, sqnorm, k, exclude_self, tile_rows, tile_cols):
    """``(indices int32 (N, k), similarities (N, k))``, same contract as ``pysd._ref.knn_graph.backend``.

    CPU: the fused search of ``csrc/cpu/knn_graph.cpp`` (no tile of X X^T is stored; ``tile_rows`` caps
    its block of rows).  GPU: cuBLAS tiles through ``torch.mm``, merged row by row (the CUDA kernel has
    no transposed pass, see csrc/cuda/knn_graph.cu).
    """
    if x.is_cuda:
        def run(*args):
            merge(ext, *args)

        return tiled_topk(x, sqnorm, k, exclude_self, tile_rows, tile_cols, run, symmetric=False)
    sims, idx = empty_lists(x, k)
    search(ext, x, sqnorm, 0, exclude_self, tile_rows, sims, idx)
    return idx, sims


def _rows(t: Tensor) -> Tensor:
    """``t`` with unit column stride (rows may be strided), as the kernel reads it."""
    return t if t.dim() < 2 or t.stride(1) == 1 else t.contiguous()


def search(ext, x: Tensor, sqnorm: Optional[Tensor], x_id0: int, exclude_self: bool, max_block: int, sims: Tensor,
           idx: Tensor, y: Optional[Tensor] = None, y_sqnorm: Optional[Tensor] = None, y_id0: int = 0) -> None:
    """Merges exact top-k candidates of the CPU rows ``x: (n, d)`` (global ids from ``x_id0``) into the
    ``(n, k)`` lists ``(sims, idx)`` with the fused kernel: against ``x`` itself (``y`` None: each pair
    once, offered to both rows) or against the rows ``y: (m, d)`` (global ids from ``y_id0``, offered to
    ``x``'s rows only).  l2 passes the squared norms of both; an equal global id is self.  Memory: a
    packed copy of the columns (``x`` or ``y``)."""
    x, y = _rows(x), None if y is None else _rows(y)
    sqnorm = None if sqnorm is None else sqnorm.contiguous()
    y_sqnorm = None if y_sqnorm is None else y_sqnorm.contiguous()
    ext.knn_search(dtype=DTYPE_NAMES[x.dtype], x=x.data_ptr(), n=x.shape[0], d=x.shape[1], ld=x.stride(0),
                   sqnorm=0 if sqnorm is None else sqnorm.data_ptr(), y=0 if y is None else y.data_ptr(),
                   m=0 if y is None else y.shape[0], ldy=0 if y is None else y.stride(0),
                   y_sqnorm=0 if y_sqnorm is None else y_sqnorm.data_ptr(), x_id0=x_id0, y_id0=y_id0,
                   exclude_self=exclude_self, max_block=max_block, sims=sims.data_ptr(), idx=idx.data_ptr(),
                   k=sims.shape[1])
