"""propagate through the extension binding ``propagate`` (solve and post-processing in one call,
csrc/bind/propagate.h)."""

from __future__ import annotations

import torch

from .. import cpu_cache
from .._codes import DTYPE_NAMES, Solver, stream


def backend(ext, indptr, indices, values, seeds, given, *, alpha, solver, max_iter, tol):
    """``(raw Z, scores, oos, labels, confidence, weight, margin, residual, iterations, flips)``, same
    contract as ``pysd._ref.propagate.backend``; ``seeds`` is overwritten."""
    n, c = seeds.shape
    dev, dt = seeds.device, seeds.dtype
    residual = torch.zeros(c, dtype=torch.float64, device=dev)
    work = [cpu_cache.empty_like(seeds) for _ in range(3)]
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    confidence, weight, margin = (torch.empty(n, dtype=dt, device=dev) for _ in range(3))
    it, flips, (z, scores, oos) = ext.propagate(
        dtype=DTYPE_NAMES[dt], solver=int(solver), n=n, cols=c, indptr=indptr.data_ptr(), indices=indices.data_ptr(),
        values=values.data_ptr(), seeds=seeds.data_ptr(), given=given.data_ptr(), a=work[0].data_ptr(),
        b=work[1].data_ptr(), c=work[2].data_ptr(), residual=residual.data_ptr(), labels=labels.data_ptr(),
        confidence=confidence.data_ptr(), weight=weight.data_ptr(), margin=margin.data_ptr(), alpha=alpha,
        max_iter=max_iter, tol=tol, stream=stream(seeds))
    return work[z], work[scores], work[oos], labels, confidence, weight, margin, residual, it, flips


def _local(t):
    return t


def _no_halo(ext_rows):
    return None


class _Rows:
    """An ``(n_before + n + n_after, C)`` buffer: the local rows with room for the halo rows around them
    (``ext``), and the local rows (``local``, a view)."""

    def __init__(self, like, halo):
        n, c = like.shape
        self.ext = like.new_empty((halo[0] + n + halo[1], c))
        self.local = self.ext[halo[0]:halo[0] + n]


def _cg(ext, dt, graph, r, alpha, max_iter, tol, halo, fill, reduce):
    """CG steps (the order of ``cg_cpu``); ``r`` holds b on entry.  Returns (x, q, columns, iterations)."""
    n, c = r.shape
    x, p = _Rows(r, halo), _Rows(r, halo)
    q = torch.empty_like(r)
    pq, rr = (torch.empty(c, dtype=torch.float64) for _ in range(2))
    ext.propagate_copy_step(dtype=dt, n=n, cols=c, src=r.data_ptr(), dst=p.local.data_ptr(),
                            zero=x.local.data_ptr(), sums=rr.data_ptr())
    columns = ext.PropagateCgColumns(cols=c, bb=reduce(rr).data_ptr(), tol=tol)
    it, active = 0, columns.active
    while active and it < max_iter:
        fill(p.ext)
        ext.propagate_matvec_step(dtype=dt, n=n, cols=c, **graph, p_ext=p.ext.data_ptr(), p=p.local.data_ptr(),
                                  q=q.data_ptr(), alpha=alpha, sums=pq.data_ptr())
        ext.propagate_cg_update_step(dtype=dt, columns=columns, n=n, x=x.local.data_ptr(), r=r.data_ptr(),
                                     p=p.local.data_ptr(), q=q.data_ptr(), pq=reduce(pq).data_ptr(),
                                     sums=rr.data_ptr())
        active = ext.propagate_cg_direction_step(dtype=dt, columns=columns, n=n, p=p.local.data_ptr(),
                                                 r=r.data_ptr(), rr=reduce(rr).data_ptr())
        it += 1
    return x, q, columns, it


