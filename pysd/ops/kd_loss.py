"""``pysd.kd_loss``: the fused distillation loss (hard CE + tempered soft divergence).

Kernels: ``pysd/_cpp/kd_loss.py`` (both extension modules), ``pysd/_numba/kd_loss.py``,
``pysd/_ref/kd_loss.py``; the row math in ``csrc/include/pysd/kd_loss.h``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, _checks
from .._codes import FLOATS, Divergence, Reduction, TeacherFormat, acc_dtype, options
from ..sparse_teacher import SparseTeacher

OP = "kd_loss"
_backend.register(OP)


# --------------------------------------------------------------------------- custom op


@torch.library.custom_op("pysd::kd_loss", mutates_args=())
def _kd_loss_op(
    student: Tensor, teacher: Optional[Tensor], target: Optional[Tensor], weight: Optional[Tensor],
    grad_scale: Tensor, teacher_format: int, divergence: int, beta: float, temperature: float,
    soft_coef: float, hard_weight: float, label_smoothing: float, ignore_index: int, reduction: int,
    compute_grad: bool,
) -> Tuple[Tensor, Tensor]:
    """Validated ``(N, C)`` inputs → (loss ``()`` or ``(N,)``, gradient buffer ``(N, C)`` or ``(0,)``).

    The gradient buffer is ``d loss / d student`` for an upstream gradient of 1,
    already scaled by ``grad_scale`` (the reduction's ``1/normalizer``).
    """
    fn = _backend.select(OP, student.device.type)[1]
    rows, grad = fn(student, teacher, target, weight, grad_scale, compute_grad=compute_grad,
                    teacher_format=teacher_format, divergence=divergence, beta=beta, temperature=temperature,
                    soft_coef=soft_coef, hard_weight=hard_weight, label_smoothing=label_smoothing,
                    ignore_index=ignore_index)
    if reduction == Reduction.NONE:
        loss = rows.to(student.dtype)
    else:
        loss = (rows.sum() * grad_scale.to(rows.dtype)).to(student.dtype)
    return loss, (grad if grad is not None else student.new_empty(0))


@_kd_loss_op.register_fake
def _(student, teacher, target, weight, grad_scale, teacher_format, divergence, beta, temperature, soft_coef,
      hard_weight, label_smoothing, ignore_index, reduction, compute_grad):
    n = student.shape[0]
    loss = student.new_empty((n,) if reduction == Reduction.NONE else ())
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty(0)
    return loss, grad


def _setup_context(ctx, inputs, output):
    # The gradient-buffer output is never differentiated; without this autograd
    # would hand backward an (N, C) tensor of zeros for it.
    ctx.set_materialize_grads(False)
    ctx.reduction = inputs[13]
    ctx.save_for_backward(output[1])


def _traced(t: Tensor) -> bool:
    """Whether ``t`` is a tracing stand-in (AOTAutograd's fake / functional tensors): no value to read."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return isinstance(t, (FakeTensor, FunctionalTensor))


def _backward(ctx, grad_loss, _grad_buffer):
    (buf,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 15
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # The saved buffer is a constant: a second derivative through it would be silently 0.
        raise RuntimeError("pysd.kd_loss does not support double backward (create_graph=True); "
                           "use pysd._ref.kd_loss.kd_loss for higher-order gradients")
    if ctx.reduction == Reduction.NONE:
        g = buf * grad_loss.to(buf.dtype).unsqueeze(-1)
    elif (not torch.compiler.is_compiling() and grad_loss.device.type == "cpu" and not _traced(grad_loss)
          and grad_loss.item() == 1.0):
        g = buf  # the usual loss.backward(): the kernel already wrote the gradient
    else:
        g = buf * grad_loss.to(buf.dtype)
    return (g,) + (None,) * 14


_kd_loss_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- validation


def _rows_view(x: Tensor, c: int) -> Tensor:
    """``(..., C)`` → ``(N, C)`` with unit column stride, without copying when possible."""
    x2 = x.reshape(-1, c) if x.dim() != 2 else x
    if c > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


def _check_student(student_logits) -> None:
    _checks.tensor(OP, "student_logits", student_logits)
    if student_logits.dtype not in FLOATS:
        raise TypeError(f"{OP}: student_logits must be float32/float64/bfloat16/float16, got {student_logits.dtype}")
    if student_logits.dim() < 1:
        raise ValueError(f"{OP}: student_logits must have shape (..., C), got a 0-d tensor")
    if student_logits.shape[-1] < 1:
        raise ValueError(f"{OP}: student_logits must have at least one class (C >= 1)")


def _check_companion(name: str, t: Optional[Tensor], shape, dev) -> None:
    """``t`` (teacher / target / weight) is a tensor of ``shape`` on ``dev``, or None."""
    if _checks.tensor(OP, name, t, optional=True) is None:
        return
    if t.shape != shape:
        what = "the student's shape" if name == "teacher" else "shape"
        tail = " (student_logits without C)" if name == "target" else ""
        raise ValueError(f"{OP}: {name} must have {what} {tuple(shape)}{tail}, got {tuple(t.shape)}")
    if t.device != dev:
        raise ValueError(f"{OP}: {name} is on {t.device}, student_logits on {dev}")


def _check_tensors(student, teacher, target, weight, tf, ignore_index) -> None:
    """Shapes, dtypes and devices; then the value checks (one host sync each, skipped under compile)."""
    c, batch, dev = student.shape[-1], student.shape[:-1], student.device
    if teacher is not None and isinstance(teacher, Tensor) and teacher.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{OP}: teacher requires grad; pass teacher.detach() (the loss only trains the student)")
    _check_companion("teacher", teacher, student.shape, dev)
    if teacher is not None and teacher.dtype != student.dtype:
        raise TypeError(f"{OP}: teacher dtype {teacher.dtype} differs from student_logits dtype {student.dtype}")
    if target is not None and isinstance(target, Tensor) and (
            target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool):
        raise TypeError(f"{OP}: target must hold integer class indices, got {target.dtype}")
    _check_companion("target", target, batch, dev)
    if weight is not None and isinstance(weight, Tensor) and not weight.dtype.is_floating_point:
        raise TypeError(f"{OP}: weight must be floating point, got {weight.dtype}")
    _check_companion("weight", weight, batch, dev)
    if torch.compiler.is_compiling():
        return
    if tf == TeacherFormat.PROBS and teacher.numel() and bool((teacher < 0).any()):
        raise ValueError(f"{OP}: teacher_format='probs' but the teacher has negative entries")
    if target is not None and target.numel():
        bad = ((target < 0) | (target >= c)) & (target != ignore_index)
        if bool(bad.any()):
            v = int(target[bad].flatten()[0])
            raise ValueError(f"{OP}: target has class index {v} outside [0, {c}) (and not ignore_index={ignore_index})")
    if weight is not None and weight.numel() and bool((weight < 0).any()):
        raise ValueError(f"{OP}: weight must be non-negative")


def _check_options(teacher_format, divergence, reduction, beta, temperature, hard_weight, soft_weight,
                   label_smoothing, ignore_index) -> dict:
    """The checked options as kernel codes and floats."""
    beta = _checks.real(OP, "beta", beta, 0.0, 1.0)
    div = _checks.option(OP, "divergence", divergence, Divergence, options(Divergence))
    if div == Divergence.JSD and beta in (0.0, 1.0):
        div = Divergence.FKL if beta == 0.0 else Divergence.RKL  # the limits, exactly
    return dict(
        teacher_format=_checks.option(OP, "teacher_format", teacher_format, TeacherFormat, options(TeacherFormat)),
        divergence=div, reduction=_checks.option(OP, "reduction", reduction, Reduction, options(Reduction)),
        beta=beta, temperature=_checks.real(OP, "temperature", temperature, 0.0, lo_open=True),
        hard_weight=hard_weight,
        soft_weight=_checks.real(OP, "soft_weight", soft_weight, 0.0),
        label_smoothing=_checks.real(OP, "label_smoothing", label_smoothing, 0.0, 1.0),
        ignore_index=_ignore_index(ignore_index))


def _ignore_index(ignore_index) -> int:
    v = _checks.integer(OP, "ignore_index", ignore_index)
    if not -2**63 <= v < 2**63:
        raise ValueError(f"{OP}: ignore_index must fit in int64 (targets are int64), got {v}")
    return v


def _check_normalizer(normalizer, red, reduction, check_finite: bool = False) -> None:
    """Kind and, where readable without a device sync (a CPU tensor, or ``check_finite``), value."""
    if normalizer is None:
        return
    if red != Reduction.MEAN:
        raise ValueError(f"{OP}: normalizer replaces the 'mean' denominator; got reduction={reduction!r}")
    if not isinstance(normalizer, Tensor) or normalizer.numel() != 1:
        raise TypeError(f"{OP}: normalizer must be a one-element tensor")
    if normalizer.is_complex() or normalizer.dtype == torch.bool:
        raise TypeError(f"{OP}: normalizer must be a real number tensor, got {normalizer.dtype}")
    if not torch.compiler.is_compiling() and (normalizer.device.type == "cpu" or check_finite):
        v = float(normalizer.detach().reshape(()))
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{OP}: normalizer must be finite and > 0 (or 0 for an empty mean), got {v}")


def _grad_scale(red, n: int, y: Optional[Tensor], w: Optional[Tensor], ignore_index: int,
                normalizer: Optional[Tensor], dev) -> Tensor:
    """0-d float64 ``d(reduced loss)/d(row loss)`` before weights (the kernels fold it into the gradient)."""
    f64 = dict(dtype=torch.float64, device=dev)
    if red == Reduction.BATCHMEAN:
        return torch.tensor(1.0 / n if n else 0.0, **f64)
    if red != Reduction.MEAN:
        return torch.ones((), **f64)
    if normalizer is not None:
        denom = normalizer.detach().reshape(()).to(**f64)
    else:
        valid = None if y is None else (y != ignore_index)
        if w is not None:
            denom = (w.to(torch.float64) * valid).sum() if valid is not None else w.to(torch.float64).sum()
        elif valid is not None:
            denom = valid.sum().to(torch.float64)
        else:
            denom = torch.tensor(float(n), **f64)
        return torch.where(denom > 0, 1.0 / denom, torch.zeros((), **f64))
    # a bad normalizer that could not be read on the host shows as NaN, never as a silent 0
    ok = torch.isfinite(denom) & (denom > 0)
    return torch.where(ok, 1.0 / torch.where(ok, denom, 1.0), torch.where(denom == 0, 0.0, torch.nan).to(torch.float64))


def kd_loss(
    student_logits: Tensor,
    teacher: Optional[Tensor] = None,
    target: Optional[Tensor] = None,
    *,
    teacher_format: str = "logits",
    divergence: str = "fkl",
    beta: float = 0.5,
    temperature: float = 1.0,
    scale_t2: bool = True,
    hard_weight: Optional[float] = None,
    soft_weight: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    normalizer: Optional[Tensor] = None,
    check_finite: Optional[bool] = None,
) -> Tensor:
    r"""Fused distillation loss: hard cross-entropy plus a tempered soft divergence, in one pass per row.

    Per row ``i`` (``s`` the student logits, ``t`` the teacher, ``T`` the temperature)::

        loss_i = w_i * ( hard_weight * CE(softmax(s), y_i; label_smoothing)
                       + soft_weight * (T**2 if scale_t2) * D(p_T, q_T) )

    with ``q_T = softmax(s / T)`` and ``p_T = softmax(t / T)`` for ``teacher_format``
    ``"logits"`` or ``"logprobs"``; for ``"probs"`` the teacher is used as given
    (``p = t``, zeros allowed, ``0 log 0 = 0``) and the temperature applies to the
    student only.  The CE term always uses the student at temperature 1.

    ``D`` is ``"fkl"`` KL(p‖q), ``"rkl"`` KL(q‖p), or ``"jsd"`` the generalized
    Jensen–Shannon divergence ``beta KL(p‖m) + (1-beta) KL(q‖m)`` with
    ``m = beta p + (1-beta) q``; as in TRL and Liger, ``beta=0`` means fkl and
    ``beta=1`` rkl exactly.  (``"rkl"`` against probabilities with zeros is infinite.)

    Args:
        student_logits: ``(..., C)`` float32/float64/bfloat16/float16; any row stride.
        teacher: ``(..., C)`` same dtype and device, or None (no soft term).  Must not
            require grad (detach it): the gradient goes to the student only.  A
            :class:`pysd.SparseTeacher` (top-k entries per row) dispatches to the sparse
            kernel (:func:`pysd.ops.sparse_kd_loss.sparse_kd_loss`); its format replaces
            ``teacher_format``.
        target: ``(...)`` integer class indices in ``[0, C)`` or ``ignore_index``, or None
            (no hard term).  Rows with ``target == ignore_index`` contribute nothing to
            either term and are left out of the "mean" denominator.
        weight: ``(...)`` non-negative per-row weights (e.g. ambiguity weights) or None.
        hard_weight: weight of the CE term.  ``None`` (default): 0.5 with a teacher and a
            target (the labels are never silently dropped), 1.0 with a target and no teacher
            (plain CE), 0 without a target.  An explicit 0 with a teacher keeps ``target``
            for ``ignore_index`` only (rows to drop); with no teacher it is a ValueError.
        soft_weight: weight of the soft term.
        reduction: ``"mean"`` divides the sum by the sum of the weights of non-ignored rows
            (their count without ``weight``); ``"sum"``; ``"batchmean"`` divides by the
            number of rows; ``"none"`` returns the per-row losses ``(...)``.  A mean over
            zero rows (empty batch, every row ignored, zero total weight) is 0 with zero
            gradient, not NaN.
        normalizer: optional 0-d tensor replacing the "mean" denominator (e.g. the global
            count of non-ignored rows under DDP, or the item count of a gradient-accumulation
            step); no host synchronisation.  It must be ``> 0`` and finite, or exactly 0 (the
            empty mean: loss 0, zero gradient, as :func:`pysd.distributed.global_normalizer`
            returns when every rank ignores every row).  A CPU normalizer is checked (no sync:
            ``ValueError`` for NaN, inf or a negative value); one on a GPU, or any normalizer
            while ``torch.compile`` traces, is not read on the host, and a bad value then makes
            the loss and gradient NaN instead of silently 0.
        check_finite: raise ``ValueError`` naming the argument when ``student_logits``,
            ``teacher``, ``weight`` or ``normalizer`` hold NaN or inf (one host synchronisation;
            skipped while ``torch.compile`` traces).  None (default) reads the environment
            variable ``PYSD_CHECK_FINITE`` (``1`` turns it on).  Off, NaN/inf inputs propagate
            NaN to the loss and gradient as PyTorch's losses do.

    Returns:
        0-d loss, or ``(...)`` for ``reduction="none"``, in the input dtype.  bf16/fp16
        inputs are computed in float32 and the gradient is returned in the input dtype.

    Memory: the op allocates the ``(N,)`` row losses and, when the student requires grad,
    one ``(N, C)`` gradient buffer that is written during the forward pass and handed
    to autograd (for ``loss.backward()`` it becomes ``student.grad`` without a copy).
    No other ``(N, C)`` temporaries (the numba fallback upcasts bf16/fp16 inputs).  On the CPU a
    gradient of 4 MiB or more comes from pysd's buffer cache (:func:`pysd.cpu_cache_info`): the
    buffer of an earlier step whose tensors are all freed, instead of freshly faulted pages.
    Value checks (target range, negative weights or probabilities) synchronise with the
    device once; they are skipped while ``torch.compile`` traces, and an out-of-range
    class then yields NaN rather than reading out of bounds.
    """
    if isinstance(teacher, SparseTeacher):
        from .sparse_kd_loss import sparse_kd_loss

        return sparse_kd_loss(student_logits, teacher, target, divergence=divergence, beta=beta,
                              temperature=temperature, scale_t2=scale_t2, hard_weight=hard_weight,
                              soft_weight=soft_weight, label_smoothing=label_smoothing, ignore_index=ignore_index,
                              weight=weight, reduction=reduction, normalizer=normalizer)
    _check_student(student_logits)
    o = _check_options(teacher_format, divergence, reduction, beta, temperature, hard_weight, soft_weight,
                       label_smoothing, ignore_index)
    if teacher is None and target is None:
        raise ValueError(f"{OP}: give a teacher (soft term), a target (hard term), or both")
    check_finite = _checks.finite_option(check_finite)
    _check_tensors(student_logits, teacher, target, weight, o["teacher_format"], o["ignore_index"])
    _check_normalizer(normalizer, o["reduction"], reduction, check_finite)
    if check_finite and not torch.compiler.is_compiling():
        for name, t in (("student_logits", student_logits), ("teacher", teacher), ("weight", weight)):
            _checks.finite(OP, name, t)
    hard = _checks.hard_weight(OP, o["hard_weight"], teacher is not None, target is not None)
    soft_coef = 0.0 if teacher is None else o["soft_weight"] * (o["temperature"] ** 2 if scale_t2 else 1.0)
    c = student_logits.shape[-1]
    s2 = _rows_view(student_logits, c)
    n = s2.shape[0]
    t2 = None if teacher is None else _rows_view(teacher.detach(), c)
    y = None if target is None else target.reshape(n).to(torch.int64).contiguous()
    w = None if weight is None else weight.detach().reshape(n).to(acc_dtype(student_logits.dtype)).contiguous()
    grad_scale = _grad_scale(o["reduction"], n, y, w, o["ignore_index"], normalizer, student_logits.device)
    compute_grad = student_logits.requires_grad and torch.is_grad_enabled()
    loss, _ = _kd_loss_op(s2, t2, y, w, grad_scale, int(o["teacher_format"]), int(o["divergence"]), o["beta"],
                          o["temperature"], soft_coef, hard, o["label_smoothing"], o["ignore_index"],
                          int(o["reduction"]), compute_grad)
    return loss.reshape(student_logits.shape[:-1]) if o["reduction"] == Reduction.NONE else loss
