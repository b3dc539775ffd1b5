"""Reference fused distillation loss: per-row loss from the formulas, gradient by autograd.

:func:`kd_loss` has the public signature of :func:`pysd.kd_loss` (tests call it in float64);
:func:`backend` is the ``torch`` backend of the custom op.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


from .. import _checks
from .._codes import Divergence, TeacherFormat, acc_dtype


def _plogp_ratio(p: torch.Tensor, lp: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """sum_j p_j (lp_j - lm_j) with 0 * anything = 0."""
    return torch.where(p > 0, p * (lp - lm), torch.zeros_like(p)).sum(-1)


def kd_loss_rows(
    student: torch.Tensor,
    teacher: Optional[torch.Tensor],
    target: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    *,
    teacher_format: int,
    divergence: int,
    beta: float,
    temperature: float,
    soft_coef: float,
    hard_weight: float,
    label_smoothing: float,
    ignore_index: int,
) -> torch.Tensor:
    """Weighted per-row loss ``(N,)`` for ``student: (N, C)``, differentiable in ``student``.

    ``hard_weight * CE(softmax(s), target; label_smoothing) + soft_coef * D(p_T, q_T)``
    with ``q_T = softmax(s / T)`` and ``p_T = softmax(t / T)`` (logits, log-probs)
    or ``p = t`` (probs); rows whose target is ``ignore_index`` are 0.
    """
    s = student
    n, c = s.shape
    loss = s.new_zeros(n)
    valid = torch.ones(n, dtype=torch.bool, device=s.device) if target is None else target != ignore_index
    if target is not None and hard_weight != 0.0:
        logq1 = F.log_softmax(s, dim=-1)
        tgt = torch.where(valid, target, torch.zeros_like(target))
        nll = -logq1.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        smooth = -logq1.sum(-1) / c
        loss = loss + hard_weight * ((1.0 - label_smoothing) * nll + label_smoothing * smooth)
    if teacher is not None and soft_coef != 0.0:
        logq = F.log_softmax(s / temperature, dim=-1)
        q = logq.exp()
        if teacher_format == TeacherFormat.PROBS:
            p = teacher
            logp = torch.log(teacher)
        else:
            logp = F.log_softmax(teacher / temperature, dim=-1)
            p = logp.exp()
        if divergence == Divergence.FKL:
            d = _plogp_ratio(p, logp, logq)
        elif divergence == Divergence.RKL:
            d = _plogp_ratio(q, logq, logp)
        else:
            # log m in log space: beta p + (1-beta) q underflows long before its logs do
            logm = torch.logaddexp(math.log(beta) + logp, math.log(1.0 - beta) + logq)
            d = beta * _plogp_ratio(p, logp, logm) + (1.0 - beta) * _plogp_ratio(q, logq, logm)
        loss = loss + soft_coef * d
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if weight is not None:
        loss = loss * weight
    return loss


def kd_loss_grad(
    student: torch.Tensor,
    teacher: Optional[torch.Tensor],
    target: Optional[torch.Tensor],
    *,
    teacher_format: int,
    divergence: int,
    beta: float,
    temperature: float,
    soft_coef: float,
    hard_weight: float,
    label_smoothing: float,
    ignore_index: int,
) -> torch.Tensor:
    """Closed-form ``d loss_i / d s`` per row (unweighted, ignored rows 0), ``(N, C)``."""
    s = student
    n, c = s.shape
    grad = torch.zeros_like(s)
    if target is not None and hard_weight != 0.0:
        onehot = torch.zeros_like(s)
        valid = target != ignore_index
        onehot[valid.nonzero().squeeze(-1), target[valid]] = 1.0
        grad += hard_weight * (F.softmax(s, -1) - (1.0 - label_smoothing) * onehot - label_smoothing / c)
    if teacher is not None and soft_coef != 0.0:
        logq = F.log_softmax(s / temperature, -1)
        q = logq.exp()
        if teacher_format == TeacherFormat.PROBS:
            p, logp = teacher, torch.log(teacher)
        else:
            logp = F.log_softmax(teacher / temperature, -1)
            p = logp.exp()
        if divergence == Divergence.FKL:
            gz = p.sum(-1, keepdim=True) * q - p
        else:
            if divergence == Divergence.RKL:
                f, scale = logq - logp, 1.0
            else:
                logm = torch.logaddexp(math.log(beta) + logp, math.log(1.0 - beta) + logq)
                f, scale = logq - logm, 1.0 - beta
            qf = torch.where(q > 0, q * f, torch.zeros_like(q))
            gz = scale * torch.where(q > 0, q * (f - qf.sum(-1, keepdim=True)), torch.zeros_like(q))
        grad += (soft_coef / temperature) * gz
    if target is not None:
        grad[target == ignore_index] = 0.0
    return grad


def backend(
    student, teacher, target, weight, grad_scale, *, compute_grad: bool, **options
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Backend adapter: ``(rows, grad_scale * d sum(rows) / d student)``, computed in the
    accumulation dtype.  A plain-torch path (several ``(N, C)`` temporaries), used on GPUs
    without ``pysd._C_cuda`` and as a cross-check of the kernels."""
    acc = acc_dtype(student.dtype)
    s = student.to(acc)
    t = None if teacher is None else teacher.to(acc)
    rows = kd_loss_rows(s, t, target, weight, **options)
    if not compute_grad:
        return rows, None
    scale = grad_scale.to(acc) * (weight if weight is not None else 1.0)
    grad = kd_loss_grad(s, t, target, **options) * torch.as_tensor(scale, dtype=acc).reshape(-1, 1)
    return rows, grad.to(student.dtype)