def _iterate(ext, dt, graph, y, alpha, max_iter, tol, halo, fill, reduce):
    """Zhou steps (the order of ``iterate_cpu``).  Returns (z buffers, residual, iterations, flips)."""
    n, c = y.shape
    z = (_Rows(y, halo), _Rows(y, halo))
    yy, d2 = (torch.empty(c, dtype=torch.float64) for _ in range(2))
    ext.propagate_copy_step(dtype=dt, n=n, cols=c, src=y.data_ptr(), dst=z[0].local.data_ptr(), zero=0,
                            sums=yy.data_ptr())
    reduce(yy)
    residual, it = torch.zeros(c, dtype=torch.float64), 0
    for step in range(max_iter):
        cur, new = z[step % 2], z[1 - step % 2]
        fill(cur.ext)
        ext.propagate_zhou_step(dtype=dt, n=n, cols=c, **graph, y=y.data_ptr(), z_ext=cur.ext.data_ptr(),
                                z=cur.local.data_ptr(), out=new.local.data_ptr(), alpha=alpha, sums=d2.data_ptr())
        it = step + 1
        if ext.propagate_zhou_check(cols=c, yy=yy.data_ptr(), d2=reduce(d2).data_ptr(), tol=tol,
                                    residual=residual.data_ptr()):
            break
    # both buffers hold the last two iterates: count argmax flips once
    flips = torch.tensor([ext.propagate_flips_step(dtype=dt, n=n, cols=c, z0=z[0].local.data_ptr(),
                                                   z1=z[1].local.data_ptr())])
    return z, residual, it, int(reduce(flips))


def stepped(ext, indptr, indices, values, seeds, given, *, alpha, solver, max_iter, tol, halo=(0, 0),
            fill=_no_halo, reduce=_local):
    """:func:`backend` driven step by step from Python, for a graph whose rows are one shard of a larger one.

    Same contract and, with the defaults, the same results bit for bit as :func:`backend` (the steps run
    ``cg_cpu`` / ``iterate_cpu``'s kernels in their block order).  For a shard: ``indices`` (int32) index
    the rows ``[halo[0] rows before; the n local rows; halo[1] rows after]``; ``fill(ext)`` completes the
    halo rows of such an ``(n_ext, C)`` buffer from its local rows (collective), and ``reduce(t)`` sums
    a ``(C,)`` float64 / ``(1,)`` int64 tensor over the shards in place.  Per CG iteration: one ``fill``
    and two ``reduce`` of C float64 (p.q, then r.r: each scalar needs the pass the other feeds); per
    iterate step: one ``fill`` and one ``reduce``; plus one ``reduce`` to start, one ``fill`` for the
    post-processing and, for iterate, one ``reduce`` of the flip count.  CPU tensors only.
    """
    n, c = seeds.shape
    dt = DTYPE_NAMES[seeds.dtype]
    graph = dict(indptr=indptr.data_ptr(), indices=indices.data_ptr(), values=values.data_ptr())
    if solver == Solver.CG:
        x, scores, columns, it = _cg(ext, dt, graph, seeds, alpha, max_iter, tol, halo, fill, reduce)
        residual, flips = torch.empty(c, dtype=torch.float64), -1
        columns.residual(residual.data_ptr())
    else:
        z, residual, it, flips = _iterate(ext, dt, graph, seeds, alpha, max_iter, tol, halo, fill, reduce)
        x, scores = z[it % 2], z[1 - it % 2].local
    fill(x.ext)
    oos = seeds  # free after the solve
    labels = torch.empty(n, dtype=torch.int64)
    confidence, weight, margin = (torch.empty(n, dtype=seeds.dtype) for _ in range(3))
    ext.propagate_post_step(dtype=dt, n=n, cols=c, **graph, z_ext=x.ext.data_ptr(), z=x.local.data_ptr(),
                            given=given.data_ptr(), scores=scores.data_ptr(), oos=oos.data_ptr(),
                            labels=labels.data_ptr(), confidence=confidence.data_ptr(), weight=weight.data_ptr(),
                            margin=margin.data_ptr())
    return x.local, scores, oos, labels, confidence, weight, margin, residual, it, flips
