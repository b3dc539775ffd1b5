"""``pysd.topk_teacher``: the teacher side of offline distillation, one pass per row."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _backend, _checks
from .._codes import FLOATS, Tail, TeacherFormat, options
from ..sparse_teacher import SparseTeacher
from .kd_loss import _rows_view

OP = "topk_teacher"
_backend.register(OP)


@torch.library.custom_op("pysd::topk_teacher", mutates_args=())
def _topk_teacher_op(logits: Tensor, k: int, temperature: float, format: int) -> Tuple[Tensor, Tensor]:
    """``(N, V)`` logits → ids ``(N, k)`` int64 and values ``(N, k)`` (accumulation dtype)."""
    fn = _backend.select(OP, logits.device.type)[1]
    return fn(logits, k, temperature, format)


@_topk_teacher_op.register_fake
def _(logits, k, temperature, format):
    n = logits.shape[0]
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty((n, k), dtype=torch.int64), logits.new_empty((n, k), dtype=acc)


def topk_teacher(teacher_logits: Tensor, k: int, *, temperature: float = 1.0, format: str = "logprobs",
                 tail: str = "renormalize") -> SparseTeacher:
    r"""The ``k`` largest teacher logits per row and their values at ``temperature``, as a
    :class:`pysd.SparseTeacher`, in one pass over each row (online log-sum-exp and a
    streaming top-k together).

    Args:
        teacher_logits: ``(..., V)`` float32/float64/bfloat16/float16 (detached: no gradient).
        k: entries per row, ``1 <= k <= V``.
        temperature: ``T``; the values describe ``softmax(teacher_logits / T)`` and the
            returned teacher records ``temperature=T`` (so a loss at another temperature
            re-tempers them).
        format: ``"logprobs"`` (``x/T - logsumexp(x/T)``), ``"probs"`` (their exp) or
            ``"logits"`` (``x/T``; only with ``tail="renormalize"``).
        tail: the tail policy recorded in the returned teacher.

    Returns:
        ``SparseTeacher`` with ``indices (..., k)`` int64 sorted by logit descending (ties:
        the lower class id first, as a stable sort) and ``values (..., k)`` float32 (float64
        for float64 input).  Memory: just the outputs and O(k) per thread.
    """
    if not isinstance(teacher_logits, Tensor):
        raise TypeError(f"topk_teacher: teacher_logits must be a torch.Tensor, got {type(teacher_logits).__name__}")
    if teacher_logits.dtype not in FLOATS:
        raise TypeError(f"topk_teacher: teacher_logits must be float32/float64/bfloat16/float16, "
                        f"got {teacher_logits.dtype}")
    if teacher_logits.dim() < 1:
        raise ValueError("topk_teacher: teacher_logits must have shape (..., V)")
    v = teacher_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= v:
        raise ValueError(f"topk_teacher: k must be an int in [1, V={v}], got {k!r}")
    temperature = _checks.real(OP, "temperature", temperature, 0.0, lo_open=True)
    code = _checks.option(OP, "format", format, TeacherFormat, options(TeacherFormat))
    _checks.choice(OP, "tail", tail, options(Tail))
    x = _rows_view(teacher_logits.detach(), v)
    ids, vals = _topk_teacher_op(x, k, temperature, int(code))
    batch = teacher_logits.shape[:-1]
    return SparseTeacher(ids.reshape(*batch, k), vals.reshape(*batch, k), format, tail, float(temperature))
