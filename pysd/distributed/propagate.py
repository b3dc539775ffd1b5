"""``pysd.distributed.propagate``: label propagation over a row-sharded graph (halo exchange).

Validation, seeds and the finishing of the results are the hooks of :mod:`pysd.ops.propagate` with
all-reduces as their ``reduce`` callables.  The solve: on CPU tensors with the C++ backend, the
extension's solver steps driven from Python (:func:`pysd._cpp.propagate.stepped`), a halo exchange
and the all-reduces of the per-column scalars between them; otherwise (CUDA tensors, the numba or
torch backend) the solvers of :mod:`pysd._ref.propagate` with a sharded operator.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _backend, _checks
from .._codes import Solver
from .._cpp import propagate as steps
from .._ref import propagate as solvers
from ..ops import propagate as single
from ..ops.propagate import Propagation
from ._comm import Halo, agree, message
from .knn_graph import ShardedGraph

OP = "propagate"


class _ShardOperator:
    """``S @ Z`` for row-sharded ``Z``: a halo gather of the referenced remote rows, then the local
    ``(num_rows, n_extended)`` sparse product."""

    def __init__(self, graph: ShardedGraph, halo: Halo):
        self.halo = halo
        self.n = graph.num_rows
        width = halo.n_before + halo.n_local + halo.n_after
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.matrix = torch.sparse_csr_tensor(graph.indptr, halo.local_ids(graph.indices).to(torch.int64),
                                                  graph.values, (self.n, width), check_invariants=False)

    def __matmul__(self, z: Tensor) -> Tensor:
        ext = self.halo.gather(z)
        # the gather is collective: a rank without rows still serves its part of it
        return self.matrix @ ext if self.n else z.new_zeros(z.shape)


def _solve(g: ShardedGraph, halo: Halo, y: Tensor, given: Tensor, o: dict, reduce):
    """``(z, scores, oos, labels, confidence, weight, margin, residual, iterations, flips)`` of the local
    rows; ``y`` is overwritten.  The extension's steps when the C++ backend serves these tensors (as
    :func:`pysd.propagate` picks it, ``PYSD_BACKEND`` included), else the reference solvers."""
    if _backend.select(OP, y.device.type)[0] == "cpp":
        return steps.stepped(_backend.extension("_C"), g.indptr.contiguous(), halo.local_ids(g.indices).contiguous(),
                             g.values.contiguous(), y, given, alpha=o["alpha"], solver=o["solver"],
                             max_iter=o["max_iter"], tol=o["tol"], halo=(halo.n_before, halo.n_after),
                             fill=halo.fill, reduce=reduce)
    S = _ShardOperator(g, halo)
    if o["solver"] == Solver.CG:
        z, residual, it = solvers.cg(S, y, o["alpha"], o["max_iter"], o["tol"], reduce=reduce)
        flips = -1
    else:
        z, residual, it, flips = solvers.iterate(S, y, o["alpha"], o["max_iter"], o["tol"], reduce=reduce)
    return (z, *solvers.postprocess(S, z, given), residual, it, flips)


def _local_inputs(local_graph, local_labels, mask, weights, num_classes):
    """The single-process checks on this rank's rows: ``(lab, kind, soft, summary, w)``."""
    if not isinstance(local_graph, ShardedGraph):
        raise TypeError(f"{OP}: local_graph must be a pysd.distributed.ShardedGraph, "
                        f"got {type(local_graph).__name__}")
    local_graph.validate(f"{OP}: local_graph")
    n, dev, dtype = local_graph.num_rows, local_graph.device, local_graph.dtype
    lab, kind = _checks.array(OP, "labels", local_labels)
    lab, soft = single.check_labels(lab, n, dev)
    m, w = single.check_mask(mask, n, dev), single.check_weights(weights, n, dev, dtype)
    s = single.summarize(lab, soft, m, w)
    single.check_values(s, soft, rows="local row")
    if not soft:  # a rank holding a huge label fails here, before the ranks agree
        given = num_classes is not None
        c = _checks.integer(OP, "num_classes", num_classes, 1) if given else s["top"] + 1
        single.check_class_buffers(n, c, given, dtype, dev)
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

    What crosses the group, with ``h`` the remote rows this rank's columns reference (its halo), ``s``
    the local rows its peers reference and C the classes:

    * per ``"cg"`` iteration: one halo exchange of the search direction (``h * C`` values of the dtype
      received, ``s * C`` sent; nothing on one rank) and **two all-reduces** of ``C`` float64
      (``16 * C`` bytes): ``p . Ap`` for the step, then ``r . r`` for the direction and the stopping
      test.  Each needs the pass the other feeds, so exact CG cannot fuse them.
    * per ``"iterate"`` step: one halo exchange of Z and **one all-reduce** of ``C`` float64 (the
      squared changes).
    * once per call: the agreement on options and shards (an all-gather of small objects), the halo
      plan (an all-gather of P int64 counts and one round of row requests), the all-reduces of the seed
      class masses (C), of the initial column norms (C float64), of the flip count (iterate, 1 int64),
      of the global weight maximum (1) and class counts (C), and one halo exchange of Z for
      ``oos_scores``.

    A group of one rank skips the all-reduces (they are the identity) and exchanges no halo.  On CPU
    tensors with the C++ backend each step between the collectives is one call of the extension's solver
    kernels (:func:`pysd._cpp.propagate.stepped`), so on one rank the results equal :func:`pysd.propagate`
    bit for bit, at about its time; CUDA tensors and the numba / torch backends run the reference solvers
    with the same collectives.

    Memory per rank: the single-process buffers for the n local rows, with room for the halo rows
    (``h * C``) in the buffers that are exchanged (cg: x and p; iterate: both iterates).
    """
    error, lab, kind, soft, s, w, extra = None, None, None, None, None, None, None
    try:
        lab, kind, soft, s, w = _local_inputs(local_graph, local_labels, mask, weights, num_classes)
        extra = (s["top"], local_graph.row_start, local_graph.num_rows, s["any_seed"])
    except Exception as e:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = message(OP, e)
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

    alone = len(info) == 1  # a group of one rank: every reduction is the identity (gloo costs ~0.2 ms a call)

    def reduce(t: Tensor, how=dist.ReduceOp.SUM) -> Tensor:
        if not alone:
            dist.all_reduce(t, op=how, group=group)
        return t

    g = local_graph
    seed = s["seed"] & ~single.isolated(g.indptr, g.values)
    y = single.seed_matrix(lab, soft, c, seed, w, class_mass_norm, g.dtype, reduce=reduce)
    given = single.given_labels(lab, soft).contiguous()
    *out, it, flips = _solve(g, Halo(g.indices, offsets, group), y, given, o, reduce)
    res = single.finish(out, given, c, reduce=reduce, reduce_max=lambda t: reduce(t, dist.ReduceOp.MAX),
                        row_start=g.row_start)
    return Propagation(iterations=it, flips=flips, **{k: _checks.restore(v, kind) for k, v in res.items()})
