"""``pysd.propagate``: label propagation over a normalised sparse graph (LP-DeepSSL / AML-KD recipe).

Kernels: ``pysd/_cpp/propagate.py`` (one extension call: solve + post-processing),
``pysd/_numba/propagate.py``, ``pysd/_ref/propagate.py``; the row math in ``csrc/include/pysd/propagate.h``.
The public helpers below (:func:`check_options`, :func:`check_labels`, :func:`check_mask`,
:func:`check_weights`, :func:`summarize`, :func:`check_values`, :func:`num_classes_of`, :func:`isolated`,
:func:`seed_matrix`, :func:`finish`) are the hooks :mod:`pysd.distributed.propagate` reuses; those that
combine values over rows take ``reduce`` callables (identity here, all-reduces over row shards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, _checks
from .._codes import Solver, options
from ..graph import Graph

OP = "propagate"
_backend.register(OP)


def _same(t: Tensor) -> Tensor:
    return t


# --------------------------------------------------------------------------- custom op


@torch.library.custom_op("pysd::propagate", mutates_args=("seeds",))
def _propagate_op(indptr: Tensor, indices: Tensor, values: Tensor, seeds: Tensor, given: Tensor, alpha: float,
                  solver: int, max_iter: int, tol: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                   Tensor, Tensor, Tensor]:
    """Validated CSR graph and ``(N, C)`` seeds (overwritten: the CG residual lives there) →
    raw Z, scores, oos scores, labels, confidence, raw entropy weight, margin, residual ``(C,)`` float64,
    and ``[iterations, flips]`` (int64, on the CPU)."""
    fn = _backend.select(OP, seeds.device.type)[1]
    *out, it, flips = fn(indptr, indices, values, seeds, given, alpha=alpha, solver=solver, max_iter=max_iter,
                         tol=tol)
    return (*out, torch.tensor([it, flips], dtype=torch.int64))


@_propagate_op.register_fake
def _(indptr, indices, values, seeds, given, alpha, solver, max_iter, tol):
    n, c = seeds.shape
    nc = [seeds.new_empty((n, c)) for _ in range(3)]
    rows = [seeds.new_empty(n, dtype=torch.int64)] + [seeds.new_empty(n) for _ in range(3)]
    return (*nc, *rows, seeds.new_empty(c, dtype=torch.float64), torch.empty(2, dtype=torch.int64))


# --------------------------------------------------------------------------- result


@dataclass
class Propagation:
    """Result of :func:`pysd.propagate`; arrays are of the kind (numpy / torch / DLPack) of ``labels``.

    With ``z+ = max(Z, 0)`` the clipped solution and ``p = z+ / sum_c z+`` its L1 rows:

    Attributes:
        scores: ``(N, C)`` ``p``: the L1-normalised rows of ``z+`` (LP-DeepSSL's ``probs_l1``,
            ``F.normalize(Z, p=1)`` with negatives clipped; the two agree whenever ``Z >= 0``, as it is
            for non-negative graphs and seeds up to the solver's rounding).  Zero rows stay 0.
        labels: ``(N,)`` int64 ``argmax_c z+`` (first maximum), or -1 where ``z+`` is all zero
            (isolated nodes, components without a seed).
        confidence: ``(N,)`` ``max_c p`` (0 for zero rows).
        entropy_weight: ``(N,)`` ``1 - H(p) / log C`` divided by its maximum over rows (LP-DeepSSL);
            1 for every non-zero row when C = 1, 0 for zero rows.
        class_weight: ``(C,)`` ``(M / C) / count_c`` with ``count_c`` the rows labelled ``c`` and ``M``
            the rows with a label (LP-DeepSSL's inverse class frequency); 0 for a class no row takes.
        oos_scores: ``(N, C)`` neighbours-only scores ``max(S @ z+, 0)`` with L1-normalised rows (a
            row's own seed is not in it): the ``pred_probs`` cleanlab needs.  Zero rows stay 0.
        issues: ``(K,)`` int64 rows whose given label (hard label, or the argmax of a soft seed row)
            differs from ``labels``, most suspicious first: by margin ``p[label] - p[given]``,
            descending, ties by row index.  Rows without a given or propagated label are never listed.
        iterations: solver iterations run (for cg the most of any column).
        residual: ``(C,)`` relative residual per column: cg ``||r_c|| / ||b_c||`` (scipy's recursive
            residual); iterate ``||Z_t - Z_{t-1}||_c / ||Y_c||`` (the residual of ``Z_{t-1}``).
            0 for a column without seeds.
        raw_scores: ``(N, C)`` the solver's Z before clipping (AML-KD takes a softmax of this).
        flips: rows whose argmax changed in the last iterate step (-1 for cg).
    """

    scores: Any
    labels: Any
    confidence: Any
    entropy_weight: Any
    class_weight: Any
    oos_scores: Any
    issues: Any
    iterations: int
    residual: Any
    raw_scores: Any
    flips: int


# --------------------------------------------------------------------------- validation hooks


def check_options(alpha, solver, max_iter, tol, class_mass_norm) -> dict:
    """The solver options, checked: ``alpha`` in (0, 1), ``solver`` code, ``max_iter >= 1``, ``tol >= 0``."""
    _checks.boolean(OP, "class_mass_norm", class_mass_norm)
    return dict(solver=_checks.option(OP, "solver", solver, Solver, options(Solver)),
                alpha=_checks.real(OP, "alpha", alpha, 0.0, 1.0, lo_open=True, hi_open=True),
                max_iter=_checks.integer(OP, "max_iter", max_iter, 1), tol=_checks.real(OP, "tol", tol, 0.0))


def check_labels(lab: Tensor, n: int, device) -> Tuple[Tensor, bool]:
    """``(labels on device, soft)`` from the tensor of :func:`pysd._checks.array`: ``(n,)`` integers
    (as int64) or ``(n, C)`` floats."""
    if lab.dtype == torch.bool or lab.is_complex():
        raise TypeError(f"{OP}: labels must be integer (N,) or float (N, C), got {lab.dtype}")
    soft = lab.is_floating_point()
    if (soft and lab.dim() != 2) or (not soft and lab.dim() != 1):
        raise ValueError(f"{OP}: labels must have shape (N,) when integer or (N, C) when float, "
                         f"got {lab.dtype} of shape {tuple(lab.shape)}")
    if lab.shape[0] != n:
        raise ValueError(f"{OP}: labels has {lab.shape[0]} rows but the graph has {n} nodes")
    if soft and lab.shape[1] < 1:
        raise ValueError(f"{OP}: soft labels need at least one column")
    return (lab.to(device) if soft else lab.to(device=device, dtype=torch.int64)), soft


def check_mask(mask, n: int, device) -> Optional[Tensor]:
    """``(n,)`` bool seed mask on ``device``, or None."""
    if mask is None:
        return None
    m = _checks.array(OP, "mask", mask)[0]
    if m.dtype != torch.bool:
        raise TypeError(f"{OP}: mask must be a bool array, got {m.dtype}")
    if m.shape != (n,):
        raise ValueError(f"{OP}: mask must have shape ({n},), got {tuple(m.shape)}")
    return m.to(device)


def check_weights(weights, n: int, device, dtype) -> Tensor:
    """``(n,)`` seed weights in the compute dtype (ones when None); values are checked by :func:`summarize`."""
    if weights is None:
        return torch.ones(n, dtype=dtype, device=device)
    w = _checks.array(OP, "weights", weights)[0]
    if not w.is_floating_point():
        raise TypeError(f"{OP}: weights must be floating point, got {w.dtype}")
    if w.shape != (n,):
        raise ValueError(f"{OP}: weights must have shape ({n},), got {tuple(w.shape)}")
    return w.to(device=device, dtype=dtype)


def labelled_rows(lab: Tensor, soft: bool) -> Tensor:
    """``(n,)`` bool: rows with a label (soft: a positive row sum)."""
    return lab.sum(1) > 0 if soft else lab >= 0


def summarize(lab: Tensor, soft: bool, mask: Optional[Tensor], w: Tensor) -> dict:
    """Everything the value checks need, read from the device in one host synchronisation: the smallest
    and largest hard label (-1 when none), whether soft labels are finite and non-negative, the first
    row the mask selects without a label (``n``: none), whether the weights are finite and
    non-negative, and whether any row is a seed."""
    n, dev, f64 = lab.shape[0], lab.device, torch.float64
    labelled = labelled_rows(lab, soft)
    seed = labelled if mask is None else mask

    def fold(t: Tensor, empty: float, how) -> Tensor:  # min / max with a value for zero rows
        return how(torch.cat([t.reshape(-1).to(f64), torch.tensor([empty], dtype=f64, device=dev)]))

    hard = lab.new_zeros(0) if soft else lab
    parts = [fold(hard, 0.0, torch.min), fold(hard, -1.0, torch.max),
             fold(torch.isfinite(lab) if soft else hard.new_ones(0), 1.0, torch.min),
             fold(lab >= 0 if soft else hard.new_ones(0), 1.0, torch.min),
             fold(torch.where(seed & ~labelled, torch.arange(n, device=dev), n), float(n), torch.min),
             fold(torch.isfinite(w) & (w >= 0), 1.0, torch.min), fold(seed, 0.0, torch.max)]
    low, top, finite, nonneg, bad_mask, w_ok, any_seed = torch.stack(parts).tolist()
    return dict(low=int(low), top=int(top), finite=bool(finite), nonneg=bool(nonneg), bad_mask=int(bad_mask),
                weights_ok=bool(w_ok), any_seed=bool(any_seed), n=n, seed=seed)


def check_values(s: dict, soft: bool, rows: str = "row") -> None:
    """Raises for the label, mask and weight values found by :func:`summarize`."""
    if soft and not s["finite"]:
        raise ValueError(f"{OP}: soft labels contain NaN or inf")
    if soft and not s["nonneg"]:
        raise ValueError(f"{OP}: soft labels must be non-negative")
    if not soft and s["low"] < -1:
        raise ValueError(f"{OP}: labels must be class indices >= 0 or -1 (unlabelled), found {s['low']}")
    if s["bad_mask"] < s["n"]:
        raise ValueError(f"{OP}: mask selects {rows} {s['bad_mask']}, which has no label")
    if not s["weights_ok"]:
        raise ValueError(f"{OP}: weights must be finite and non-negative")


def num_classes_of(top: int, soft_cols: Optional[int], num_classes) -> int:
    """C: the soft labels' columns, ``num_classes``, or the largest hard label ``top`` + 1."""
    if num_classes is not None:
        num_classes = _checks.integer(OP, "num_classes", num_classes, 1)
    if soft_cols is not None:
        if num_classes is not None and num_classes != soft_cols:
            raise ValueError(f"{OP}: num_classes={num_classes} but soft labels have {soft_cols} columns")
        return soft_cols
    if num_classes is None:
        if top < 0:
            raise ValueError(f"{OP}: every label is -1; give num_classes and at least one seed")
        return top + 1
    if top >= num_classes:
        raise ValueError(f"{OP}: labels contain class {top}, outside [0, num_classes={num_classes})")
    return num_classes


def check_class_buffers(n: int, c: int, given: bool, dtype: torch.dtype, device) -> None:
    """``ValueError`` before the four ``(N, C)`` solver buffers of a C that cannot fit in memory
    (``given``: C came from ``num_classes``, else from the largest label)."""
    name = "num_classes" if given else "labels (largest label + 1)"
    itemsize = torch.empty((), dtype=dtype).element_size()
    _checks.alloc(OP, name, c, 4.0 * n * c * itemsize, f"four ({n}, C) {dtype} buffers", device)


def isolated(indptr: Tensor, values: Tensor) -> Tensor:
    """``(N,)`` bool: rows of S without a non-zero entry (an O(nnz) int64 prefix count)."""
    nz = torch.cumsum((values != 0).to(torch.int64), 0)
    nz = torch.cat([nz.new_zeros(1), nz])
    return (nz[indptr[1:]] - nz[indptr[:-1]]) == 0


def seed_matrix(lab: Tensor, soft: bool, c: int, seed: Tensor, w: Tensor, class_mass_norm: bool, dtype,
                reduce: Callable[[Tensor], Tensor] = _same) -> Tensor:
    """``(N, C)`` seed matrix, without a host sync; ``reduce`` completes the ``(C,)`` class masses."""
    if soft:
        y = lab.to(dtype) * (w * seed).unsqueeze(1)
        if class_mass_norm:
            mass = reduce(y.sum(0))
            y /= torch.where(mass > 0, mass, 1.0)
        return y
    cls = lab.clamp_min(0)
    wv = torch.where(seed, w, 0.0)
    if class_mass_norm:
        mass = reduce(torch.zeros(c, dtype=dtype, device=lab.device).index_add_(0, cls, wv))[cls]
        wv = torch.where(mass > 0, wv / torch.where(mass > 0, mass, 1.0), 0.0)
    return torch.zeros((lab.shape[0], c), dtype=dtype, device=lab.device).scatter_(1, cls.unsqueeze(1),
                                                                                    wv.unsqueeze(1))


def finish(out, given: Tensor, c: int, reduce: Callable[[Tensor], Tensor] = _same,
           reduce_max: Callable[[Tensor], Tensor] = _same, row_start: int = 0) -> dict:
    """The :class:`Propagation` arrays from the kernel outputs ``(z, scores, oos, labels, confidence,
    weight, margin, residual)``; ``reduce`` / ``reduce_max`` complete sums / maxima over row shards, and
    ``issues`` get global ids from ``row_start``.  One host sync: the compaction of ``issues``."""
    z, scores, oos, plabels, conf, weight, margin, residual = out
    dtype = scores.dtype
    wmax = reduce_max(weight.max().reshape(1) if weight.numel() else weight.new_zeros(1))[0]
    entropy_weight = weight / torch.where(wmax > 0, wmax, 1.0)
    # index_add instead of bincount: bincount on a GPU reads the maximum back to the host
    counts = torch.zeros(c + 1, dtype=torch.int64, device=plabels.device)
    counts = reduce(counts.index_add_(0, plabels + 1, torch.ones_like(plabels))[1:].to(dtype))
    class_weight = torch.where(counts > 0, (counts.sum() / c) / torch.where(counts > 0, counts, 1.0), 0.0)
    cand = ((given >= 0) & (plabels >= 0) & (plabels != given)).nonzero().squeeze(1)
    issues = cand[torch.argsort(margin[cand], descending=True, stable=True)] + row_start
    return dict(scores=scores, labels=plabels, confidence=conf, entropy_weight=entropy_weight,
                class_weight=class_weight, oos_scores=oos, issues=issues, residual=residual.to(dtype), raw_scores=z)


def _to_callers_order(out, order: Tensor, spare: Tensor):
    """The per-row kernel outputs (all but the trailing ``(C,)`` residual) from the solver's order back
    to the caller's.  ``spare``: the seed buffer, free after the solve; each ``(N, C)`` output is
    gathered into the buffer the previous one left, so no fresh ``(N, C)`` tensor is faulted in."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    rows = []
    for t in out[:7]:
        if t.shape == spare.shape and t.dtype == spare.dtype and t.is_contiguous() and spare.is_contiguous():
            rows.append(torch.index_select(t, 0, inv, out=spare))
            spare = t  # copied out: its buffer takes the next output
        else:
            rows.append(t[inv])
    return rows + list(out[7:])


def given_labels(lab: Tensor, soft: bool) -> Tensor:
    """``(N,)`` int64 given label per row: the hard label, or the argmax of a labelled soft row, else -1."""
    if not soft:
        return lab
    if lab.shape[0] == 0:
        return lab.new_zeros(0, dtype=torch.int64)
    return torch.where(labelled_rows(lab, soft), lab.argmax(1), -1)


def propagate(graph, labels, *, num_classes: Optional[int] = None, mask=None, weights=None, alpha: float = 0.99,
              solver: str = "cg", max_iter: int = 20, tol: float = 1e-6, class_mass_norm: bool = True,
              reorder: bool = False) -> Propagation:
    r"""Label propagation ``(I - alpha S) Z = Y`` over a normalised graph, fused over all C classes.

    Seeds (LP-DeepSSL / AML-KD): ``Y[i, c] = w_i [y_i = c] / sum_{j seed, y_j = c} w_j`` for seed rows
    (``class_mass_norm=False``: ``Y[i, c] = w_i [y_i = c]``).  Soft seeds ``Q`` give
    ``Y[:, c] = w Q[:, c] / sum_seeds w Q[:, c]`` (or ``w Q[:, c]``).  A class without seed mass has a zero
    column: its Z column is 0, no division by zero.  Rows of S without a non-zero entry (isolated nodes)
    are never seeds, so they end with zero scores, label -1 and zero weight.

    Solvers:
        ``"cg"``: scipy's ``cg(I - alpha S, Y[:, c], rtol=tol, maxiter=max_iter)`` for every column at once
        (x0 = 0; a column stops once ``||r_c|| < tol ||Y_c||``, tested before each step as scipy does, and
        stays frozen while others go on).  One fused sparse-times-dense pass per iteration.
        ``"iterate"``: Zhou's ``Z <- alpha S Z + Y`` from ``Z0 = Y``, ``max_iter`` steps, stopping early once
        every column's change ``||Z_t - Z_{t-1}||_c < tol ||Y_c||`` (the change equals the residual of
        ``Z_{t-1}``).  The change norms are fused into each step; the rows whose argmax flipped in the
        last step are counted once after the loop, from the two iterates still in the double buffer.

    Args:
        graph: ``pysd.Graph``, scipy sparse or torch sparse, square ``(N, N)``, already normalised
            (e.g. ``D^-1/2 W D^-1/2``).  float64 values run in float64, float32 in float32; scipy input
            is converted to float32 (wrap it with ``Graph.from_scipy(m, dtype=torch.float64)`` for
            float64).  Moved to the device of ``labels`` when it lives elsewhere.
        labels: ``(N,)`` integer classes in ``[0, C)``, -1 = unlabelled; or ``(N, C)`` non-negative float
            soft seeds.  torch (CPU/GPU), numpy or any DLPack array; results come back as the same kind.
        num_classes: C for hard labels (default ``max(labels) + 1``).
        mask: ``(N,)`` bool, the seed rows (default: every labelled row).  It may not select a row
            labelled -1 (or a soft row that sums to 0).
        weights: ``(N,)`` non-negative per-row seed confidence (e.g. AWE weights); default 1.
        alpha: in (0, 1).  max_iter: >= 1.  tol: >= 0.
        reorder: solve in the graph's :meth:`Graph.locality_order` (nodes numbered community by
            community; computed once and cached on the graph with the reordered CSR) and return results
            in the caller's order.  Same results up to the summation order of each row's neighbours.
            CPU only (ignored on a GPU).  The first call per graph pays for the order (~0.5 s at
            N=100k, nnz=1.4M); later calls gain where the graph has communities (see README "Threads
            and locality").

    Returns:
        :class:`Propagation`.

    Memory: cg allocates four ``(N, C)`` buffers in the compute dtype (x, r = seeds, p, q; the outputs
    reuse them), iterate four (seeds, two Z buffers, oos); plus O(N + nnz) for the seeds and checks.
    No ``N x N`` temporaries.  ``reorder=True`` adds no ``(N, C)`` buffer of its own (the seeds are built
    in the solver's order, and the outputs return to the caller's order through the buffers the solve
    frees), except a permuted copy of soft labels; on first use per graph, the order and reordered CSR.
    On the CPU the ``(N, C)`` buffers come from pysd's buffer cache (:func:`pysd.cpu_cache_info`).

    Host synchronisations per call (on a GPU): three.  The value checks of the inputs read one small
    summary vector (1); the extension waits for its stream once at the end of the solve for the
    iteration count (2); the ``issues`` list, whose length depends on the results, is compacted (3).
    Solve and post-processing are one extension call, with no Python between them.
    """
    lab, kind = _checks.array(OP, "labels", labels)
    g = Graph.coerce(graph)
    dev = lab.device
    if g.device != dev:
        g = g.to(dev)
    o = check_options(alpha, solver, max_iter, tol, class_mass_norm)
    if not isinstance(reorder, bool):
        raise TypeError(f"{OP}: reorder must be a bool, got {type(reorder).__name__}")
    n, dtype = g.num_nodes, g.dtype
    lab, soft = check_labels(lab, n, dev)
    m, w = check_mask(mask, n, dev), check_weights(weights, n, dev, dtype)
    s = summarize(lab, soft, m, w)
    check_values(s, soft)
    c = num_classes_of(s["top"], lab.shape[1] if soft else None, num_classes)
    if not soft:
        check_class_buffers(n, c, num_classes is not None, dtype, dev)
    if not s["any_seed"]:
        raise ValueError(f"{OP}: no seed rows (mask and labels select none)")
    seed = s["seed"] & ~isolated(g.indptr, g.values)
    given = given_labels(lab, soft).contiguous()
    order = None
    if reorder and dev.type == "cpu" and n > 1:
        g, order = g.reordered()
        # the seed matrix is built in the solver's order from permuted per-row inputs: no (N, C) gather
        lab, seed, w = lab[order], seed[order], w[order]
    y = seed_matrix(lab, soft, c, seed, w, class_mass_norm, dtype)
    *out, stats = _propagate_op(g.indptr.contiguous(), g.indices.contiguous(), g.values.contiguous(), y,
                                given if order is None else given[order], o["alpha"], int(o["solver"]),
                                o["max_iter"], o["tol"])
    if order is not None:
        out = _to_callers_order(out, order, spare=y)
    it, flips = stats.tolist()
    return Propagation(iterations=it, flips=flips,
                       **{k: _checks.restore(v, kind) for k, v in finish(out, given, c).items()})
