"""kd_loss through the extension binding ``kd_loss`` (csrc/bind/kd_loss.h)."""

from __future__ import annotations

import torch

from .. import cpu_cache
from .._codes import DTYPE_NAMES, TeacherFormat, acc_dtype, stream


def backend(ext, student, teacher, target, weight, grad_scale, *, compute_grad: bool, teacher_format: int,
            divergence: int, beta: float, temperature: float, soft_coef: float, hard_weight: float,
            label_smoothing: float, ignore_index: int):
    """``(rows (N,) in the accumulation dtype, gradient (N, C) or None)``, same contract as
    ``pysd._ref.kd_loss.backend``."""
    n, c = student.shape
    rows = torch.empty(n, dtype=acc_dtype(student.dtype), device=student.device)
    grad = cpu_cache.empty((n, c), student.dtype, student.device) if compute_grad else None
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    ext.kd_loss(
        dtype=DTYPE_NAMES[student.dtype], rows=n, cols=c, student=student.data_ptr(), student_stride=student.stride(0),
        teacher=ptr(teacher), teacher_stride=0 if teacher is None else teacher.stride(0), target=ptr(target),
        weight=ptr(weight), grad_scale=grad_scale.data_ptr(), grad=ptr(grad), grad_stride=c, loss=rows.data_ptr(),
        divergence=int(divergence), teacher_format=int(teacher_format if teacher is not None else TeacherFormat.NONE),
        beta=beta, temperature=temperature, soft_coef=soft_coef, hard_weight=hard_weight,
        label_smoothing=label_smoothing, ignore_index=ignore_index, stream=stream(student))
    return rows, grad
