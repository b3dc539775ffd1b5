"""``pysd.distributed.knn_graph``: the exact kNN graph of row-sharded features (a ring of feature
blocks), and :class:`ShardedGraph`, one rank's rows of a graph.

Validation, feature preparation, the tie rule, the l2 arithmetic and the graph recipe are those of the
single-process op (the hooks of :mod:`pysd.ops.knn_graph` and :mod:`pysd._ref.knn_graph`); the fused
CPU search or the tile merge comes from :mod:`pysd._backend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .. import _backend, _checks
from .._ref import knn_graph as recipe
from ..graph import CsrArrays, Graph, _check_csr
from ..ops import knn_graph as single
from ._comm import Halo, agree, count_matrix, exchange, message, owners, peer, world

OP = "knn_graph"


@dataclass(frozen=True)
class ShardedGraph(CsrArrays):
    """One rank's rows of a ``(num_nodes, num_nodes)`` graph: CSR with local rows and global columns.

    Attributes:
        indptr: ``(num_rows + 1,)`` int64 row pointers of the local rows.
        indices: ``(nnz,)`` int32 global column ids, sorted within each row.
        values: ``(nnz,)`` float32 / float64 edge weights.
        row_start: global id of local row 0 (the rank's rows are ``row_start + [0, num_rows)``).
        num_nodes: global N (rows of all ranks = columns).
        knn_indices: ``(num_rows, k)`` int32 global neighbour ids (best first), or None.
        knn_similarities: ``(num_rows, k)`` matching similarities, or None.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    row_start: int
    num_nodes: int
    knn_indices: Optional[Tensor] = None
    knn_similarities: Optional[Tensor] = None
    # True once checked by propagate (or built by pysd); not part of equality or repr
    _validated: bool = field(default=False, repr=False, compare=False)

    def validate(self, where: str = "ShardedGraph") -> None:
        """``TypeError`` / ``ValueError`` unless this is a well-formed CSR of local rows with global columns
        in ``[0, num_nodes)`` and finite, non-negative weights (as :class:`pysd.Graph`); O(nnz), once."""
        if self._validated:
            return
        for name in ("indptr", "indices", "values"):
            if not isinstance(getattr(self, name), Tensor) or getattr(self, name).dim() != 1:
                raise TypeError(f"{where}: {name} must be a 1-D torch.Tensor")
        if self.indptr.dtype != torch.int64 or self.indices.dtype != torch.int32 \
                or self.values.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{where}: indptr must be int64, indices int32 and values float32/float64, got "
                            f"{self.indptr.dtype}, {self.indices.dtype}, {self.values.dtype}")
        for name in ("row_start", "num_nodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{where}: {name} must be an int >= 0, got {v!r}")
        if self.indptr.numel() < 1 or self.indices.shape != self.values.shape:
            raise ValueError(f"{where}: indptr must have num_rows + 1 >= 1 entries and indices, values one per edge")
        if self.row_start + self.num_rows > self.num_nodes:
            raise ValueError(f"{where}: rows [{self.row_start}, {self.row_start + self.num_rows}) exceed "
                             f"num_nodes={self.num_nodes}")
        _check_csr(where, self.indptr, self.indices, self.values, self.num_rows, n_cols=self.num_nodes)
        object.__setattr__(self, "_validated", True)

    @property
    def num_rows(self) -> int:
        return int(self.indptr.numel()) - 1

    def to_scipy(self):
        """``scipy.sparse.csr_matrix`` of shape ``(num_rows, num_nodes)`` (on the CPU)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()),
                             shape=(self.num_rows, self.num_nodes))

    @classmethod
    def from_graph(cls, graph, row_start: int, row_end: int) -> "ShardedGraph":
        """Rows ``[row_start, row_end)`` of a whole graph (``pysd.Graph``, scipy or torch sparse)."""
        g = Graph.coerce(graph)
        where = "ShardedGraph.from_graph"
        for name, v in (("row_start", row_start), ("row_end", row_end)):
            _checks.integer(where, name, v)
        if not 0 <= row_start <= row_end <= g.num_nodes:
            raise ValueError(f"{where}: need 0 <= row_start <= row_end <= num_nodes={g.num_nodes}, "
                             f"got row_start={row_start}, row_end={row_end}")
        lo, hi = int(g.indptr[row_start]), int(g.indptr[row_end])
        return cls(indptr=g.indptr[row_start:row_end + 1] - lo, indices=g.indices[lo:hi], values=g.values[lo:hi],
                   row_start=int(row_start), num_nodes=g.num_nodes, _validated=True)


def _merge_tile(t: Tensor, lists: Tuple[Tensor, Tensor], col0: int, merge) -> None:
    """Merges the similarity tile ``t`` (rows = the list rows, columns = global ids from ``col0``) into
    ``lists = (sims, idx)``: higher similarity first, then the lower global id."""
    sims, idx = lists
    k = sims.shape[1]
    m = t.shape[1]
    if merge is not None:
        merge(t, 0, t.shape[0], col0, col0 + m, col0 + m, None, False, sims, idx)
        return
    # The tile's own best (ties to its lower ids), then a merge of two k-lists ordered by global id
    # and stably by similarity, so ties across tiles go to the lower global id.
    c, v = recipe.select_topk(t, min(k, m))
    cand_i = torch.cat([idx, (c + col0).to(torch.int32)], 1)
    cand_s = torch.cat([sims, v], 1)
    order = torch.argsort(cand_i, dim=1, stable=True)
    cand_i, cand_s = cand_i.gather(1, order), cand_s.gather(1, order)
    order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]
    idx.copy_(cand_i.gather(1, order))
    sims.copy_(cand_s.gather(1, order))


def _merge_block(x: Tensor, sqn: Optional[Tensor], blk: Tensor, blk_sqn: Optional[Tensor], col0: int,
                 row_start: int, exclude_self: bool, tile: Tuple[int, int], sims: Tensor, idx: Tensor,
                 merge) -> None:
    """Merges the similarities of the local rows ``x`` to the rows ``blk`` (global ids from ``col0``)
    into the ``(n, k)`` lists, tile by tile."""
    n, m = x.shape[0], blk.shape[0]
    buf = x.new_empty(min(n, tile[0]) * min(m, tile[1]))
    for i0 in range(0, n, tile[0]):
        i1 = min(n, i0 + tile[0])
        for j0 in range(0, m, tile[1]):
            j1 = min(m, j0 + tile[1])
            t = buf[:(i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
            torch.mm(x[i0:i1], blk[j0:j1].t(), out=t)
            # l2 and self-exclusion are applied to the tile here: the kernel would index the norms
            # and test i == j with one id space, and local rows / global columns are two
            recipe.similarity(t, None if sqn is None else sqn[i0:i1], None if sqn is None else blk_sqn[j0:j1])
            if exclude_self:
                rows = torch.arange(i1 - i0, device=x.device)
                cols = rows + (row_start + i0 - col0 - j0)
                hit = (cols >= 0) & (cols < j1 - j0)
                t[rows[hit], cols[hit]] = -torch.inf
            _merge_tile(t, (sims[i0:i1], idx[i0:i1]), col0 + j0, merge)


def _local_features(local_features, k, metric, power, symmetrize, normalize, exclude_self, tile):
    """The single-process checks on this rank's inputs: ``(x, sqnorm, tile, power)``."""
    x = single.check_features(local_features)
    if x.shape[1] < 1:
        raise ValueError(f"{OP}: local features must be 2-D (n, d) with d >= 1, got shape {tuple(x.shape)}")
    power = single.check_options(metric, power, symmetrize, normalize, exclude_self)
    _checks.integer(OP, "k", k, 1)
    tile = single.tile_shape(tile, x.device.type)
    x, sqn = single.prepare_features(x, metric, rows="local rows")
    return x, sqn, tile, power


