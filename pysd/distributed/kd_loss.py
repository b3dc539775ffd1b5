"""``pysd.distributed.global_normalizer`` (the loss normalizer of :func:`pysd.kd_loss` over data-parallel
ranks) and ``pysd.distributed.kd_loss`` (the loss of logits split over the vocabulary across a
tensor-parallel group)."""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from .._codes import Reduction, TeacherFormat, acc_dtype, options
from ..ops.fused_linear_kd_loss import DENSE, SPARSE, _dense_options
from ..ops.kd_loss import _check_companion, _check_normalizer, _check_student, _check_tensors, _rows_view
from ..ops.sparse_kd_loss import sparse_kd_plan
from ..sparse_teacher import SparseTeacher
from ._comm import agree_flag, message
from ._vocab import Dense, Problem, ShardHead, budget_rows, check_sparse_device, layout, reduce_rows, run, unit

OP = "global_normalizer"


def _check(target, ignore_index, weight) -> None:
    """This rank's argument checks (TypeError / ValueError naming the argument)."""
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise TypeError(f"{OP}: target must be an integer tensor of class indices, got "
                        f"{target.dtype if isinstance(target, Tensor) else type(target).__name__}")
    _checks.integer(OP, "ignore_index", ignore_index)
    if weight is not None:
        if not isinstance(weight, Tensor) or not weight.is_floating_point():
            raise TypeError(f"{OP}: weight must be a floating-point tensor or None")
        if weight.numel() != target.numel():
            raise ValueError(f"{OP}: weight has {weight.numel()} elements, target {target.numel()}")
        if weight.device != target.device:
            raise ValueError(f"{OP}: weight is on {weight.device}, target on {target.device}")


def global_normalizer(target: Tensor, ignore_index: int = -100, weight: Optional[Tensor] = None,
                      group=None) -> Tensor:
    """0-d float64 tensor: the non-ignored rows of ``target`` (or the sum of their ``weight``) over
    every rank of ``group``, for ``pysd.kd_loss(..., reduction="mean", normalizer=...)``.

    The all-reduce runs on the tensor's device and the result is never read on the host, so a
    training step does not synchronise.  With it, the summed gradients of the ranks equal the gradient
    of the single-process mean over the union of the batches, whatever each rank ignores.
    ``DistributedDataParallel`` *averages* gradients over the P ranks: pass
    ``global_normalizer(...) / dist.get_world_size()`` there.

    Args:
        target: ``(...)`` integer class indices or ``ignore_index`` (the ``target`` of ``kd_loss``).
        weight: ``(...)`` per-row weights or None (count rows).

    Every rank checks its arguments and the ranks agree on the outcome with one small all-reduce before
    the sum moves: a bad input on any rank raises ``ValueError`` on every rank.  On an NCCL group that
    flag is read back (one host sync); the sum itself never is.
    """
    error = None
    try:
        _check(target, ignore_index, weight)
    except Exception as exc:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = message(OP, exc)
    agree_flag(OP, group, error)
    valid = target.reshape(-1) != ignore_index
    if weight is None:
        total = valid.sum().to(torch.float64)
    else:
        total = (weight.detach().reshape(-1).to(torch.float64) * valid).sum()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


# --------------------------------------------------------------------------- vocabulary-parallel kd_loss

KD = "kd_loss"


def _config(*items) -> str:
    """What every rank must pass alike, as comparable text (shapes, dtypes, options)."""
    def one(x):
        if isinstance(x, Tensor):
            return ("tensor", str(x.dtype), str(x.device.type))
        if isinstance(x, SparseTeacher):
            return ("sparse", tuple(x.shape), x.k, x.format, x.tail, x.temperature)
        return x
    return repr(tuple(one(x) for x in items))


def _collective(op: str, group, config: str, start, width: int, local, resolve):
    """Local checks (``local()``, which returns the chunk rows this rank asks for), agreement on them
    and on the vocabulary layout, then the checks that need the global vocabulary ``V``
    (``resolve(V, chunk_rows)``), agreed with one flag.  A failure on any rank raises ValueError on
    every rank before any data collective."""
    error, rows = None, 1
    try:
        rows = local()
    except Exception as exc:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = message(op, exc)
    shard, chunk_rows = layout(op, group, config, error, start, width, rows)
    error, out = None, None
    try:
        out = resolve(shard.vocab, chunk_rows)
    except Exception as exc:  # noqa: BLE001
        error = message(op, exc)
    agree_flag(op, group, error)
    return shard, out