def kd_loss(student_logits: torch.Tensor, teacher: Optional[torch.Tensor] = None,
            target: Optional[torch.Tensor] = None, *, teacher_format: str = "logits", divergence: str = "fkl",
            beta: float = 0.5, temperature: float = 1.0, scale_t2: bool = True, hard_weight: Optional[float] = None,
            soft_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
            weight: Optional[torch.Tensor] = None, reduction: str = "mean",
            normalizer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`pysd.kd_loss` in plain torch, differentiable by autograd (any order), in the input dtype.

    Same arguments and reductions; no validation (pass valid inputs).  Allocates several ``(N, C)``
    temporaries: a reference, not a fast path.
    """
    c = student_logits.shape[-1]
    batch = student_logits.shape[:-1]
    s = student_logits.reshape(-1, c)
    t = None if teacher is None else teacher.reshape(-1, c)
    y = None if target is None else target.reshape(-1)
    w = None if weight is None else weight.reshape(-1).to(s.dtype)
    if divergence == "jsd" and beta in (0.0, 1.0):
        divergence = "fkl" if beta == 0.0 else "rkl"
    hard_weight = _checks.hard_weight("kd_loss", hard_weight, teacher is not None, target is not None)
    coef = 0.0 if teacher is None else soft_weight * (temperature ** 2 if scale_t2 else 1.0)
    rows = kd_loss_rows(s, t, y, w, teacher_format=TeacherFormat[teacher_format.upper()],
                        divergence=Divergence[divergence.upper()], beta=beta, temperature=temperature,
                        soft_coef=coef, hard_weight=hard_weight, label_smoothing=label_smoothing,
                        ignore_index=ignore_index)
    if reduction == "none":
        return rows.reshape(batch)
    if reduction == "sum":
        return rows.sum()
    if reduction == "batchmean":
        return rows.sum() / rows.shape[0] if rows.shape[0] else rows.sum() * 0.0
    if normalizer is not None:
        denom = normalizer.reshape(()).to(rows.dtype)
    else:
        valid = torch.ones_like(rows) if y is None else (y != ignore_index).to(rows.dtype)
        denom = (valid * (w if w is not None else 1.0)).sum()
    return torch.where(denom > 0, rows.sum() / torch.where(denom > 0, denom, 1.0), rows.sum() * 0.0)