def _ring_search(x: Tensor, sqn: Optional[Tensor], k: int, sizes, offsets: Tensor, exclude_self: bool, tile,
                 group) -> Tuple[Tensor, Tensor]:
    """``(idx (n, k) int32 global ids, sims (n, k))`` of the local rows against every rank's block."""
    rank, p = world(group)
    n, d, dev = x.shape[0], x.shape[1], x.device
    row_start = int(offsets[rank])
    sims, idx = recipe.empty_lists(x, k)
    # CPU with the compiled backend: the fused kernel, no tiles; otherwise GEMM tiles and a merge
    search = _backend.select_part(OP, dev.type, "search") if dev.type == "cpu" else None
    merge = _backend.select_part(OP, dev.type, "merge")
    # l2 travels with its squared norms in one message so that both are the owner's exact values
    own = x if sqn is None else torch.cat([x, sqn.unsqueeze(1)], 1)
    blk = own
    for step in range(p):
        owner = (rank - step) % p
        pending = None
        if step < p - 1:
            nxt = (rank - step - 1) % p
            incoming = own.new_empty((sizes[nxt], own.shape[1]))
            ops = [dist.P2POp(dist.isend, blk, peer(group, (rank + 1) % p), group=group)] if blk.numel() else []
            if incoming.numel():
                ops.append(dist.P2POp(dist.irecv, incoming, peer(group, (rank - 1) % p), group=group))
            pending = (dist.batch_isend_irecv(ops) if ops else [], incoming)
        if n and blk.shape[0]:
            feats, norms = (blk, None) if sqn is None else (blk[:, :d], blk[:, d])
            if search is not None and owner == rank:  # the local block: a self-join, each pair once
                search(x, sqn, row_start, exclude_self, tile[0], sims, idx)
            elif search is not None:
                search(x, sqn, row_start, exclude_self, tile[0], sims, idx, feats, norms, int(offsets[owner]))
            else:
                _merge_block(x, sqn, feats, norms, int(offsets[owner]), row_start, exclude_self, tile, sims, idx,
                             merge)
        if pending is not None:
            for req in pending[0]:
                req.wait()
            blk = pending[1]
    return idx, sims


