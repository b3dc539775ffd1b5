"""``pysd.partial_labels``: partial-label (PLL) targets from a teacher's probabilities.

Kernels: ``pysd/_cpp/partial_labels.py``, ``pysd/_numba/partial_labels.py``, ``pysd/_ref/partial_labels.py``;
the row selection in ``csrc/include/pysd/partial_labels.h``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend, _checks
from .._codes import FLOATS, acc_dtype

OP = "partial_labels"
_backend.register(OP)


@torch.library.custom_op("pysd::partial_labels", mutates_args=())
def _partial_labels_op(probs: Tensor, k: int, renormalize: bool) -> Tensor:
    """Validated ``(N, C)`` rows with unit column stride → ``(N, C)`` targets."""
    fn = _backend.select(OP, probs.device.type)[1]
    return fn(probs, k=k, renormalize=renormalize)


@_partial_labels_op.register_fake
def _(probs, k, renormalize):
    return probs.new_empty(probs.shape)


def _check_values(probs: Tensor, strict: bool) -> None:
    """Finite, non-negative and (``strict``) summing to 1 within ``sqrt(eps)``.

    One ``aminmax`` pass decides the first two (NaN propagates into both, -inf is negative), without
    the ``(N, C)`` temporaries of ``isfinite`` and ``< 0``; only a failing input pays for the pass that
    names the problem.
    """
    if probs.numel():
        lo, hi = torch.aminmax(probs)
        if not (bool(lo >= 0) and bool(hi < torch.inf)):
            if not bool(torch.isfinite(probs).all()):
                raise ValueError(f"{OP}: teacher_probs has NaN or infinite entries")
            raise ValueError(f"{OP}: teacher_probs has negative entries (expected probabilities)")
    if strict:
        dev = (probs.to(acc_dtype(probs.dtype)).sum(-1) - 1.0).abs()
        tol = torch.finfo(probs.dtype).eps ** 0.5
        if bool((dev > tol).any()):
            raise ValueError(f"{OP}: strict=True and a row of teacher_probs sums to 1 "
                             f"{float(dev.max()):+.3g} away (tolerance {tol:.2g})")


def partial_labels(teacher_probs: Tensor, k: int = 2, *, renormalize: bool = False, strict: bool = False) -> Tensor:
    r"""Partial-label targets: each row keeps its teacher's top-``k`` classes.

    The refinement of Jeong & Chung (arXiv 2402.10482): the PLL student is trained
    on the teacher's top-2 classes at 1/2 each, zeros elsewhere.  With
    ``renormalize=True`` the row keeps the teacher's probabilities on its top-``k``
    classes instead, divided by their sum.  The result is a probability row, usable
    directly as ``pysd.kd_loss(student, targets, teacher_format="probs")``.

    Ties: equal probabilities rank the lower class index first, on every backend, so
    a row ``[0.4, 0.3, 0.3]`` with ``k=2`` keeps classes 0 and 1.  A row whose top-k
    probabilities are all 0 gets 1/k on its selected classes (also under ``renormalize``).

    Args:
        teacher_probs: ``(..., C)`` float32/float64/bfloat16/float16 non-negative
            probabilities (any leading shape; CPU or CUDA).  Must not contain NaN or inf.
        k: number of classes kept per row, ``1 <= k <= C``.
        renormalize: keep the teacher's probabilities (renormalised) instead of 1/k.
        strict: also require every row to sum to 1 within ``sqrt(eps)`` of the dtype
            (1.5e-8 for float64, 3.5e-4 for float32, 0.03 for float16, 0.09 for bfloat16).

    Returns:
        ``(..., C)`` tensor of ``teacher_probs``' dtype and device; each row sums to 1.
        bfloat16/float16 rows are compared and renormalised in float32.

    Not differentiable: a top-k selection has no useful gradient, so the input is
    detached and the result never requires grad (it is a training target).

    Cost: ``O(C * min(k, C - k))`` comparisons per row and no memory beyond the output;
    the value checks synchronise with the device once (skipped while ``torch.compile``
    traces).
    """
    _checks.tensor(OP, "teacher_probs", teacher_probs)
    if teacher_probs.dtype not in FLOATS:
        raise TypeError(f"{OP}: teacher_probs must be float32/float64/bfloat16/float16, got {teacher_probs.dtype}")
    if teacher_probs.dim() < 1:
        raise ValueError(f"{OP}: teacher_probs must have shape (..., C), got a 0-d tensor")
    c = teacher_probs.shape[-1]
    k = _checks.integer(OP, "k", k)
    if k < 1 or k > c:
        raise ValueError(f"{OP}: k must satisfy 1 <= k <= C={c}, got k={k}")
    _checks.boolean(OP, "renormalize", renormalize)
    _checks.boolean(OP, "strict", strict)
    probs = teacher_probs.detach()
    if probs.numel() and not torch.compiler.is_compiling():
        _check_values(probs, strict)
    batch = probs.shape
    rows = probs.reshape(-1, c)
    if c > 1 and rows.stride(-1) != 1:
        rows = rows.contiguous()
    return _partial_labels_op(rows, k, renormalize).reshape(batch)
