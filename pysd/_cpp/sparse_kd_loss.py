"""sparse_kd_loss through the extension binding ``sparse_kd_loss`` (csrc/bind/sparse_kd_loss.h):
the fused phase as a backend, and :func:`call` for every phase (the piecewise entry points of
``pysd.ops.sparse_kd_loss``)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import cpu_cache
from .._codes import DTYPE_NAMES, Phase, acc_dtype, stream


def _ptr(x: Optional[Tensor]) -> int:
    return 0 if x is None else x.data_ptr()


def call(ext, student: Tensor, phase: Phase, n: int, vocab: int, v0: int, width: int, ids: Tensor, vals: Tensor,
         target, weight, grad_scale, grad, loss, stats, gathered, coef, delta, options: dict) -> None:
    """One phase of the kernel over logits ``student`` (classes ``v0 .. v0+width-1`` of ``vocab``)."""
    ext.sparse_kd_loss(
        dtype=DTYPE_NAMES[student.dtype], phase=int(phase), rows=n, vocab=vocab, v0=v0, width=width,
        k=ids.shape[-1], student=_ptr(student), student_stride=student.stride(0) if student.dim() == 2 else width,
        ids=_ptr(ids), vals=_ptr(vals), target=_ptr(target), weight=_ptr(weight), grad_scale=_ptr(grad_scale),
        grad=_ptr(grad), grad_stride=width, loss=_ptr(loss), stats=_ptr(stats), gathered=_ptr(gathered),
        coef=_ptr(coef), delta=_ptr(delta), divergence=int(options["divergence"]), format=int(options["format"]),
        tail=int(options["tail"]), beta=options["beta"], temperature=options["temperature"],
        retemper=options["retemper"], soft_coef=options["soft_coef"], hard_weight=options["hard_weight"],
        label_smoothing=options["label_smoothing"], ignore_index=options["ignore_index"], stream=stream(student))


def backend(ext, student, indices, values, target, weight, grad_scale, *, compute_grad: bool, **options):
    """``(rows (N,) in the accumulation dtype, gradient (N, V) or None)``, same contract as
    ``pysd._ref.sparse_kd_loss.backend``."""
    n, v = student.shape
    rows = torch.empty(n, dtype=acc_dtype(student.dtype), device=student.device)
    grad = cpu_cache.empty((n, v), student.dtype, student.device) if compute_grad else None
    call(ext, student, Phase.FUSED, n, v, 0, v, indices, values, target, weight, grad_scale, grad, rows,
         None, None, None, None, options)
    return rows, grad
