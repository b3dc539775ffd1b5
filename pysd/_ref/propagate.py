"""Reference label propagation in plain torch (any float dtype, CPU or GPU); :func:`propagate` has
the public signature of :func:`pysd.propagate`.

Same algorithm and stopping rules as the kernels: per-column CG scalars as
``scipy.sparse.linalg.cg`` (x0 = 0, stop when ||r|| < tol ||b||), the Zhou
iteration from Z0 = Y, and the row post-processing of ``pysd/propagate.h``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .._codes import Solver




def _matrix(indptr: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    n = indptr.numel() - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(indptr, indices.to(torch.int64), values, (n, n), check_invariants=False)


def _local(t: Tensor) -> Tensor:
    return t


def cg(S, b: Tensor, alpha: float, max_iter: int, tol: float, reduce=_local):
    """Per-column CG on ``(I - alpha S) X = B``; returns X, ||r||/||b|| (C,), iterations.

    ``S`` is anything with ``S @ p``; ``reduce`` completes a ``(C,)`` float64 column sum over the rows
    (identity here; an all-reduce when the rows are sharded over ranks, so the scalars are global).
    """
    f64 = torch.float64
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rho = reduce((b.to(f64) ** 2).sum(0))
    bnorm = rho.sqrt()
    atol = tol * bnorm
    active = (bnorm != 0) & ~(bnorm < atol)
    it = 0
    for step in range(max_iter):
        if not bool(active.any()):
            break
        q = p - alpha * (S @ p)
        pq = reduce((p.to(f64) * q.to(f64)).sum(0))
        active &= pq != 0
        a = torch.where(active, rho / torch.where(active, pq, 1.0), 0.0)
        x += a.to(x.dtype) * p
        r -= a.to(r.dtype) * q
        rr = reduce((r.to(f64) ** 2).sum(0))
        beta = torch.where(active, rr / rho, 0.0)
        rho = torch.where(active, rr, rho)
        active &= ~(rr.sqrt() < atol)
        beta = torch.where(active, beta, 0.0)
        it = step + 1
        if not bool(active.any()):
            break
        p = r + beta.to(p.dtype) * p
    residual = torch.where(bnorm > 0, rho.sqrt() / torch.where(bnorm > 0, bnorm, 1.0), 0.0)
    return x, residual, it


def iterate(S, y: Tensor, alpha: float, max_iter: int, tol: float, reduce=_local):
    """Zhou steps ``Z <- alpha S Z + Y`` from Z0 = Y; returns Z, ||dZ||/||Y|| (C,), iterations, flips.

    ``S`` and ``reduce`` as in :func:`cg` (``reduce`` also sums the flip count, once after the loop).
    """
    f64 = torch.float64
    ynorm = reduce((y.to(f64) ** 2).sum(0)).sqrt()
    z = prev = y.clone()
    residual = torch.zeros_like(ynorm)
    it = 0
    for step in range(max_iter):
        zn = alpha * (S @ z) + y
        dnorm = reduce(((zn.to(f64) - z.to(f64)) ** 2).sum(0)).sqrt()
        residual = torch.where(ynorm > 0, dnorm / torch.where(ynorm > 0, ynorm, 1.0), 0.0)
        prev, z = z, zn
        it = step + 1
        if bool(((ynorm == 0) | (dnorm < tol * ynorm)).all()):
            break
    changed = (z.argmax(1) != prev.argmax(1)).sum(dtype=f64) if z.shape[1] else y.new_zeros((), dtype=f64)
    return z, residual, it, int(reduce(changed.reshape(1)))


def postprocess(S, z: Tensor, given: Tensor):
    """Row outputs of ``pysd/propagate.h::row_finish`` plus the neighbours-only scores."""
    n, c = z.shape
    zp = z.clamp_min(0)
    l1 = zp.sum(1)
    pos = l1 > 0
    safe_l1 = torch.where(pos, l1, 1.0)
    scores = zp / safe_l1.unsqueeze(1)
    arg = zp.argmax(1)
    top = zp.gather(1, arg.unsqueeze(1)).squeeze(1)
    labels = torch.where(pos, arg, -1)
    confidence = torch.where(pos, top / safe_l1, 0.0)
    zlogz = torch.xlogy(zp, zp).sum(1)
    h = torch.log(safe_l1) - zlogz / safe_l1
    weight = (1 - h / torch.log(torch.tensor(float(c), dtype=z.dtype))) if c > 1 else torch.ones_like(h)
    weight = torch.where(pos, weight, 0.0)
    gv = zp.gather(1, given.clamp_min(0).unsqueeze(1)).squeeze(1)
    gv = torch.where(given >= 0, gv, 0.0)
    margin = torch.where(pos, (top - gv) / safe_l1, 0.0)
    oos = (S @ zp).clamp_min(0)
    osum = oos.sum(1, keepdim=True)
    oos = oos / torch.where(osum > 0, osum, 1.0)
    return scores, oos, labels, confidence, weight, margin


def backend(indptr, indices, values, seeds, given, *, alpha, solver, max_iter, tol):
    """Backend adapter: ``(raw, scores, oos, labels, confidence, weight, margin, residual, iterations, flips)``."""
    S = _matrix(indptr, indices, values)
    if solver == Solver.CG:
        z, residual, it = cg(S, seeds, alpha, max_iter, tol)
        flips = -1
    else:
        z, residual, it, flips = iterate(S, seeds, alpha, max_iter, tol)
    return (z, *postprocess(S, z, given), residual, it, flips)


def propagate(graph, labels: Tensor, *, num_classes=None, mask=None, weights=None, alpha: float = 0.99,
              solver: str = "cg", max_iter: int = 20, tol: float = 1e-6, class_mass_norm: bool = True) -> dict:
    """:func:`pysd.propagate` in plain torch for valid inputs (``graph`` a :class:`pysd.Graph`, the
    arrays torch tensors on its device), written from the formulas of its docstring.

    Returns a dict with the fields of :class:`pysd.Propagation` (torch tensors).
    """
    n, dtype, dev = graph.num_nodes, graph.values.dtype, graph.values.device
    f = dict(dtype=dtype, device=dev)
    S = _matrix(graph.indptr, graph.indices, graph.values)
    soft = labels.is_floating_point()
    c = labels.shape[1] if soft else (num_classes if num_classes is not None else int(labels.max()) + 1)
    onehot = labels.to(dtype) if soft else torch.zeros(n, c, **f).scatter_(
        1, labels.clamp_min(0).unsqueeze(1), (labels >= 0).to(dtype).unsqueeze(1))
    labelled = onehot.sum(1) > 0
    rows = torch.repeat_interleave(torch.arange(n, device=dev), torch.diff(graph.indptr))
    connected = torch.zeros(n, **f).index_add_(0, rows, graph.values.abs()) > 0  # isolated rows are no seeds
    seed = (labelled if mask is None else mask) & connected
    w = torch.ones(n, **f) if weights is None else weights.to(dtype)
    y = onehot * (w * seed).unsqueeze(1)
    if class_mass_norm:
        mass = y.sum(0)
        y = y / torch.where(mass > 0, mass, 1.0)
    given = torch.where(labelled, onehot.argmax(1), -1) if soft else labels
    if solver == "cg":
        z, residual, it = cg(S, y, alpha, max_iter, tol)
        flips = -1
    else:
        z, residual, it, flips = iterate(S, y, alpha, max_iter, tol)
    scores, oos, plabels, confidence, weight, margin = postprocess(S, z, given)
    wmax = weight.max() if n else weight.new_zeros(())
    counts = torch.stack([(plabels == k).sum() for k in range(c)]).to(dtype)
    cand = ((given >= 0) & (plabels >= 0) & (plabels != given)).nonzero().squeeze(1)
    return dict(scores=scores, labels=plabels, confidence=confidence,
                entropy_weight=weight / torch.where(wmax > 0, wmax, 1.0),
                class_weight=torch.where(counts > 0, (counts.sum() / c) / torch.where(counts > 0, counts, 1.0), 0.0),
                oos_scores=oos, issues=cand[torch.argsort(margin[cand], descending=True, stable=True)],
                iterations=it, residual=residual.to(dtype), raw_scores=z, flips=flips)
