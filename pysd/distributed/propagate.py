"""``pysd.distributed.propagate``: label propagation over a row-sharded graph (halo exchange).

Validation, seeds and the finishing of the results are the hooks of :mod:`pysd.ops.propagate` with
all-reduces as their ``reduce`` callables; the solvers are those of :mod:`pysd._ref.propagate` with a
sharded operator.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from .._codes import Solver
from .._ref import propagate as solvers
from ..ops import propagate as single
from ..ops.propagate import Propagation
from ._comm import Halo, agree
from .knn_graph import ShardedGraph

OP = "propagate"


class _ShardOperator:
    """``S @ Z`` for row-sharded ``Z``: a halo gather of the referenced remote rows, then the local
    ``(num_rows, n_extended)`` sparse product."""

    def __init__(self, graph: ShardedGraph, offsets: Tensor, group):
        cols = graph.indices.to(torch.int64)
        self.halo = Halo(cols, offsets, group)
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


def _local_inputs(local_graph, local_labels, mask, weights):
    """The single-process checks on this rank's rows: ``(lab, kind, soft, summary, w)``."""
    if not isinstance(local_graph, ShardedGraph):
        raise TypeError(f"{OP}: local_graph must be a pysd.distributed.ShardedGraph, "
                        f"got {type(local_graph).__name__}")
    n, dev, dtype = local_graph.num_rows, local_graph.device, local_graph.dtype
    lab, kind = _checks.array(OP, "labels", local_labels)
    lab, soft = single.check_labels(lab, n, dev)
    m, w = single.check_mask(mask, n, dev), single.check_weights(weights, n, dev, dtype)
    s = single.summarize(lab, soft, m, w)
    single.check_values(s, soft, rows="local row")
    return lab, kind, soft, s, w


def _check_shards(local_graph: ShardedGraph, info) -> torch.Tensor:
    """``(P + 1,)`` row offsets of the shards; ValueError unless they are contiguous in rank order."""
    starts, sizes = [e[1] for e in info], [e[2] for e in info]
    offsets = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
    if starts != offsets[:-1].tolist() or int(offsets[-1]) != local_graph.num_nodes:
        raise ValueError(f"pysd.distributed.{OP}: the shards must be contiguous in rank order and cover "
                         f"num_nodes={local_graph.num_nodes}; got row_start {starts} with rows {sizes}")
    return offsets


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
    error, lab, kind, soft, s, w, extra = None, None, None, None, None, None, None
    try:
        lab, kind, soft, s, w = _local_inputs(local_graph, local_labels, mask, weights)
        extra = (s["top"], local_graph.row_start, local_graph.num_rows, s["any_seed"])
    except (TypeError, ValueError) as e:
        error = str(e)
    config = (solver, alpha, max_iter, tol, class_mass_norm, num_classes,
              None if lab is None else (soft, lab.shape[1] if soft else None),
              None if error else str(local_graph.dtype), None if error else local_graph.num_nodes)
    info = agree(OP, group, config, error, extra)
    offsets = _check_shards(local_graph, info)
    # the options are identical on every rank (checked above), so these raise on all ranks together
    c = single.num_classes_of(max(e[0] for e in info), lab.shape[1] if soft else None, num_classes)
    o = single.check_options(alpha, solver, max_iter, tol, class_mass_norm)
    if not any(e[3] for e in info):
        raise ValueError(f"pysd.distributed.{OP}: no seed rows on any rank (mask and labels select none)")

    def reduce(t: Tensor, how=dist.ReduceOp.SUM) -> Tensor:
        dist.all_reduce(t, op=how, group=group)
        return t

    g = local_graph
    seed = s["seed"] & ~single.isolated(g.indptr, g.values)
    y = single.seed_matrix(lab, soft, c, seed, w, class_mass_norm, g.dtype, reduce=reduce)
    given = single.given_labels(lab, soft)
    S = _ShardOperator(g, offsets, group)
    if o["solver"] == Solver.CG:
        z, residual, it = solvers.cg(S, y, o["alpha"], o["max_iter"], o["tol"], reduce=reduce)
        flips = -1
    else:
        z, residual, it, flips = solvers.iterate(S, y, o["alpha"], o["max_iter"], o["tol"], reduce=reduce)
    out = (z, *solvers.postprocess(S, z, given), residual)
    res = single.finish(out, given, c, reduce=reduce, reduce_max=lambda t: reduce(t, dist.ReduceOp.MAX),
                        row_start=g.row_start)
    return Propagation(iterations=it, flips=flips, **{k: _checks.restore(v, kind) for k, v in res.items()})
