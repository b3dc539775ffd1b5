"""propagate through the extension binding ``propagate`` (solve and post-processing in one call,
csrc/bind/propagate.h)."""

from __future__ import annotations

import torch

from .._codes import DTYPE_NAMES, stream


def backend(ext, indptr, indices, values, seeds, given, *, alpha, solver, max_iter, tol):
    """``(raw Z, scores, oos, labels, confidence, weight, margin, residual, iterations, flips)``, same
    contract as ``pysd._ref.propagate.backend``; ``seeds`` is overwritten."""
    n, c = seeds.shape
    dev, dt = seeds.device, seeds.dtype
    residual = torch.zeros(c, dtype=torch.float64, device=dev)
    work = [torch.empty_like(seeds) for _ in range(3)]
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    confidence, weight, margin = (torch.empty(n, dtype=dt, device=dev) for _ in range(3))
    it, flips, (z, scores, oos) = ext.propagate(
        dtype=DTYPE_NAMES[dt], solver=int(solver), n=n, cols=c, indptr=indptr.data_ptr(), indices=indices.data_ptr(),
        values=values.data_ptr(), seeds=seeds.data_ptr(), given=given.data_ptr(), a=work[0].data_ptr(),
        b=work[1].data_ptr(), c=work[2].data_ptr(), residual=residual.data_ptr(), labels=labels.data_ptr(),
        confidence=confidence.data_ptr(), weight=weight.data_ptr(), margin=margin.data_ptr(), alpha=alpha,
        max_iter=max_iter, tol=tol, stream=stream(seeds))
    return work[z], work[scores], work[oos], labels, confidence, weight, margin, residual, it, flips
