"""``pysd.Graph``: a small CSR value type for sparse neighbourhood graphs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
from torch import Tensor


class CsrArrays:
    """Properties shared by the CSR graph types (:class:`Graph`, ``pysd.distributed.ShardedGraph``):
    both hold ``indptr``, ``indices`` and ``values`` tensors."""

    @property
    def nnz(self) -> int:
        """Number of stored edges."""
        return int(self.indices.numel())

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype


@dataclass(frozen=True)
class Graph(CsrArrays):
    """Sparse ``(num_nodes, num_nodes)`` graph in CSR form, held as torch tensors on one device.

    Attributes:
        indptr: ``(num_nodes + 1,)`` int64 row pointers.
        indices: ``(nnz,)`` int32 column indices, sorted within each row.
        values: ``(nnz,)`` float32 or float64 edge weights.
        num_nodes: number of rows (= columns).
        knn_indices: ``(num_nodes, k)`` int32 raw neighbour lists from :func:`pysd.knn_graph`
            (nearest first, ties by lower index), or None for a user-supplied graph.
        knn_similarities: ``(num_nodes, k)`` similarities matching ``knn_indices``, or None.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    num_nodes: int
    knn_indices: Optional[Tensor] = None
    knn_similarities: Optional[Tensor] = None

    def __post_init__(self):
        n = int(self.num_nodes)
        if self.indptr.dim() != 1 or self.indptr.numel() != n + 1:
            raise ValueError(f"Graph: indptr must have shape ({n + 1},), got {tuple(self.indptr.shape)}")
        if self.indices.shape != self.values.shape or self.indices.dim() != 1:
            raise ValueError(f"Graph: indices {tuple(self.indices.shape)} and values {tuple(self.values.shape)} "
                             "must be 1-D of equal length")
        if self.indptr.dtype != torch.int64 or self.indices.dtype != torch.int32:
            raise TypeError(f"Graph: indptr must be int64 and indices int32, got {self.indptr.dtype}, "
                            f"{self.indices.dtype}")
        if self.values.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Graph: values must be float32 or float64, got {self.values.dtype}")

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Graph":
        """Copy to another device and/or values dtype (float32/float64)."""
        def mv(t: Optional[Tensor], floating: bool = False) -> Optional[Tensor]:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (floating and dtype is not None) else t.dtype)

        return replace(self, indptr=mv(self.indptr), indices=mv(self.indices), values=mv(self.values, True),
                       knn_indices=mv(self.knn_indices), knn_similarities=mv(self.knn_similarities, True))

    def to_scipy(self):
        """``scipy.sparse.csr_matrix`` copy (on the CPU)."""
        import scipy.sparse as sp

        n = self.num_nodes
        return sp.csr_matrix((self.values.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()),
                             shape=(n, n))

    def to_torch(self) -> Tensor:
        """``torch.sparse_csr_tensor`` view of the same data."""
        # checked: a malformed user graph must raise here, not crash a later sparse kernel
        return torch.sparse_csr_tensor(self.indptr, self.indices.to(torch.int64), self.values,
                                       (self.num_nodes, self.num_nodes), check_invariants=True)

    @classmethod
    def from_scipy(cls, matrix, dtype: torch.dtype = torch.float32, device=None) -> "Graph":
        """From any square scipy sparse matrix (converted to CSR with sorted indices)."""
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(f"Graph.from_scipy: expected a scipy sparse matrix, got {type(matrix).__name__}")
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"Graph.from_scipy: the matrix must be square, got shape {matrix.shape}")
        m = sp.csr_matrix(matrix, copy=True)
        m.sum_duplicates()
        m.sort_indices()
        return cls(indptr=torch.from_numpy(m.indptr.astype(np.int64)).to(device),
                   indices=torch.from_numpy(m.indices.astype(np.int32)).to(device),
                   values=torch.from_numpy(m.data).to(dtype=dtype, device=device),
                   num_nodes=int(m.shape[0]))

    @classmethod
    def from_torch(cls, matrix: Tensor, dtype: Optional[torch.dtype] = None) -> "Graph":
        """From a square torch sparse tensor (COO or CSR)."""
        if not isinstance(matrix, Tensor) or matrix.layout not in (torch.sparse_coo, torch.sparse_csr):
            raise TypeError("Graph.from_torch: expected a torch sparse COO or CSR tensor")
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"Graph.from_torch: the matrix must be square 2-D, got shape {tuple(matrix.shape)}")
        m = matrix.coalesce().to_sparse_csr() if matrix.layout == torch.sparse_coo else matrix
        vals = m.values()
        if dtype is None:
            dtype = vals.dtype if vals.dtype in (torch.float32, torch.float64) else torch.float32
        return cls(indptr=m.crow_indices().to(torch.int64), indices=m.col_indices().to(torch.int32),
                   values=vals.to(dtype), num_nodes=int(m.shape[0]))

    @classmethod
    def coerce(cls, graph, dtype: Optional[torch.dtype] = None) -> "Graph":
        """Accept a Graph, a scipy sparse matrix or a torch sparse tensor."""
        if isinstance(graph, Graph):
            return graph if dtype is None or graph.dtype == dtype else graph.to(dtype=dtype)
        if isinstance(graph, Tensor):
            return cls.from_torch(graph, dtype)
        try:
            import scipy.sparse as sp

            if sp.issparse(graph):
                return cls.from_scipy(graph, dtype or torch.float32)
        except ImportError:
            pass
        raise TypeError(f"expected a pysd.Graph, scipy sparse matrix or torch sparse tensor, got {type(graph).__name__}")

    def __repr__(self) -> str:
        k = "" if self.knn_indices is None else f", k={self.knn_indices.shape[1]}"
        return f"Graph(num_nodes={self.num_nodes}, nnz={self.nnz}{k}, dtype={self.dtype}, device={self.device})"
