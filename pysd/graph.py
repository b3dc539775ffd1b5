"""``pysd.Graph``: a small CSR value type for sparse neighbourhood graphs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import _checks


# label-propagation sweeps of Graph.locality_order: on a 100k-node kNN graph (k=10) the
# communities keep merging for ~20 sweeps; 10 left fragments and ~1.1x of the solve time on the table
LOCALITY_SWEEPS = 20


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

    The structure is validated once, when the graph is built (O(nnz), one host synchronisation on a
    GPU): ``indptr[0] == 0``, ``indptr`` non-decreasing, ``indptr[-1] == nnz``, every column in
    ``[0, num_nodes)``, every weight finite and ``>= 0``.  A violation raises ``ValueError`` naming the
    attribute, so no kernel ever reads a malformed graph.  Negative weights are rejected: the graph
    holds affinities, and propagation's guarantees (non-negative scores, a convergent ``alpha S``
    for a normalised ``S``) rest on them.  Graphs built by pysd (:func:`pysd.knn_graph`,
    :meth:`to` on the same dtype) skip the check.

    Attributes:
        indptr: ``(num_nodes + 1,)`` int64 row pointers.
        indices: ``(nnz,)`` int32 column indices (sorted within each row by pysd's constructors;
            any order is accepted).
        values: ``(nnz,)`` float32 or float64 finite, non-negative edge weights.
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
    # True once the structure has been checked (or built by pysd); not part of equality or repr
    _validated: bool = field(default=False, repr=False, compare=False)
    # derived data computed once per graph (the locality order and the reordered CSR); not an
    # init argument, so copies made by ``to`` / ``replace`` start empty
    _cache: Dict[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("indptr", "indices", "values"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"Graph: {name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if isinstance(self.num_nodes, bool) or not isinstance(self.num_nodes, (int, np.integer)) or self.num_nodes < 0:
            raise ValueError(f"Graph: num_nodes must be an int >= 0, got {self.num_nodes!r}")
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
        if not (self.indptr.device == self.indices.device == self.values.device):
            raise ValueError(f"Graph: indptr, indices and values must be on one device, got {self.indptr.device}, "
                             f"{self.indices.device}, {self.values.device}")
        if not self._validated:
            _check_csr("Graph", self.indptr, self.indices, self.values, n)
            object.__setattr__(self, "_validated", True)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Graph":
        """Copy to another device and/or values dtype (float32/float64).

        Raises ``ValueError`` for a CUDA device when CUDA is not available, ``TypeError`` for another
        dtype.  A dtype change re-validates the weights (float64 values can overflow float32).
        """
        if device is not None:
            device = _checks.device("Graph.to", device)
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Graph.to: dtype must be torch.float32 or torch.float64, got {dtype}")

        def mv(t: Optional[Tensor], floating: bool = False) -> Optional[Tensor]:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (floating and dtype is not None) else t.dtype)

        return replace(self, indptr=mv(self.indptr), indices=mv(self.indices), values=mv(self.values, True),
                       knn_indices=mv(self.knn_indices), knn_similarities=mv(self.knn_similarities, True),
                       _validated=dtype is None or dtype == self.dtype)

    def locality_order(self) -> Tensor:
        """``(num_nodes,)`` int64 node order (new position -> old node) that keeps neighbours close.

        Nodes are numbered community by community, so a pass over the rows gathers neighbour rows
        that are still in cache.  Communities come from label propagation over the stored edges, run
        sequentially (deterministic): each row in turn joins the community with the largest total
        edge weight among its neighbours (ties: the smaller label), for at most
        ``LOCALITY_SWEEPS`` sweeps or until fewer than ``num_nodes / 1000`` rows move; nodes are then
        sorted by community, and by index within one.  Computed on the CPU (numba) once per graph
        and cached on it: O(sweeps * nnz) time, one ``(num_nodes,)`` float64 and a few int64
        vectors of memory.
        """
        if "order" not in self._cache:
            from ._numba.locality import communities

            g = self.to("cpu")
            label = communities(g.indptr.numpy(), g.indices.numpy(), g.values.numpy(), LOCALITY_SWEEPS,
                                max(1, self.num_nodes // 1000))
            order = np.argsort(label, kind="stable")
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
                      num_nodes=n, _validated=True)
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
        if np.iscomplexobj(matrix.data):
            raise TypeError(f"Graph.from_scipy: matrix must hold real weights, got {matrix.dtype}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Graph.from_scipy: dtype must be torch.float32 or torch.float64, got {dtype}")
        if device is not None:
            device = _checks.device("Graph.from_scipy", device)
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"Graph.from_scipy: the matrix must be square, got shape {matrix.shape}")
        if matrix.format in ("csr", "csc"):
            # scipy does not check a user-built CSR / CSC: the conversions below would trust its indices
            # (scipy stores indptr[-1] entries; longer index arrays are allowed and ignored)
            ptr = torch.from_numpy(np.asarray(matrix.indptr, dtype=np.int64))
            stored = min(int(ptr[-1]) if ptr.numel() else 0, len(matrix.indices))
            _check_csr("Graph.from_scipy", ptr, torch.from_numpy(np.asarray(matrix.indices[:stored], dtype=np.int64)),
                       torch.empty(0), int(matrix.shape[0]), weights=False)
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
        if matrix.is_complex():
            raise TypeError(f"Graph.from_torch: matrix must hold real weights, got {matrix.dtype}")
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


def _check_csr(where: str, indptr: Tensor, indices: Tensor, values: Tensor, n: int, weights: bool = True,
               n_cols: Optional[int] = None, columns: str = "num_nodes") -> None:
    """``ValueError`` unless ``(indptr, indices, values)`` is a well-formed CSR of ``n`` rows and ``n_cols``
    (default ``n``) columns, with ``weights``: finite, non-negative values.  O(nnz) vectorised; one host
    synchronisation.  ``columns`` names the column bound in the message."""
    nnz = indices.numel()
    n_cols = n if n_cols is None else n_cols
    bad = torch.zeros(5, dtype=torch.bool, device=indptr.device)
    if n + 1 == indptr.numel():
        bad[0] = indptr[0] != 0
        bad[1] = indptr[-1] != nnz
        bad[2] = (indptr[1:] < indptr[:-1]).any() if n else False
    if nnz:
        bad[3] = ((indices < 0) | (indices >= n_cols)).any()
        if weights:
            bad[4] = ~(torch.isfinite(values) & (values >= 0)).all()
    flags = bad.tolist()  # the one synchronisation: every rule is reduced on the device first
    if flags[0]:
        raise ValueError(f"{where}: indptr must start at 0, got indptr[0] = {int(indptr[0])}")
    if flags[1]:
        raise ValueError(f"{where}: indptr[-1] must equal nnz = {nnz} (the length of indices), "
                         f"got {int(indptr[-1])}")
    if flags[2]:
        row = int((indptr[1:] < indptr[:-1]).nonzero()[0])
        raise ValueError(f"{where}: indptr must be non-decreasing, but indptr[{row + 1}] = {int(indptr[row + 1])} "
                         f"< indptr[{row}] = {int(indptr[row])}")
    if flags[3]:
        pos = int(((indices < 0) | (indices >= n_cols)).nonzero()[0])
        raise ValueError(f"{where}: indices must be column ids in [0, {columns}={n_cols}), got {int(indices[pos])} "
                         f"at position {pos}")
    if flags[4]:
        pos = int((~(torch.isfinite(values) & (values >= 0))).nonzero()[0])
        raise ValueError(f"{where}: values must be finite, non-negative edge weights, got {float(values[pos])} "
                         f"at position {pos}")
