"""knn_graph through the extension binding ``knn_graph`` (one tile merge, csrc/bind/knn_graph.h)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._codes import DTYPE_NAMES, stream
from .._ref.knn_graph import empty_lists, tiled_topk


def merge(ext, tile: Tensor, i0: int, i1: int, j0: int, j1: int, col_from: int, sqnorm: Optional[Tensor],
          exclude_self: bool, sims: Tensor, idx: Tensor) -> None:
    """Merges ``tile`` (rows ``i0..i1`` x columns ``j0..j1`` of X X^T) into the lists of its rows.

    ``col_from`` is the merge interface's start of the transposed pass (see ``pysd._numba.knn_graph``);
    the compiled merges have none (the CPU's symmetric self-join is the fused search), so it must be ``j1``.
    """
    if col_from < j1:
        raise ValueError(f"knn_graph merge: the compiled merge feeds a tile to its rows only; col_from must be "
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
    ext.knn_search(dtype=DTYPE_NAMES[x.dtype], x=x.data_ptr(), n=x.shape[0], d=x.shape[1], ld=x.stride(0),
                   sqnorm=0 if sqnorm is None else sqnorm.data_ptr(), exclude_self=exclude_self,
                   max_block=tile_rows, sims=sims.data_ptr(), idx=idx.data_ptr(), k=k)
    return idx, sims