def _sharded_csr(idx: Tensor, sims: Tensor, metric: str, power: float, symmetrize: str,
                 normalize: Optional[str], offsets: Tensor, group) -> Tuple[Tensor, Tensor, Tensor]:
    """``(indptr, indices int32 global, values)`` of the local rows: the single-process recipe with
    the l2 scale all-reduced, transposed edges exchanged and column degrees fetched by a halo."""
    rank, _ = world(group)
    n, n_total, row_start = idx.shape[0], int(offsets[-1]), int(offsets[rank])
    scale = None
    if metric == "l2":
        part = torch.stack([(-sims[:, -1]).clamp(min=0).sum(), sims.new_tensor(float(n))])
        dist.all_reduce(part, group=group)
        scale = part[0] / part[1]
    rows, cols, vals = recipe.edge_list(idx, recipe.affinity(sims, metric, power, scale), row_start)
    if symmetrize != "none":
        rows_t, cols_t, vals_t = _transpose_edges(rows, cols, vals, offsets, group)
        rows, cols, vals = torch.cat([rows, rows_t]), torch.cat([cols, cols_t]), torch.cat([vals, vals_t])
    rows, cols, out = recipe.coalesce(rows - row_start, cols, vals, n_total, symmetrize)
    if normalize is not None:
        deg = recipe.degrees(rows, out, n)
        deg_cols = None
        if normalize == "sym":
            halo = Halo(cols, offsets, group)
            deg_cols = halo.gather(deg)[halo.local_ids(cols)]
        out = recipe.normalized(out, deg[rows], deg_cols, normalize)
    return recipe.row_pointers(rows, n), cols.to(torch.int32), out


