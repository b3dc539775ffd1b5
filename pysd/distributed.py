"""``pysd.distributed``: the loss normalizer, the kNN graph and label propagation over row shards of a
``torch.distributed`` process group (gloo on CPU, NCCL on GPU).

Every rank holds a contiguous block of the N rows, ranks in order (rank 0 the first rows); block sizes
may differ and may be zero.  Results equal the single-process ops on the concatenated rows (the graph
exactly up to GEMM rounding, propagation to the dtype's tolerance), returned for the rank's own rows.
Every function is collective: all ranks of ``group`` must call it with the same options.  Options and
input errors are checked together at the start, so a mistake on one rank raises ``ValueError`` on every
rank instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from . import _backend, _interop
from ._ref import propagate as _lp
from ._ref.knn_graph import select_topk
from .ops import knn_graph as _kg
from .ops import propagate as _pg
from .graph import _check_csr
from .ops.propagate import Propagation

__all__ = ["global_normalizer", "knn_graph", "propagate", "ShardedGraph"]


# --------------------------------------------------------------------------- process group helpers


def _world(group) -> Tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def _peer(group, rank: int) -> int:
    """Global rank of ``rank`` in ``group`` (point-to-point calls take global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def _message(op: str, exc: Exception) -> str:
    """The text a rank shares about its failed local checks (other error types keep their name)."""
    if isinstance(exc, (TypeError, ValueError)):
        return str(exc)
    return f"{op}: {type(exc).__name__}: {exc}"


def _flag_device(group) -> torch.device:
    """Where a small collective tensor of ``group`` lives (NCCL reduces only CUDA tensors)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree_flag(op: str, group, error: Optional[str]) -> None:
    """One small all-reduce of an error flag (the lowest failing rank); on failure every rank raises
    ValueError with that rank's message (gathered only then).  Reading the flag back is a host sync on an
    NCCL group."""
    rank, p = _world(group)
    flag = torch.tensor([rank if error is not None else p], dtype=torch.int64, device=_flag_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    first = int(flag)
    if first < p:
        messages: List = [None] * p
        dist.all_gather_object(messages, error, group=group)
        raise ValueError(f"pysd.distributed.{op}: rank {first}: {messages[first]}")


def _agree(op: str, group, config: tuple, error: Optional[str], extra=None) -> list:
    """All-gathers ``(config, error, extra)``; raises ValueError on every rank if any rank failed its
    local checks or the configurations differ.  Returns every rank's ``extra``."""
    items: List = [None] * dist.get_world_size(group)
    dist.all_gather_object(items, (config, error, extra), group=group)
    for r, (_, err, _) in enumerate(items):
        if err is not None:
            raise ValueError(f"pysd.distributed.{op}: rank {r}: {err}")
    for r, (cfg, _, _) in enumerate(items):
        if cfg != items[0][0]:
            raise ValueError(f"pysd.distributed.{op}: configuration differs across ranks: rank 0 has {items[0][0]}, "
                             f"rank {r} has {cfg}")
    return [e for _, _, e in items]


def _exchange(group, sends: Sequence[Optional[Tensor]], recvs: Sequence[Optional[Tensor]], tag: int = 0) -> None:
    """Point-to-point exchange: ``sends[r]`` goes to rank r and ``recvs[r]`` is filled from it (None or
    empty: nothing; both sides derive the same sizes, so empty messages are never posted)."""
    ops = [dist.P2POp(dist.isend, t, _peer(group, r), group=group, tag=tag)
           for r, t in enumerate(sends) if t is not None and t.numel()]
    ops += [dist.P2POp(dist.irecv, t, _peer(group, r), group=group, tag=tag)
            for r, t in enumerate(recvs) if t is not None and t.numel()]
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()


def _count_matrix(group, counts: Tensor) -> Tensor:
    """``(P, P)`` int64 on the CPU: entry ``[s, d]`` is rank s's ``counts[d]``."""
    _, p = _world(group)
    out = [torch.empty_like(counts) for _ in range(p)]
    dist.all_gather(out, counts, group=group)
    return torch.stack(out).cpu()


def _owners(cols: Tensor, offsets: Tensor) -> Tensor:
    """Rank owning each global row id in ``cols`` (``offsets``: ``(P + 1,)`` block starts)."""
    return torch.searchsorted(offsets[1:].to(cols.device), cols, right=True)


# --------------------------------------------------------------------------- loss


def global_normalizer(target: Tensor, ignore_index: int = -100, weight: Optional[Tensor] = None,
                      group=None) -> Tensor:
    """0-d float64 tensor: the non-ignored rows of ``target`` (or the sum of their ``weight``) over
    every rank of ``group``, for ``pysd.kd_loss(..., reduction="mean", normalizer=...)``.

    The all-reduce runs on the tensor's device and the result is never read on the host, so a
    training step does not synchronise.  With it, the summed gradients of the ranks equal the gradient
    of the single-process mean over the union of the batches, whatever each rank ignores.
    ``DistributedDataParallel`` *averages* gradients over the P ranks: pass
    ``global_normalizer(...) / dist.get_world_size()`` there.

    Args:
        target: ``(...)`` integer class indices or ``ignore_index`` (the ``target`` of ``kd_loss``).
        weight: ``(...)`` per-row weights or None (count rows).

    Every rank checks its arguments and the ranks agree on the outcome with one small all-reduce before
    the sum moves: a bad input on any rank raises ``ValueError`` on every rank.  On an NCCL group that
    flag is read back (one host sync); the sum itself never is.
    """
    op = "global_normalizer"
    error = None
    try:
        if not isinstance(target, Tensor) or not _integer(target):
            raise TypeError(f"{op}: target must be an integer tensor of class indices, got "
                            f"{target.dtype if isinstance(target, Tensor) else type(target).__name__}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"{op}: ignore_index must be an int, got {type(ignore_index).__name__}")
        if weight is not None:
            if not isinstance(weight, Tensor) or not weight.is_floating_point():
                raise TypeError(f"{op}: weight must be a floating-point tensor or None")
            if weight.numel() != target.numel():
                raise ValueError(f"{op}: weight has {weight.numel()} elements, target {target.numel()}")
            if weight.device != target.device:
                raise ValueError(f"{op}: weight is on {weight.device}, target on {target.device}")
    except Exception as exc:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = _message(op, exc)
    _agree_flag(op, group, error)
    valid = target.reshape(-1) != ignore_index
    if weight is None:
        total = valid.sum().to(torch.float64)
    else:
        total = (weight.detach().reshape(-1).to(torch.float64) * valid).sum()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


def _integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


# --------------------------------------------------------------------------- sharded graph


@dataclass(frozen=True)
class ShardedGraph:
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

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to_scipy(self):
        """``scipy.sparse.csr_matrix`` of shape ``(num_rows, num_nodes)`` (on the CPU)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()),
                             shape=(self.num_rows, self.num_nodes))

    @classmethod
    def from_graph(cls, graph, row_start: int, row_end: int) -> "ShardedGraph":
        """Rows ``[row_start, row_end)`` of a whole graph (``pysd.Graph``, scipy or torch sparse)."""
        g = _pg.Graph.coerce(graph)
        for name, v in (("row_start", row_start), ("row_end", row_end)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"ShardedGraph.from_graph: {name} must be an int, got {type(v).__name__}")
        if not 0 <= row_start <= row_end <= g.num_nodes:
            raise ValueError(f"ShardedGraph.from_graph: need 0 <= row_start <= row_end <= num_nodes={g.num_nodes}, "
                             f"got row_start={row_start}, row_end={row_end}")
        lo, hi = int(g.indptr[row_start]), int(g.indptr[row_end])
        return cls(indptr=g.indptr[row_start:row_end + 1] - lo, indices=g.indices[lo:hi], values=g.values[lo:hi],
                   row_start=int(row_start), num_nodes=g.num_nodes, _validated=True)


class _Halo:
    """Exchange plan for the rows of a row-sharded array that the global ids ``cols`` reference.

    Built once (one all-gather of counts, one point-to-point round of requests); each
    :meth:`gather` then moves only the referenced remote rows.  The extended array is
    ``[remote rows before row_start; local rows; remote rows after]``, so the column map
    :meth:`local_ids` preserves the order of the sorted global ids.
    """

    def __init__(self, cols: Tensor, offsets: Tensor, group):
        self.group = group
        rank, p = _world(group)
        self.rank, self.p = rank, p
        starts = offsets.tolist()
        self.row_start, self.n_local = starts[rank], starts[rank + 1] - starts[rank]
        need = torch.unique(cols)
        own = _owners(need, offsets)
        self.remote = need[own != rank]
        remote_owner = own[own != rank]
        self.n_before = int((remote_owner < rank).sum())
        recv_counts = torch.bincount(remote_owner, minlength=p).to(torch.int64)
        counts = _count_matrix(group, recv_counts.to(cols.device))
        self.recv_counts = counts[rank].tolist()
        self.send_counts = counts[:, rank].tolist()
        requests = list(torch.split(self.remote - offsets[remote_owner.cpu()].to(cols.device), self.recv_counts))
        self.send_rows = [torch.empty(c, dtype=torch.int64, device=cols.device) for c in self.send_counts]
        _exchange(group, requests, self.send_rows)

    def local_ids(self, cols: Tensor) -> Tensor:
        """Positions of the global ids ``cols`` (each local or in the plan) in the extended array."""
        local = (cols >= self.row_start) & (cols < self.row_start + self.n_local)
        pos = torch.searchsorted(self.remote, cols)
        return torch.where(local, cols - self.row_start + self.n_before,
                           torch.where(pos < self.n_before, pos, pos + self.n_local))

    def gather(self, local: Tensor) -> Tensor:
        """``(n_before + num_rows + n_after, ...)``: ``local`` with the referenced remote rows around it."""
        sends = [local[rows] if rows.numel() else None for rows in self.send_rows]
        recvs = [local.new_empty((c,) + tuple(local.shape[1:])) for c in self.recv_counts]
        _exchange(self.group, sends, recvs)
        return torch.cat(recvs[:self.rank] + [local] + recvs[self.rank + 1:])

    def bytes_per_gather(self, row_bytes: int) -> int:
        """Bytes this rank receives per :meth:`gather` of rows of ``row_bytes`` bytes."""
        return int(self.remote.numel()) * row_bytes


# --------------------------------------------------------------------------- kNN graph


def _merge_kernel(device: torch.device):
    """The compiled ``knn_merge`` of the backend that serves ``knn_graph`` here, or None (numba / torch
    backends: their top-k is a whole self-join, so the sharded search merges in torch instead)."""
    name = _backend.select("knn_graph", device.type)[0]
    module = {"cpp": "_C", "cuda": "_C_cuda"}.get(name)
    return None if module is None else _backend.extension(module)


def _merge_block(x: Tensor, sqn: Optional[Tensor], blk: Tensor, blk_sqn: Optional[Tensor], col0: int,
                 row_start: int, exclude_self: bool, tile: Tuple[int, int], sims: Tensor, idx: Tensor,
                 kernel) -> None:
    """Merges the similarities of the local rows ``x`` to the rows ``blk`` (global ids from ``col0``)
    into the ``(n, k)`` lists, tile by tile: higher similarity first, then the lower global id."""
    n, m, k = x.shape[0], blk.shape[0], sims.shape[1]
    stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
    buf = x.new_empty(min(n, tile[0]) * min(m, tile[1]))
    for i0 in range(0, n, tile[0]):
        i1 = min(n, i0 + tile[0])
        for j0 in range(0, m, tile[1]):
            j1 = min(m, j0 + tile[1])
            t = buf[:(i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
            torch.mm(x[i0:i1], blk[j0:j1].t(), out=t)
            # l2 and self-exclusion are applied to the tile here: the kernel would index the norms
            # and test i == j with one id space, and local rows / global columns are two
            if sqn is not None:
                t.mul_(2.0).sub_(sqn[i0:i1, None]).sub_(blk_sqn[None, j0:j1])
            if exclude_self:
                rows = torch.arange(i1 - i0, device=x.device)
                cols = rows + (row_start + i0 - col0 - j0)
                hit = (cols >= 0) & (cols < j1 - j0)
                t[rows[hit], cols[hit]] = -torch.inf
            if kernel is not None:
                # rows i0..i1 of the lists as rows 0..i1-i0 of the kernel, columns with their global ids
                kernel.knn_merge(_kg._DTYPE_NAMES[x.dtype], t.data_ptr(), t.stride(0), 0, i1 - i0, col0 + j0,
                                 col0 + j1, col0 + j1, 0, False, sims[i0:i1].data_ptr(), idx[i0:i1].data_ptr(),
                                 k, stream)
                continue
            # The block's own best (ties to its lower ids), then a merge of two k-lists ordered by
            # global id and stably by similarity, so ties across blocks go to the lower global id.
            c, v = select_topk(t, min(k, j1 - j0))
            cand_i = torch.cat([idx[i0:i1], (c + (col0 + j0)).to(torch.int32)], 1)
            cand_s = torch.cat([sims[i0:i1], v], 1)
            order = torch.argsort(cand_i, dim=1, stable=True)
            cand_i, cand_s = cand_i.gather(1, order), cand_s.gather(1, order)
            order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]
            idx[i0:i1], sims[i0:i1] = cand_i.gather(1, order), cand_s.gather(1, order)


def _local_features(local_features, k, metric, power, symmetrize, normalize, exclude_self, tile):
    x = _kg._as_tensor(local_features)
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise TypeError(f"knn_graph: features must hold real numbers, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"knn_graph: local features must be 2-D (n, d) with d >= 1, got shape {tuple(x.shape)}")
    _kg._choice("metric", metric, _kg._METRICS)
    _kg._choice("symmetrize", symmetrize, _kg._SYMMETRIZE)
    _kg._choice("normalize", normalize, _kg._NORMALIZE)
    if not isinstance(exclude_self, bool):
        raise TypeError(f"knn_graph: exclude_self must be a bool, got {type(exclude_self).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"knn_graph: k must be an int >= 1, got {k!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power < 0:
        raise ValueError(f"knn_graph: power must be a finite number >= 0, got {power!r}")
    tile = _kg._tile(tile, x.device.type)
    x, sqn = _kg.prepare_features(x, metric, rows="local rows")
    return x, sqn, tile


def knn_graph(local_features, k: int = 10, *, group=None, metric: str = "cosine", power: float = 3.0,
              symmetrize: str = "sum", normalize: Optional[str] = "sym", exclude_self: bool = True,
              tile: Union[int, Tuple[int, int], None] = None) -> ShardedGraph:
    r"""This rank's rows of ``pysd.knn_graph(all_features, k, ...)``, with the features sharded by rows.

    Search: a ring over the P ranks.  At step s each rank holds the feature block of rank
    ``rank - s`` (its own at s = 0), merges the similarities of its rows to that block into its
    top-k lists (tiles of ``tile``, same tie rule as the single-process op: higher similarity, then
    lower global index), and passes the block on to ``rank + 1`` while receiving the next from
    ``rank - 1`` (the transfer overlaps the GEMM).  Each rank sees every block once and holds at most
    its own block and two others (the one in use, the one arriving).

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

    Memory per rank: the lists ``(n, k)``, two incoming feature blocks, one tile, and the CSR build
    on ``O(n k)`` edges plus the transposed edges it receives.
    """
    op = "knn_graph"
    error, x, d, dt = None, None, None, None
    try:
        x, sqn, tile = _local_features(local_features, k, metric, power, symmetrize, normalize, exclude_self, tile)
        d, dt = x.shape[1], str(x.dtype)
    except Exception as e:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = _message("knn_graph", e)
    config = (k, d, dt, metric, power, symmetrize, normalize, exclude_self)
    sizes = _agree(op, group, config, error, None if x is None else x.shape[0])
    rank, p = _world(group)
    offsets = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
    n_total, n, row_start = int(offsets[-1]), x.shape[0], int(offsets[rank])
    k = int(k)
    limit = n_total - 1 if exclude_self else n_total
    if k > limit or n_total >= _kg._NO_INDEX:
        raise ValueError(f"pysd.distributed.{op}: k must be in [1, {limit}] for N = {n_total} rows over "
                         f"{p} ranks, got k={k}")

    dev = x.device
    sims = torch.full((n, k), -torch.inf, dtype=x.dtype, device=dev)
    idx = torch.full((n, k), _kg._NO_INDEX, dtype=torch.int32, device=dev)
    kernel = _merge_kernel(dev)
    # l2 travels with its squared norms in one message so that both are the owner's exact values
    own = x if sqn is None else torch.cat([x, sqn.unsqueeze(1)], 1)
    blk = own
    for step in range(p):
        owner = (rank - step) % p
        pending = None
        if step < p - 1:
            nxt = (rank - step - 1) % p
            incoming = own.new_empty((sizes[nxt], own.shape[1]))
            ops = [dist.P2POp(dist.isend, blk, _peer(group, (rank + 1) % p), group=group)] if blk.numel() else []
            if incoming.numel():
                ops.append(dist.P2POp(dist.irecv, incoming, _peer(group, (rank - 1) % p), group=group))
            pending = (dist.batch_isend_irecv(ops) if ops else [], incoming)
        if n and blk.shape[0]:
            feats, norms = (blk, None) if sqn is None else (blk[:, :d], blk[:, d])
            _merge_block(x, sqn, feats, norms, int(offsets[owner]), row_start, exclude_self, tile, sims, idx,
                         kernel)
        if pending is not None:
            for req in pending[0]:
                req.wait()
            blk = pending[1]

    scale = None
    if metric == "l2":
        part = torch.stack([(-sims[:, -1]).clamp(min=0).sum(), sims.new_tensor(float(n))])
        dist.all_reduce(part, group=group)
        scale = part[0] / part[1]
    weights = _kg._affinity(sims, metric, float(power), scale)
    rows, cols, vals = _kg.edge_list(idx, weights, row_start)
    if symmetrize != "none":
        rows_t, cols_t, vals_t = _transpose_edges(rows, cols, vals, offsets, group)
        rows, cols, vals = torch.cat([rows, rows_t]), torch.cat([cols, cols_t]), torch.cat([vals, vals_t])
    rows, cols, out = _kg.coalesce(rows - row_start, cols, vals, n_total, symmetrize)
    if normalize is not None:
        deg = _kg.degrees(rows, out, n)
        if normalize == "sym":
            halo = _Halo(cols, offsets, group)
            deg_cols = halo.gather(deg)[halo.local_ids(cols)]
        else:
            deg_cols = None
        out = _kg.normalized(out, deg[rows], deg_cols, normalize)
    return ShardedGraph(indptr=_kg.row_pointers(rows, n), indices=cols.to(torch.int32), values=out,
                        row_start=row_start, num_nodes=n_total, knn_indices=idx,
                        knn_similarities=sims, _validated=True)


def _transpose_edges(rows: Tensor, cols: Tensor, vals: Tensor, offsets: Tensor, group):
    """The edges ``cols -> rows`` this rank owns, gathered from every rank's edges ``rows -> cols``."""
    rank, p = _world(group)
    owner = _owners(cols, offsets)
    order = torch.argsort(owner, stable=True)
    pairs = torch.stack([cols[order], rows[order]])
    vals = vals[order]
    counts = _count_matrix(group, torch.bincount(owner, minlength=p).to(torch.int64))
    send_counts, recv_counts = counts[rank].tolist(), counts[:, rank].tolist()
    pair_parts = list(torch.split(pairs, send_counts, dim=1))
    val_parts = list(torch.split(vals, send_counts))
    own_pairs, own_vals = pair_parts[rank], val_parts[rank]
    pair_parts[rank] = val_parts[rank] = None
    recv_pairs = [pairs.new_empty((2, c)) for c in recv_counts]
    recv_vals = [vals.new_empty(c) for c in recv_counts]
    recv_pairs[rank] = recv_vals[rank] = None
    _exchange(group, [t.contiguous() if t is not None else None for t in pair_parts], recv_pairs, tag=1)
    _exchange(group, val_parts, recv_vals, tag=2)
    recv_pairs[rank], recv_vals[rank] = own_pairs, own_vals
    pairs = torch.cat(recv_pairs, 1)
    return pairs[0], pairs[1], torch.cat(recv_vals)


# --------------------------------------------------------------------------- propagation


class _ShardOperator:
    """``S @ Z`` for row-sharded ``Z``: a halo gather of the referenced remote rows, then the local
    ``(num_rows, n_extended)`` sparse product."""

    def __init__(self, graph: ShardedGraph, offsets: Tensor, group):
        cols = graph.indices.to(torch.int64)
        self.halo = _Halo(cols, offsets, group)
        self.n = graph.num_rows
        width = self.halo.n_local + int(self.halo.remote.numel())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.matrix = torch.sparse_csr_tensor(graph.indptr, self.halo.local_ids(cols), graph.values,
                                                  (self.n, width), check_invariants=False)

    def __matmul__(self, z: Tensor) -> Tensor:
        ext = self.halo.gather(z)
        # the gather is collective: a rank without rows still serves its part of it
        return self.matrix @ ext if self.n else z.new_zeros(z.shape)


def propagate(local_graph: ShardedGraph, local_labels, *, group=None, num_classes: Optional[int] = None,
              mask=None, weights=None, alpha: float = 0.99, solver: str = "cg", max_iter: int = 20,
              tol: float = 1e-6, class_mass_norm: bool = True) -> Propagation:
    r"""This rank's rows of ``pysd.propagate(whole_graph, all_labels, ...)`` over a row-sharded graph.

    The halo (the remote rows the local columns reference) is derived once from the column ids;
    each iteration gathers only those score rows from their owners, never all of Z.  The per-column
    CG scalars, the change norms of ``"iterate"``, the class masses of the seeds, the flip count and
    the global maxima / class counts of the post-processing are all-reduced, so every rank runs the
    same iterations and stops at the same step as the single process (results agree to the dtype's
    rounding: sums are taken in another order).

    Args:
        local_graph: :class:`ShardedGraph` (e.g. from :func:`knn_graph`, or
            ``ShardedGraph.from_graph``), already normalised; rows of the ranks contiguous and in
            rank order.
        local_labels: ``(n,)`` integer classes (-1 unlabelled) or ``(n, C)`` soft seeds for the local
            rows; torch / numpy / DLPack (results come back as the same kind).
        mask, weights: ``(n,)`` local rows, as :func:`pysd.propagate`.
        num_classes, alpha, solver (``"cg"`` / ``"iterate"``), max_iter, tol, class_mass_norm: as
            :func:`pysd.propagate`, identical on every rank.
        group: the process group (default: the world).

    Returns:
        :class:`pysd.Propagation` for the local rows (``(n, C)`` / ``(n,)`` arrays).  ``class_weight``,
        ``residual``, ``iterations`` and ``flips`` are global; ``entropy_weight`` is divided by the
        global maximum; ``issues`` holds the *global* ids of the local suspicious rows, ordered by
        margin within the rank.

    Memory per rank: the single-process buffers for the n local rows, plus the halo rows
    ``(h, C)`` of one gather.
    """
    op = "propagate"
    error, extra, lab, kind = None, None, None, None
    try:
        if not isinstance(local_graph, ShardedGraph):
            raise TypeError(f"propagate: local_graph must be a pysd.distributed.ShardedGraph, "
                            f"got {type(local_graph).__name__}")
        local_graph.validate("propagate: local_graph")
        lab, kind = _interop.to_torch(local_labels, "propagate", "labels")
        if lab.dtype == torch.bool or lab.is_complex():
            raise TypeError(f"propagate: labels must be integer (n,) or float (n, C), got {lab.dtype}")
        soft = lab.is_floating_point()
        if lab.dim() != (2 if soft else 1) or lab.shape[0] != local_graph.num_rows:
            raise ValueError(f"propagate: local labels must be ({local_graph.num_rows},) integers or "
                             f"({local_graph.num_rows}, C) floats for the local rows, got {lab.dtype} "
                             f"{tuple(lab.shape)}")
        lab = lab.to(local_graph.device)
        if soft:
            if not bool(torch.isfinite(lab).all()) or bool((lab < 0).any()):
                raise ValueError("propagate: soft labels must be finite and non-negative")
            top = lab.shape[1] - 1
        else:
            lab = lab.to(torch.int64)
            if bool((lab < -1).any()):
                raise ValueError(f"propagate: labels must be class indices >= 0 or -1, found {int(lab[lab < -1][0])}")
            top = int(lab.max()) if lab.numel() else -1
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"propagate: num_classes must be an int >= 1, got {num_classes!r}")
        n, dev, dtype = local_graph.num_rows, local_graph.device, local_graph.dtype
        if not soft:  # a rank holding a huge label fails here, before the ranks agree
            _pg.check_class_buffers(n, num_classes if num_classes is not None else top + 1, num_classes is not None,
                                    dtype, dev)
        labelled = lab.sum(1) > 0 if soft else lab >= 0
        seed = labelled
        if mask is not None:
            m = _interop.to_torch(mask, "propagate", "mask")[0]
            if m.dtype != torch.bool or m.shape != (n,):
                raise ValueError(f"propagate: mask must be a bool array of shape ({n},), got {m.dtype} "
                                 f"{tuple(m.shape)}")
            seed = m.to(dev)
            if bool((seed & ~labelled).any()):
                raise ValueError(f"propagate: mask selects local row {int((seed & ~labelled).nonzero()[0])}, "
                                 "which has no label")
        w = torch.ones(n, dtype=dtype, device=dev)
        if weights is not None:
            w = _interop.to_torch(weights, "propagate", "weights")[0]
            if not w.is_floating_point() or w.shape != (n,):
                raise ValueError(f"propagate: weights must be floating point of shape ({n},), got {w.dtype} "
                                 f"{tuple(w.shape)}")
            w = w.to(device=dev, dtype=dtype)
            if not (bool(torch.isfinite(w).all()) and bool((w >= 0).all())):
                raise ValueError("propagate: weights must be finite and non-negative")
        extra = (top, local_graph.row_start, n)
    except Exception as e:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = _message("propagate", e)
    config = (solver, alpha, max_iter, tol, class_mass_norm, num_classes,
              None if lab is None else (lab.is_floating_point(), lab.shape[1] if lab.dim() == 2 else None),
              None if error else str(local_graph.dtype), None if error else local_graph.num_nodes)
    info = _agree(op, group, config, error, extra)
    rank, p = _world(group)
    starts = [e[1] for e in info]
    sizes = [e[2] for e in info]
    offsets = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
    if starts != offsets[:-1].tolist() or int(offsets[-1]) != local_graph.num_nodes:
        raise ValueError(f"pysd.distributed.{op}: the shards must be contiguous in rank order and cover "
                         f"num_nodes={local_graph.num_nodes}; got row_start {starts} with rows {sizes}")
    soft = lab.is_floating_point()
    top = max(e[0] for e in info)
    if soft:
        c = lab.shape[1]
    elif num_classes is None:
        if top < 0:
            raise ValueError(f"pysd.distributed.{op}: every label is -1; give num_classes and at least one seed")
        c = top + 1
    else:
        c = num_classes
        if top >= c:
            raise ValueError(f"pysd.distributed.{op}: labels contain class {top}, outside [0, num_classes={c})")

    # the options are identical on every rank (checked above), so these raise on all ranks together
    if not isinstance(solver, str) or solver not in _pg._SOLVERS:
        raise ValueError(f"propagate: solver must be one of {sorted(_pg._SOLVERS)}, got {solver!r}")
    alpha = _pg._number("alpha", alpha, 0.0, 1.0, open_lo=True, open_hi=True)
    tol = _pg._number("tol", tol, 0.0)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"propagate: max_iter must be an int >= 1, got {max_iter!r}")

    if not isinstance(class_mass_norm, bool):
        raise TypeError(f"propagate: class_mass_norm must be a bool, got {type(class_mass_norm).__name__}")
    g = local_graph
    given = torch.where(labelled, lab.argmax(1), -1) if soft else lab

    def reduce(t: Tensor, how=dist.ReduceOp.SUM) -> Tensor:
        dist.all_reduce(t, op=how, group=group)
        return t

    has_seed = reduce(seed.any().to(torch.int64).reshape(1))
    if not int(has_seed):
        raise ValueError(f"pysd.distributed.{op}: no seed rows on any rank (mask and labels select none)")
    seed = seed & ~_pg._isolated(g)
    y = _pg._seeds(lab, soft, c, seed, w, class_mass_norm, dtype, reduce=reduce)

    S = _ShardOperator(g, offsets, group)
    if solver == "cg":
        z, residual, it = _lp.cg(S, y, alpha, max_iter, tol, reduce=reduce)
        flips = -1
    else:
        z, residual, it, flips = _lp.iterate(S, y, alpha, max_iter, tol, reduce=reduce)
    scores, oos, plabels, conf, weight, margin = _lp.postprocess(S, z, given)

    wmax = reduce(weight.max().reshape(1) if n else weight.new_zeros(1), dist.ReduceOp.MAX)[0]
    entropy_weight = weight / torch.where(wmax > 0, wmax, 1.0)
    counts = reduce(torch.bincount(plabels[plabels >= 0], minlength=c).to(dtype))
    class_weight = torch.where(counts > 0, (counts.sum() / c) / torch.where(counts > 0, counts, 1.0), 0.0)
    cand = ((given >= 0) & (plabels >= 0) & (plabels != given)).nonzero().squeeze(1)
    issues = cand[torch.argsort(margin[cand], descending=True, stable=True)] + g.row_start
    out = dict(scores=scores, labels=plabels, confidence=conf, entropy_weight=entropy_weight,
               class_weight=class_weight, oos_scores=oos, issues=issues, residual=residual.to(dtype), raw_scores=z)
    return Propagation(iterations=it, flips=flips, **{k: _interop.restore(v, kind) for k, v in out.items()})
