"""``pysd.propagate``: label propagation over a normalised sparse graph (LP-DeepSSL / AML-KD recipe)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, _guards, _interop
from .._ref import propagate as _ref_prop  # noqa: F401  (registers the torch backend)
from ..graph import Graph

_SOLVERS = {"cg": 0, "iterate": 1}
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}

# --------------------------------------------------------------------------- backends


def _extension_backend(module: str):
    def run(indptr, indices, values, seeds, given, *, alpha, solver, max_iter, tol):
        mod = _backend.extension(module)
        n, c = seeds.shape
        dev, dt = seeds.device, seeds.dtype
        stream = torch.cuda.current_stream(dev).cuda_stream if seeds.is_cuda else 0
        residual = torch.zeros(c, dtype=torch.float64, device=dev)
        graph = (_DTYPE_NAMES[dt], n, c, indptr.data_ptr(), indices.data_ptr(), values.data_ptr())
        if solver == _SOLVERS["cg"]:
            x, p, q = (torch.empty_like(seeds) for _ in range(3))
            it = mod.propagate_cg(*graph, x.data_ptr(), seeds.data_ptr(), p.data_ptr(), q.data_ptr(),
                                  residual.data_ptr(), alpha, max_iter, tol, stream)
            flips, z, scores, oos = -1, x, q, p
        else:
            z0, z1, oos = (torch.empty_like(seeds) for _ in range(3))
            it, flips = mod.propagate_iterate(*graph, seeds.data_ptr(), z0.data_ptr(), z1.data_ptr(),
                                              residual.data_ptr(), alpha, max_iter, tol, stream)
            z, scores = (z1, z0) if it % 2 else (z0, z1)
        labels = torch.empty(n, dtype=torch.int64, device=dev)
        confidence, weight, margin = (torch.empty(n, dtype=dt, device=dev) for _ in range(3))
        mod.propagate_post(*graph, z.data_ptr(), given.data_ptr(), scores.data_ptr(), oos.data_ptr(),
                           labels.data_ptr(), confidence.data_ptr(), weight.data_ptr(), margin.data_ptr(),
                           stream)
        return z, scores, oos, labels, confidence, weight, margin, residual, it, flips

    return run


_backend.register("propagate", "cpp")(_extension_backend("_C"))
_backend.register("propagate", "cuda")(_extension_backend("_C_cuda"))
_backend.register("propagate", "numba", "pysd._numba.propagate:propagate_backend")


# --------------------------------------------------------------------------- custom op


@torch.library.custom_op("pysd::propagate", mutates_args=("seeds",))
def _propagate_op(indptr: Tensor, indices: Tensor, values: Tensor, seeds: Tensor, given: Tensor, alpha: float,
                  solver: int, max_iter: int, tol: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                   Tensor, Tensor, Tensor]:
    """Validated CSR graph and ``(N, C)`` seeds (overwritten: the CG residual lives there) →
    raw Z, scores, oos scores, labels, confidence, raw entropy weight, margin, residual ``(C,)`` float64,
    and ``[iterations, flips]`` (int64, on the CPU)."""
    fn = _backend.select("propagate", seeds.device.type)[1]
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


# --------------------------------------------------------------------------- validation


def _number(name: str, value, lo: float, hi: Optional[float] = None, open_lo=False, open_hi=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"propagate: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (open_lo and v == lo) or (hi is not None and (v > hi or (open_hi and v == hi))):
        lo_s = f"{'(' if open_lo else '['}{lo}"
        hi_s = f"{hi if hi is not None else 'inf'}{')' if (open_hi or hi is None) else ']'}"
        raise ValueError(f"propagate: {name} must be in {lo_s}, {hi_s}, got {value!r}")
    return v


def check_class_buffers(n: int, c: int, given: bool, dtype: torch.dtype, device) -> None:
    """``ValueError`` before the four ``(N, C)`` solver buffers of a C that cannot fit in memory
    (``given``: C came from ``num_classes``, else from the largest label)."""
    name = "num_classes" if given else "labels (largest label + 1)"
    itemsize = torch.empty((), dtype=dtype).element_size()
    _guards.check_alloc("propagate", name, c, 4.0 * n * c * itemsize, f"four ({n}, C) {dtype} buffers", device)


def _isolated(g: Graph) -> Tensor:
    """``(N,)`` bool: rows of S without a non-zero entry (an O(nnz) int64 prefix count)."""
    nz = torch.cumsum((g.values != 0).to(torch.int64), 0)
    nz = torch.cat([nz.new_zeros(1), nz])
    return (nz[g.indptr[1:]] - nz[g.indptr[:-1]]) == 0


def _seeds(lab: Tensor, soft: bool, c: int, seed: Tensor, w: Tensor, class_mass_norm: bool, dtype,
           reduce=lambda mass: mass) -> Tensor:
    """``(N, C)`` seed matrix; ``reduce`` completes the ``(C,)`` class masses over row shards."""
    n = lab.shape[0]
    if soft:
        y = lab.to(dtype) * (w * seed).unsqueeze(1)
        if class_mass_norm:
            mass = reduce(y.sum(0))
            y /= torch.where(mass > 0, mass, 1.0)
        return y
    rows = seed.nonzero().squeeze(1)
    cls = lab[rows]
    wv = w[rows]
    if class_mass_norm:
        mass = reduce(torch.zeros(c, dtype=dtype, device=lab.device).index_add_(0, cls, wv))
        wv = torch.where(mass[cls] > 0, wv / torch.where(mass[cls] > 0, mass[cls], 1.0), 0.0)
    y = torch.zeros((n, c), dtype=dtype, device=lab.device)
    y[rows, cls] = wv
    return y


def propagate(graph, labels, *, num_classes: Optional[int] = None, mask=None, weights=None, alpha: float = 0.99,
              solver: str = "cg", max_iter: int = 20, tol: float = 1e-6, class_mass_norm: bool = True) -> Propagation:
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

    Returns:
        :class:`Propagation`.

    Memory: cg allocates four ``(N, C)`` buffers in the compute dtype (x, r = seeds, p, q; the outputs
    reuse them), iterate four (seeds, two Z buffers, oos); plus O(N + nnz) for the seeds and checks.
    No ``N x N`` temporaries.  Value checks synchronise with the device once.
    """
    lab, kind = _interop.to_torch(labels, "propagate", "labels")
    g = Graph.coerce(graph)
    dev = lab.device
    if g.device != dev:
        g = g.to(dev)
    n = g.num_nodes
    dtype = g.dtype
    if not isinstance(solver, str) or solver not in _SOLVERS:
        raise ValueError(f"propagate: solver must be one of {sorted(_SOLVERS)}, got {solver!r}")
    alpha = _number("alpha", alpha, 0.0, 1.0, open_lo=True, open_hi=True)
    tol = _number("tol", tol, 0.0)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"propagate: max_iter must be an int >= 1, got {max_iter!r}")
    if not isinstance(class_mass_norm, bool):
        raise TypeError(f"propagate: class_mass_norm must be a bool, got {type(class_mass_norm).__name__}")

    if lab.dtype == torch.bool or lab.is_complex():
        raise TypeError(f"propagate: labels must be integer (N,) or float (N, C), got {lab.dtype}")
    soft = lab.is_floating_point()
    if (soft and lab.dim() != 2) or (not soft and lab.dim() != 1):
        raise ValueError(f"propagate: labels must have shape (N,) when integer or (N, C) when float, "
                         f"got {lab.dtype} of shape {tuple(lab.shape)}")
    if lab.shape[0] != n:
        raise ValueError(f"propagate: labels has {lab.shape[0]} rows but the graph has {n} nodes")
    if soft:
        c = lab.shape[1]
        if num_classes is not None and num_classes != c:
            raise ValueError(f"propagate: num_classes={num_classes} but soft labels have {c} columns")
        if c < 1:
            raise ValueError("propagate: soft labels need at least one column")
        if n and not bool(torch.isfinite(lab).all()):
            raise ValueError("propagate: soft labels contain NaN or inf")
        if n and bool((lab < 0).any()):
            raise ValueError("propagate: soft labels must be non-negative")
        rowsum = lab.sum(1)
        labelled = rowsum > 0
        given = torch.where(labelled, lab.argmax(1), -1) if n else lab.new_zeros(0, dtype=torch.int64)
    else:
        lab = lab.to(torch.int64)
        if n and bool((lab < -1).any()):
            v = int(lab[lab < -1][0])
            raise ValueError(f"propagate: labels must be class indices >= 0 or -1 (unlabelled), found {v}")
        top = int(lab.max()) if n else -1
        if num_classes is None:
            if top < 0:
                raise ValueError("propagate: every label is -1; give num_classes and at least one seed")
            c = top + 1
        else:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"propagate: num_classes must be an int >= 1, got {num_classes!r}")
            c = num_classes
            if top >= c:
                raise ValueError(f"propagate: labels contain class {top}, outside [0, num_classes={c})")
        labelled = lab >= 0
        given = lab
        check_class_buffers(n, c, num_classes is not None, dtype, dev)
    if mask is None:
        seed = labelled
    else:
        m, _ = _interop.to_torch(mask, "propagate", "mask")
        if m.dtype != torch.bool:
            raise TypeError(f"propagate: mask must be a bool array, got {m.dtype}")
        if m.shape != (n,):
            raise ValueError(f"propagate: mask must have shape ({n},), got {tuple(m.shape)}")
        m = m.to(dev)
        bad = m & ~labelled
        if bool(bad.any()):
            raise ValueError(f"propagate: mask selects row {int(bad.nonzero()[0])}, which has no label")
        seed = m
    if weights is None:
        w = torch.ones(n, dtype=dtype, device=dev)
    else:
        w, _ = _interop.to_torch(weights, "propagate", "weights")
        if not w.is_floating_point():
            raise TypeError(f"propagate: weights must be floating point, got {w.dtype}")
        if w.shape != (n,):
            raise ValueError(f"propagate: weights must have shape ({n},), got {tuple(w.shape)}")
        w = w.to(device=dev, dtype=dtype)
        if n and not (bool(torch.isfinite(w).all()) and bool((w >= 0).all())):
            raise ValueError("propagate: weights must be finite and non-negative")
    if not bool(seed.any()):
        raise ValueError("propagate: no seed rows (mask and labels select none)")
    seed = seed & ~_isolated(g)

    y = _seeds(lab, soft, c, seed, w, class_mass_norm, dtype)
    z, scores, oos, plabels, conf, weight, margin, residual, stats = _propagate_op(
        g.indptr.contiguous(), g.indices.contiguous(), g.values.contiguous(), y, given.contiguous(), alpha,
        _SOLVERS[solver], max_iter, tol)
    wmax = weight.max() if n else weight.new_zeros(())
    entropy_weight = weight / torch.where(wmax > 0, wmax, 1.0)
    counts = torch.bincount(plabels[plabels >= 0], minlength=c).to(dtype)
    class_weight = torch.where(counts > 0, (counts.sum() / c) / torch.where(counts > 0, counts, 1.0), 0.0)
    cand = ((given >= 0) & (plabels >= 0) & (plabels != given)).nonzero().squeeze(1)
    issues = cand[torch.argsort(margin[cand], descending=True, stable=True)]
    out = dict(scores=scores, labels=plabels, confidence=conf, entropy_weight=entropy_weight,
               class_weight=class_weight, oos_scores=oos, issues=issues, residual=residual.to(dtype), raw_scores=z)
    return Propagation(iterations=int(stats[0]), flips=int(stats[1]),
                       **{k: _interop.restore(v, kind) for k, v in out.items()})