def knn_graph(local_features, k: int = 10, *, group=None, metric: str = "cosine", power: float = 3.0,
              symmetrize: str = "sum", normalize: Optional[str] = "sym", exclude_self: bool = True,
              tile: Union[int, Tuple[int, int], None] = None) -> ShardedGraph:
    r"""This rank's rows of ``pysd.knn_graph(all_features, k, ...)``, with the features sharded by rows.

    Search: a ring over the P ranks.  At step s each rank holds the feature block of rank
    ``rank - s`` (its own at s = 0), merges the similarities of its rows to that block into its
    top-k lists (same tie rule as the single-process op: higher similarity, then lower global
    index), and passes the block on to ``rank + 1`` while receiving the next from ``rank - 1`` (the
    transfer overlaps the search).  Each rank sees every block once and holds at most its own block
    and two others (the one in use, the one arriving).  On the CPU with the compiled backend the
    similarities come from the fused kernel of :func:`pysd.knn_graph` (its own block as a
    self-join, each pair once; the others row by row), elsewhere from GEMM tiles of ``tile``.

    Graph: the same recipe as :func:`pysd.knn_graph`.  For l2 the kernel width (mean squared distance
    to the k-th neighbour) is all-reduced.  Symmetrisation sends each edge ``i -> j`` to the owner of
    row j as ``j -> i`` (an all-gather of counts, then point-to-point); normalisation fetches the
    degrees of the referenced columns from their owners (a halo exchange).

    Args:
        local_features: ``(n, d)`` this rank's rows (global ids ``row_start + [0, n)`` with
            ``row_start`` the rows of the lower ranks); n may be 0.  torch / numpy / DLPack; float64
            stays float64, anything else runs in float32.  All ranks must agree on d and the dtype.
        k, metric, power, symmetrize, normalize, exclude_self, tile: as :func:`pysd.knn_graph`
            (``method="exact"`` only); ``1 <= k <= N - 1`` (``N`` with ``exclude_self=False``).
        group: the process group (default: the world).

    Returns:
        :class:`ShardedGraph` on the features' device (values in the compute dtype).

    Memory per rank: the lists ``(n, k)``, two incoming feature blocks, one packed copy of a block
    (fused CPU search) or one tile, and the CSR build on ``O(n k)`` edges plus the transposed edges
    it receives.
    """
    error, x, sqn, d, dt = None, None, None, None, None
    try:
        x, sqn, tile, power = _local_features(local_features, k, metric, power, symmetrize, normalize,
                                              exclude_self, tile)
        d, dt = x.shape[1], str(x.dtype)
    except Exception as e:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = message(OP, e)
    config = (k, d, dt, metric, power, symmetrize, normalize, exclude_self)
    sizes = agree(OP, group, config, error, None if x is None else x.shape[0])
    rank, p = world(group)
    offsets = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
    n_total = int(offsets[-1])
    k = single.check_k(k, n_total, exclude_self, where=f" over {p} ranks")
    idx, sims = _ring_search(x, sqn, k, sizes, offsets, exclude_self, tile, group)
    indptr, indices, values = _sharded_csr(idx, sims, metric, power, symmetrize, normalize, offsets, group)
    return ShardedGraph(indptr=indptr, indices=indices, values=values, row_start=int(offsets[rank]),
                        num_nodes=n_total, knn_indices=idx, knn_similarities=sims, _validated=True)


def _transpose_edges(rows: Tensor, cols: Tensor, vals: Tensor, offsets: Tensor, group):
    """The edges ``cols -> rows`` this rank owns, gathered from every rank's edges ``rows -> cols``."""
    rank, p = world(group)
    owner = owners(cols, offsets)
    order = torch.argsort(owner, stable=True)
    pairs = torch.stack([cols[order], rows[order]])
    vals = vals[order]
    counts = count_matrix(group, torch.bincount(owner, minlength=p).to(torch.int64))
    send_counts, recv_counts = counts[rank].tolist(), counts[:, rank].tolist()
    pair_parts = list(torch.split(pairs, send_counts, dim=1))
    val_parts = list(torch.split(vals, send_counts))
    own_pairs, own_vals = pair_parts[rank], val_parts[rank]
    pair_parts[rank] = val_parts[rank] = None
    recv_pairs = [pairs.new_empty((2, c)) for c in recv_counts]
    recv_vals = [vals.new_empty(c) for c in recv_counts]
    recv_pairs[rank] = recv_vals[rank] = None
    exchange(group, [t.contiguous() if t is not None else None for t in pair_parts], recv_pairs, tag=1)
    exchange(group, val_parts, recv_vals, tag=2)
    recv_pairs[rank], recv_vals[rank] = own_pairs, own_vals
    pairs = torch.cat(recv_pairs, 1)
    return pairs[0], pairs[1], torch.cat(recv_vals)
