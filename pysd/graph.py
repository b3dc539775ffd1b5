"""``pysd.Graph``: a small CSR value type for sparse neighbourhood graphs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

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
        metric: the similarity of ``knn_similarities`` (``"cosine"``, ``"ip"`` or ``"l2"``: the negative
            squared distance), or None.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    num_nodes: int
    knn_indices: Optional[Tensor] = None
    knn_similarities: Optional[Tensor] = None
    metric: Optional[str] = None
    # derived data computed once per graph (the locality order and the reordered CSR); not an
    # init argument, so copies made by ``to`` / ``replace`` start empty
    _cache: Dict[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def locality_order(self) -> Tensor:
        """``(num_nodes,)`` int64 node order (new position -> old node) that keeps neighbours close.

        Reverse Cuthill-McKee (``scipy.sparse.csgraph``) on the structure of ``S + S^T``: rows
        that share neighbours get nearby positions, so a pass over the rows gathers neighbour
        rows that are still in cache.  Computed on the CPU once per graph and cached on it.
        """
        if "order" not in self._cache:
            from scipy.sparse.csgraph import reverse_cuthill_mckee

            order = reverse_cuthill_mckee(self.to_scipy(), symmetric_mode=False)
            self._cache["order"] = torch.from_numpy(order.astype(np.int64)).to(self.device)
        return self._cache["order"]

    def reordered(self) -> Tuple["Graph", Tensor]:
        """``(P S P^T, order)`` with ``order = locality_order()``: row and column ``r`` of the result
        are node ``order[r]`` of this graph (indices sorted per row; kNN lists are not carried).
        Cached on this graph.  Memory: the new CSR plus O(nnz) int64 temporaries while it is built."""
        if "reordered" not in self._cache:
            order = self.locality_order()
            n, dev = self.num_nodes, self.device
            inv = torch.empty_like(order)
            inv[order] = torch.arange(n, device=dev)
            deg = (self.indptr[1:] - self.indptr[:-1])[order]
            indptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
            indptr[1:] = deg.cumsum(0)
            rows = torch.repeat_interleave(torch.arange(n, device=dev), deg)
            src = self.indptr[order][rows] + torch.arange(self.nnz, device=dev) - indptr[rows]
            cols = inv[self.indices[src].to(torch.int64)]
            sort = torch.argsort(rows * n + cols)
            g = Graph(indptr=indptr, indices=cols[sort].to(torch.int32), values=self.values[src[sort]],
                      num_nodes=n)
            self._cache["reordered"] = g
        return self._cache["reordered"], self.locality_order()

    def to_scipy(self, mode: str = "graph"):
        """``scipy.sparse.csr_matrix`` ``(num_nodes, num_nodes)`` on the CPU.

        ``mode="graph"``: the graph's CSR arrays and edge weights; for a CPU graph ``data`` and ``indices``
        share the graph's memory (no copy; ``indptr`` takes scipy's index dtype), a GPU graph is copied.
        ``mode="distance"``: the raw kNN lists as a distance graph, the layout of scikit-learn's
        ``kneighbors_graph(mode="distance")`` and of cleanlab's ``Datalab.find_issues(knn_graph=...)``: exactly ``k`` entries per row, self excluded,
        nearest first (ascending distance), zero distances stored explicitly; the distance is ``1 - s``
        (clipped at 0) for ``metric="cosine"`` and the Euclidean distance for ``"l2"``.  Needs the lists of
        :func:`pysd.knn_graph` (``exclude_self=True``); ``metric="ip"`` has no distance (ValueError).
        """
        import scipy.sparse as sp

        n = self.num_nodes
        if mode == "graph":
            return sp.csr_matrix((self.values.cpu().numpy(), self.indices.cpu().numpy(),
                                  self.indptr.cpu().numpy()), shape=(n, n))
        if mode != "distance":
            raise ValueError(f"Graph.to_scipy: mode must be 'graph' or 'distance', got {mode!r}")
        if self.knn_indices is None or self.metric not in ("cosine", "l2"):
            raise ValueError("Graph.to_scipy(mode='distance') needs the kNN lists of pysd.knn_graph with "
                             f"metric 'cosine' or 'l2' (this graph: metric={self.metric!r}, "
                             f"lists {'present' if self.knn_indices is not None else 'absent'})")
        idx = self.knn_indices.cpu().to(torch.int64)
        if bool((idx == torch.arange(n).unsqueeze(1)).any()):
            raise ValueError("Graph.to_scipy(mode='distance'): the kNN lists include the point itself; "
                             "build the graph with exclude_self=True")
        sims = self.knn_similarities.detach().cpu()
        dist = (1.0 - sims).clamp(min=0) if self.metric == "cosine" else (-sims).clamp(min=0).sqrt()
        k = idx.shape[1]
        return sp.csr_matrix((dist.reshape(-1).numpy(), idx.reshape(-1).numpy(), np.arange(0, n * k + 1, k)),
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

    def to_cupy(self):
        """``cupyx.scipy.sparse.csr_matrix`` over the same GPU memory (DLPack; ``data`` and ``indices`` are
        not copied, ``indptr`` becomes CuPy's int32).  Needs CuPy (``pip install "pysd[cupy]"``) and a graph
        on a CUDA device (``graph.to("cuda")``)."""
        if self.device.type != "cuda":
            raise ValueError(f"Graph.to_cupy: the graph is on {self.device}; move it with graph.to('cuda') first")
        import cupy
        import cupyx.scipy.sparse as csp

        n = self.num_nodes
        return csp.csr_matrix((cupy.from_dlpack(self.values.detach()), cupy.from_dlpack(self.indices),
                               cupy.from_dlpack(self.indptr)), shape=(n, n))

    @classmethod
    def from_cupy(cls, matrix, dtype: Optional[torch.dtype] = None) -> "Graph":
        """From a square ``cupyx.scipy.sparse`` matrix, on its GPU (converted to CSR with summed duplicates
        and sorted indices in a copy; the arrays then cross to torch through DLPack).  ``dtype``: float32 /
        float64 (default: the matrix's when it is one of them, else float32)."""
        import cupyx.scipy.sparse as csp

        if not csp.issparse(matrix):
            raise TypeError(f"Graph.from_cupy: expected a cupyx.scipy.sparse matrix, got {type(matrix).__name__}")
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"Graph.from_cupy: the matrix must be square, got shape {matrix.shape}")
        m = matrix.tocsr(copy=True)
        m.sum_duplicates()
        m.sort_indices()
        values = torch.from_dlpack(m.data)
        if dtype is None:
            dtype = values.dtype if values.dtype in (torch.float32, torch.float64) else torch.float32
        return cls(indptr=torch.from_dlpack(m.indptr).to(torch.int64), indices=torch.from_dlpack(m.indices).to(
            torch.int32), values=values.to(dtype), num_nodes=int(m.shape[0]))

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
        """Accept a Graph, a scipy sparse matrix, a cupyx.scipy.sparse matrix or a torch sparse tensor."""
        if isinstance(graph, Graph):
            return graph if dtype is None or graph.dtype == dtype else graph.to(dtype=dtype)
        if isinstance(graph, Tensor):
            return cls.from_torch(graph, dtype)
        if type(graph).__module__.startswith("cupyx."):
            return cls.from_cupy(graph, dtype)
        try:
            import scipy.sparse as sp

            if sp.issparse(graph):
                return cls.from_scipy(graph, dtype or torch.float32)
        except ImportError:
            pass
        raise TypeError(f"expected a pysd.Graph, scipy / cupyx sparse matrix or torch sparse tensor, "
                        f"got {type(graph).__name__}")

    def __repr__(self) -> str:
        k = "" if self.knn_indices is None else f", k={self.knn_indices.shape[1]}"
        return f"Graph(num_nodes={self.num_nodes}, nnz={self.nnz}{k}, dtype={self.dtype}, device={self.device})"