def _problem(x: Tensor, n: int, v: int, kind: int, teacher, target, weight, normalizer, reduction, chunk_rows,
             chunk_cols, soft: bool, kw: dict) -> Problem:
    """The validated :class:`Problem` of a call over a vocabulary of ``v`` (``x``: the rows, for their
    dtype and device; ``kind``: DENSE / SPARSE / HIDDEN; ``kw``: the kd_loss options)."""
    red = _checks.option("kd_loss", "reduction", reduction, Reduction, options(Reduction))
    probe = torch.empty((), dtype=x.dtype, device=x.device).expand(n, v)  # shapes for the checks, no memory
    ignore_index = _checks.integer("kd_loss", "ignore_index", kw["ignore_index"])
    _check_tensors(probe, None, None if target is None else target.reshape(n),
                   None if weight is None else weight.reshape(n), TeacherFormat.NONE, ignore_index)
    _check_normalizer(normalizer, red, reduction)
    if kind == SPARSE:
        kw = {k: kw[k] for k in kw if k != "teacher_format"}
        plan = sparse_kd_plan(teacher.reshape(n), v, target, dtype=x.dtype, device=x.device, weight=weight,
                              reduction=reduction, normalizer=normalizer, **kw)
        return Problem(n, plan.target, plan.weight, plan.grad_scale, plan.options, None, (plan.ids, plan.vals),
                       x.dtype, chunk_rows, chunk_cols)
    opts, y, w, scale = _dense_options(x, v, target, weight, normalizer, red, kind, kw["teacher_format"],
                                       kw["divergence"], kw["beta"], kw["temperature"], kw["scale_t2"],
                                       kw["hard_weight"], kw["soft_weight"], kw["label_smoothing"], ignore_index)
    if not soft:
        opts["soft_coef"] = 0.0
        opts["hard_weight"] = _checks.hard_weight("kd_loss", kw["hard_weight"], False, target is not None)
    return Problem(n, y, w, scale, opts, teacher, None, x.dtype, chunk_rows, chunk_cols)


def _check_shard_teacher(teacher, shape, dtype, fmt) -> None:
    """A dense teacher shard: ``shape``, ``dtype``, detached, no negative probabilities."""
    if not isinstance(teacher, Tensor):
        raise TypeError(f"kd_loss: teacher must be a tensor shard, a SparseTeacher or None, got "
                        f"{type(teacher).__name__}")
    if teacher.requires_grad and torch.is_grad_enabled():
        raise ValueError("kd_loss: teacher requires grad; pass teacher.detach()")
    if teacher.shape != shape or teacher.dtype != dtype:
        raise ValueError(f"kd_loss: the teacher shard must be {tuple(shape)} {dtype} like the student shard, got "
                         f"{tuple(teacher.shape)} {teacher.dtype}")
    if fmt == "probs" and teacher.numel() and bool((teacher < 0).any()):
        raise ValueError("kd_loss: teacher_format='probs' but the teacher has negative entries")


class _ShardLoss(torch.autograd.Function):
    """Loss of a logits shard; the gradient buffer is written in forward (as pysd.kd_loss does)."""

    @staticmethod
    def forward(ctx, s, pb, shard, reduction, compute_grad):
        rows, grads = run(lambda m, valid: ShardHead(s, compute_grad, valid), pb, shard, compute_grad)
        ctx.reduction = reduction
        ctx.save_for_backward(grads[0] if compute_grad else None)
        return reduce_rows(rows, pb.grad_scale, reduction, s.dtype)

    @staticmethod
    @once_differentiable  # the saved gradients are constants: a second derivative would be silently 0
    def backward(ctx, grad_loss):
        (buf,) = ctx.saved_tensors
        if buf is None:
            return (None,) * 5
        if ctx.reduction != Reduction.NONE and unit(grad_loss):
            return (buf,) + (None,) * 4  # loss.backward(): the buffer is the gradient, no (N, V_r) multiply
        g = grad_loss.to(buf.dtype)
        return (buf * (g.unsqueeze(-1) if ctx.reduction == Reduction.NONE else g),) + (None,) * 4


