"""``pysd.kd_loss``: the fused distillation loss (hard CE + tempered soft divergence)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from .._ref import kd_loss as _ref_kd  # noqa: F401  (registers the torch backend)
from ..sparse_teacher import SparseTeacher

_DIVERGENCES = {"fkl": 0, "rkl": 1, "jsd": 2}
_FORMATS = {"logits": 0, "probs": 1, "logprobs": 2}
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- backends


def _extension_backend(module: str):
    def run(student, teacher, target, weight, grad_scale, *, compute_grad: bool, teacher_format: int,
            divergence: int, beta: float, temperature: float, soft_coef: float, hard_weight: float,
            label_smoothing: float, ignore_index: int):
        mod = _backend.extension(module)
        n, c = student.shape
        rows = torch.empty(n, dtype=_acc_dtype(student.dtype), device=student.device)
        grad = torch.empty((n, c), dtype=student.dtype, device=student.device) if compute_grad else None
        stream = torch.cuda.current_stream(student.device).cuda_stream if student.is_cuda else 0
        mod.kd_loss(
            _DTYPE_NAMES[student.dtype], n, c,
            student.data_ptr(), student.stride(0),
            0 if teacher is None else teacher.data_ptr(), 0 if teacher is None else teacher.stride(0),
            0 if target is None else target.data_ptr(),
            0 if weight is None else weight.data_ptr(),
            grad_scale.data_ptr(),
            0 if grad is None else grad.data_ptr(), c,
            rows.data_ptr(),
            divergence, teacher_format if teacher is not None else -1, beta, temperature, soft_coef,
            hard_weight, label_smoothing, ignore_index, stream,
        )
        return rows, grad

    return run


_backend.register("kd_loss", "cpp")(_extension_backend("_C"))
_backend.register("kd_loss", "cuda")(_extension_backend("_C_cuda"))
_backend.register("kd_loss", "numba", "pysd._numba.kd_loss:kd_loss_backend")


def _run_backend(student, teacher, target, weight, grad_scale, compute_grad, options):
    fn = _backend.select("kd_loss", student.device.type)[1]
    return fn(student, teacher, target, weight, grad_scale, compute_grad=compute_grad, **options)


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
    options = dict(teacher_format=teacher_format, divergence=divergence, beta=beta, temperature=temperature,
                   soft_coef=soft_coef, hard_weight=hard_weight, label_smoothing=label_smoothing,
                   ignore_index=ignore_index)
    rows, grad = _run_backend(student, teacher, target, weight, grad_scale, compute_grad, options)
    if reduction == _REDUCTIONS["none"]:
        loss = rows.to(student.dtype)
    else:
        loss = (rows.sum() * grad_scale.to(rows.dtype)).to(student.dtype)
    return loss, (grad if grad is not None else student.new_empty(0))


@_kd_loss_op.register_fake
def _(student, teacher, target, weight, grad_scale, teacher_format, divergence, beta, temperature, soft_coef,
      hard_weight, label_smoothing, ignore_index, reduction, compute_grad):
    n = student.shape[0]
    loss = student.new_empty((n,) if reduction == _REDUCTIONS["none"] else ())
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty(0)
    return loss, grad


def _setup_context(ctx, inputs, output):
    # The gradient-buffer output is never differentiated; without this autograd
    # would hand backward an (N, C) tensor of zeros for it.
    ctx.set_materialize_grads(False)
    ctx.reduction = inputs[13]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_buffer):
    (buf,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 15
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # The saved buffer is a constant: a second derivative through it would be silently 0.
        raise RuntimeError("pysd.kd_loss does not support double backward (create_graph=True); "
                           "use pysd._ref.kd_loss.kd_loss_rows for higher-order gradients")
    if ctx.reduction == _REDUCTIONS["none"]:
        g = buf * grad_loss.to(buf.dtype).unsqueeze(-1)
    elif (not torch.compiler.is_compiling() and grad_loss.device.type == "cpu"
          and grad_loss.item() == 1.0):
        g = buf  # the usual loss.backward(): the kernel already wrote the gradient
    else:
        g = buf * grad_loss.to(buf.dtype)
    return g, None, None, None, None, None, None, None, None, None, None, None, None, None, None


_kd_loss_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- validation


def _rows_view(x: Tensor, c: int) -> Tensor:
    """``(..., C)`` → ``(N, C)`` with unit column stride, without copying when possible."""
    x2 = x.reshape(-1, c) if x.dim() != 2 else x
    if c > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


def _check_number(name: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"kd_loss: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"kd_loss: {name} must be finite, got {value}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"kd_loss: {name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"kd_loss: {name} must be {'<' if hi_open else '<='} {hi}, got {value}")
    return v


def _choice(name: str, value, options) -> int:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"kd_loss: {name} must be one of {sorted(options)}, got {value!r}")
    return options[value]


def _check_rows(student_logits: Tensor, target, weight, normalizer, red: int, reduction: str, ignore_index: int,
                checks: bool) -> None:
    """Checks of the per-row arguments shared by every loss over ``(..., C)`` logits."""
    c = student_logits.shape[-1]
    batch = student_logits.shape[:-1]
    dev = student_logits.device
    if target is not None:
        if not isinstance(target, Tensor):
            raise TypeError(f"kd_loss: target must be a torch.Tensor or None, got {type(target).__name__}")
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"kd_loss: target must hold integer class indices, got {target.dtype}")
        if target.shape != batch:
            raise ValueError(f"kd_loss: target must have shape {tuple(batch)} (student_logits without C), "
                             f"got {tuple(target.shape)}")
        if target.device != dev:
            raise ValueError(f"kd_loss: target is on {target.device}, student_logits on {dev}")
        if checks and target.numel():
            bad = ((target < 0) | (target >= c)) & (target != ignore_index)
            if bool(bad.any()):
                v = int(target[bad].flatten()[0])
                raise ValueError(f"kd_loss: target has class index {v} outside [0, {c}) "
                                 f"(and not ignore_index={ignore_index})")
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"kd_loss: weight must be a torch.Tensor or None, got {type(weight).__name__}")
        if not weight.dtype.is_floating_point:
            raise TypeError(f"kd_loss: weight must be floating point, got {weight.dtype}")
        if weight.shape != batch:
            raise ValueError(f"kd_loss: weight must have shape {tuple(batch)}, got {tuple(weight.shape)}")
        if weight.device != dev:
            raise ValueError(f"kd_loss: weight is on {weight.device}, student_logits on {dev}")
        if checks and weight.numel() and bool((weight < 0).any()):
            raise ValueError("kd_loss: weight must be non-negative")
    if normalizer is not None:
        if red != _REDUCTIONS["mean"]:
            raise ValueError(f"kd_loss: normalizer replaces the 'mean' denominator; got reduction={reduction!r}")
        if not isinstance(normalizer, Tensor) or normalizer.numel() != 1:
            raise TypeError("kd_loss: normalizer must be a one-element tensor")


def _grad_scale(red: int, n: int, dev, y, w, ignore_index: int, normalizer) -> Tensor:
    """d(reduced loss)/d(row loss) before weights, as a float64 0-d tensor (no host sync)."""
    f64 = dict(dtype=torch.float64, device=dev)
    if red == _REDUCTIONS["mean"]:
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
        grad_scale = torch.where(denom > 0, 1.0 / denom, torch.zeros((), **f64))
    elif red == _REDUCTIONS["batchmean"]:
        grad_scale = torch.tensor(1.0 / n if n else 0.0, **f64)
    else:
        grad_scale = torch.ones((), **f64)
    return grad_scale


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
    hard_weight: float = 0.0,
    soft_weight: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    normalizer: Optional[Tensor] = None,
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
        hard_weight, soft_weight: term weights.  With ``teacher=None`` the loss is the CE
            alone, weighted by ``hard_weight`` (or 1 if ``hard_weight`` is 0).
        reduction: ``"mean"`` divides the sum by the sum of the weights of non-ignored rows
            (their count without ``weight``); ``"sum"``; ``"batchmean"`` divides by the
            number of rows; ``"none"`` returns the per-row losses ``(...)``.  A mean over
            zero rows (empty batch, every row ignored, zero total weight) is 0 with zero
            gradient, not NaN.
        normalizer: optional 0-d tensor replacing the "mean" denominator (e.g. the global
            count of non-ignored rows under DDP, or the item count of a gradient-accumulation
            step); no host synchronisation.

    Returns:
        0-d loss, or ``(...)`` for ``reduction="none"``, in the input dtype.  bf16/fp16
        inputs are computed in float32 and the gradient is returned in the input dtype.

    Memory: the op allocates the ``(N,)`` row losses and, when the student requires grad,
    one ``(N, C)`` gradient buffer that is written during the forward pass and handed
    to autograd (for ``loss.backward()`` it becomes ``student.grad`` without a copy).
    No other ``(N, C)`` temporaries (the numba fallback upcasts bf16/fp16 inputs).
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
    if not isinstance(student_logits, Tensor):
        raise TypeError(f"kd_loss: student_logits must be a torch.Tensor, got {type(student_logits).__name__}")
    if student_logits.dtype not in _FLOATS:
        raise TypeError(f"kd_loss: student_logits must be float32/float64/bfloat16/float16, got {student_logits.dtype}")
    if student_logits.dim() < 1:
        raise ValueError("kd_loss: student_logits must have shape (..., C), got a 0-d tensor")
    c = student_logits.shape[-1]
    if c < 1:
        raise ValueError("kd_loss: student_logits must have at least one class (C >= 1)")
    batch = student_logits.shape[:-1]
    dev = student_logits.device
    tf = _choice("teacher_format", teacher_format, _FORMATS)
    div = _choice("divergence", divergence, _DIVERGENCES)
    red = _choice("reduction", reduction, _REDUCTIONS)
    beta = _check_number("beta", beta, 0.0, 1.0)
    temperature = _check_number("temperature", temperature, 0.0, lo_open=True)
    hard_weight = _check_number("hard_weight", hard_weight, 0.0)
    soft_weight = _check_number("soft_weight", soft_weight, 0.0)
    label_smoothing = _check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"kd_loss: ignore_index must be an int, got {type(ignore_index).__name__}")
    if teacher is None and target is None:
        raise ValueError("kd_loss: give a teacher (soft term), a target (hard term), or both")
    if div == _DIVERGENCES["jsd"] and beta in (0.0, 1.0):
        div = _DIVERGENCES["fkl"] if beta == 0.0 else _DIVERGENCES["rkl"]
    checks = not torch.compiler.is_compiling()

    if teacher is not None:
        if not isinstance(teacher, Tensor):
            raise TypeError(f"kd_loss: teacher must be a torch.Tensor or None, got {type(teacher).__name__}")
        if teacher.requires_grad and torch.is_grad_enabled():
            raise ValueError("kd_loss: teacher requires grad; pass teacher.detach() (the loss only trains the student)")
        if teacher.shape != student_logits.shape:
            raise ValueError(f"kd_loss: teacher must have the student's shape {tuple(student_logits.shape)}, "
                             f"got {tuple(teacher.shape)}")
        if teacher.dtype != student_logits.dtype:
            raise TypeError(f"kd_loss: teacher dtype {teacher.dtype} differs from student_logits dtype "
                            f"{student_logits.dtype}")
        if teacher.device != dev:
            raise ValueError(f"kd_loss: teacher is on {teacher.device}, student_logits on {dev}")
        if checks and tf == _FORMATS["probs"] and teacher.numel() and bool((teacher < 0).any()):
            raise ValueError("kd_loss: teacher_format='probs' but the teacher has negative entries")
    _check_rows(student_logits, target, weight, normalizer, red, reduction, ignore_index, checks)

    if teacher is None and hard_weight == 0.0:
        hard_weight = 1.0
    soft_coef = soft_weight * (temperature * temperature if scale_t2 else 1.0) if teacher is not None else 0.0

    s2 = _rows_view(student_logits, c)
    n = s2.shape[0]
    t2 = None if teacher is None else _rows_view(teacher.detach(), c)
    acc = _acc_dtype(student_logits.dtype)
    y = None if target is None else target.reshape(n).to(torch.int64).contiguous()
    w = None if weight is None else weight.detach().reshape(n).to(acc).contiguous()

    grad_scale = _grad_scale(red, n, dev, y, w, ignore_index, normalizer)

    compute_grad = student_logits.requires_grad and torch.is_grad_enabled()
    loss, _ = _kd_loss_op(s2, t2, y, w, grad_scale, tf, div, beta, temperature, soft_coef, hard_weight,
                          label_smoothing, ignore_index, red, compute_grad)
    return loss.reshape(batch) if red == _REDUCTIONS["none"] else loss
