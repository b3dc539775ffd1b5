"""``torch.nn`` wrappers of the pysd losses."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

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
