"""``torch.nn`` wrappers of the pysd losses."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ops.fused_linear_kd_loss import fused_linear_kd_loss
from .ops.kd_loss import kd_loss


class DistillationLoss(torch.nn.Module):
    """Module form of :func:`pysd.kd_loss`; the keyword options are fixed at construction.

    ``forward(student_logits, teacher=None, target=None, weight=None, normalizer=None)``
    takes the tensors: ``(..., C)`` logits, ``(..., C)`` teacher, ``(...)`` targets and
    weights, and an optional 0-d normalizer, and returns what ``kd_loss`` returns.
    """

    def __init__(self, *, teacher_format: str = "logits", divergence: str = "fkl", beta: float = 0.5,
                 temperature: float = 1.0, scale_t2: bool = True, hard_weight: Optional[float] = None,
                 soft_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
                 reduction: str = "mean", check_finite: Optional[bool] = None):
        super().__init__()
        self.options = dict(teacher_format=teacher_format, divergence=divergence, beta=beta,
                            temperature=temperature, scale_t2=scale_t2, hard_weight=hard_weight,
                            soft_weight=soft_weight, label_smoothing=label_smoothing, ignore_index=ignore_index,
                            reduction=reduction, check_finite=check_finite)

    def forward(self, student_logits: Tensor, teacher: Optional[Tensor] = None, target: Optional[Tensor] = None,
                weight: Optional[Tensor] = None, normalizer: Optional[Tensor] = None) -> Tensor:
        return kd_loss(student_logits, teacher, target, weight=weight, normalizer=normalizer, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class FusedLinearDistillationLoss(torch.nn.Module):
    """Module form of :func:`pysd.fused_linear_kd_loss`; the keyword options (including
    ``logit_softcap`` and ``chunk_size``) are fixed at construction.

    ``forward(student_input, student_weight, teacher, target=None, student_bias=None,
    teacher_weight=None, teacher_bias=None, weight=None, normalizer=None)``: ``(..., H)``
    hidden states, ``(V, H)`` head weight, a teacher (dense logits, :class:`pysd.SparseTeacher`
    or hidden states with ``teacher_weight``), and returns what ``fused_linear_kd_loss`` returns.
    """

    def __init__(self, *, teacher_format: str = "logits", divergence: str = "fkl", beta: float = 0.5,
                 temperature: float = 1.0, scale_t2: bool = True, hard_weight: Optional[float] = None,
                 soft_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
                 reduction: str = "mean", logit_softcap: Optional[float] = None, chunk_size=None):
        super().__init__()
        self.options = dict(teacher_format=teacher_format, divergence=divergence, beta=beta,
                            temperature=temperature, scale_t2=scale_t2, hard_weight=hard_weight,
                            soft_weight=soft_weight, label_smoothing=label_smoothing, ignore_index=ignore_index,
                            reduction=reduction, logit_softcap=logit_softcap, chunk_size=chunk_size)

    def forward(self, student_input: Tensor, student_weight: Tensor, teacher, target: Optional[Tensor] = None,
                student_bias: Optional[Tensor] = None, teacher_weight: Optional[Tensor] = None,
                teacher_bias: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                normalizer: Optional[Tensor] = None) -> Tensor:
        return fused_linear_kd_loss(student_input, student_weight, teacher, target, student_bias=student_bias,
                                    teacher_weight=teacher_weight, teacher_bias=teacher_bias, weight=weight,
                                    normalizer=normalizer, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