def kd_loss(student_logits: Tensor, teacher=None, target: Optional[Tensor] = None, *, process_group=None,
            vocab_start: int, teacher_format: str = "logits", divergence: str = "fkl", beta: float = 0.5,
            temperature: float = 1.0, scale_t2: bool = True, hard_weight: Optional[float] = None,
            soft_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
            weight: Optional[Tensor] = None, reduction: str = "mean", normalizer: Optional[Tensor] = None,
            check_finite: Optional[bool] = None) -> Tensor:
    r""":func:`pysd.kd_loss` of logits split over the vocabulary across ``process_group`` (tensor
    parallelism): every rank holds the same rows and the classes ``[vocab_start, vocab_start + V_r)``.

    Args:
        student_logits: ``(..., V_r)`` float32/float64/bfloat16/float16, this rank's shard.
        teacher: the teacher's logits shard ``(..., V_r)`` over the same classes (same dtype,
            detached, in ``teacher_format``), or a :class:`pysd.SparseTeacher` with rows ``(...)``
            and **global** class ids, the same on every rank (each rank uses the ids in its range;
            the tail policies stay exact), or None (hard term only).
        target: ``(...)`` global class ids or ``ignore_index``, the same on every rank.
        process_group: the tensor-parallel group (None: the default group).
        vocab_start: the first global class of this rank's shard; the shards must tile ``[0, V)``.
        every other keyword: as :func:`pysd.kd_loss` (``weight``, ``normalizer`` the same on every rank).

    Returns:
        the loss of the full vocabulary, identical on every rank, as :func:`pysd.kd_loss` returns it;
        the gradient flows to this rank's shard only (nothing to reduce).

    Communication, per row: dense teacher three all-reduces of at most 3 + 5 + 2 numbers (maxima,
    sums of exponentials / target logit / row sum, the divergence's partial sums); sparse teacher
    ``1 + (7 + k)`` (max, rescaled statistics and the k gathered student logits), ``+ 2`` for jsd with a
    uniform tail.  Never an all-gather of logits.  Before that: one ``all_gather_object`` of the
    options and shard layout and one flag all-reduce (a bad input on any rank raises ValueError on
    every rank).  Memory: one ``(N, V_r)`` gradient buffer when the shard requires grad, and per chunk
    of rows (256 MiB budget) a few ``(rows, V_r)`` temporaries in the accumulation dtype (float32,
    float64 for float64).  The sparse teacher runs on the CPU (``pysd._C``'s piecewise kernels).
    """
    s, kind = student_logits, SPARSE if isinstance(teacher, SparseTeacher) else DENSE
    kw = dict(teacher_format=teacher_format, divergence=divergence, beta=beta, temperature=temperature,
              scale_t2=scale_t2, hard_weight=hard_weight, soft_weight=soft_weight, label_smoothing=label_smoothing,
              ignore_index=ignore_index)
    is_t = isinstance(s, Tensor)
    width = s.shape[-1] if is_t and s.dim() else 0
    compute_grad = is_t and s.requires_grad and torch.is_grad_enabled()
    config = _config(tuple(s.shape[:-1]) if is_t else None, s, teacher if kind == SPARSE else teacher is None,
                     target is None, weight is None, normalizer is None, reduction, compute_grad, sorted(kw.items()))

    def local():
        _check_student(s)
        _checks.integer(KD, "vocab_start", vocab_start, 0)
        _check_companion("target", target, s.shape[:-1], s.device)
        _check_companion("weight", weight, s.shape[:-1], s.device)
        if teacher is None and target is None:
            raise ValueError("kd_loss: give a teacher (soft term), a target (hard term), or both")
        if kind == SPARSE:
            check_sparse_device(KD, s.device)
        if kind == SPARSE and teacher.shape != s.shape[:-1]:
            raise ValueError(f"kd_loss: the SparseTeacher's rows {tuple(teacher.shape)} must match student_logits "
                             f"without V_r {tuple(s.shape[:-1])}")
        if kind == DENSE and teacher is not None:
            _check_shard_teacher(teacher, s.shape, s.dtype, teacher_format)
        if _checks.finite_option(check_finite):
            for name, t in (("student_logits", s), ("teacher", teacher if kind == DENSE else None), ("weight", weight)):
                _checks.finite(KD, name, t)
        return budget_rows(width, 8 * acc_dtype(s.dtype).itemsize)

    def resolve(v, chunk_rows):
        x = _rows_view(s, width)
        t = None if teacher is None or kind == SPARSE else Dense(_rows_view(teacher.detach(), width))
        return x, _problem(x, x.shape[0], v, kind, t if kind == DENSE else teacher, target, weight, normalizer,
                           reduction, chunk_rows, width, teacher is not None, kw)

    shard, (x, pb) = _collective(KD, process_group, config, vocab_start, width, local, resolve)
    red = Reduction[reduction.upper()]
    loss = _ShardLoss.apply(x, pb, shard, red, compute_grad)
    return loss.reshape(s.shape[:-1]) if red == Reduction.NONE else loss
