"""``pysd.distributed.fused_linear_kd_loss``: the fused linear-head distillation loss with the head
split over the vocabulary across a tensor-parallel group (Megatron's column-parallel output layer)."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch.autograd.function import once_differentiable
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from .._codes import Reduction, acc_dtype
from ..ops.fused_linear_kd_loss import HIDDEN, SPARSE, _check_linear, _chunk_plan, _Head, _teacher_kind
from ..ops.kd_loss import _check_companion
from ..sparse_teacher import SparseTeacher
from ._vocab import Dense, budget_rows, check_sparse_device, reduce_rows, run, unit
from .kd_loss import _collective, _config, _problem

OP = "fused_linear_kd_loss"


class _LinearHead(_Head):
    """The student head shard ``x @ W_r.T + b_r`` (soft-capped), its gradients accumulated per chunk."""

    def context(self, rows: Tensor) -> Tensor:
        return self.x[rows]


class _FusedShard(torch.autograd.Function):
    """Gradients computed in forward (rows re-run in backward for ``reduction="none"``); the input
    gradient is all-reduced over the group in backward when ``reduce_input_grad``."""

    @staticmethod
    def forward(ctx, x, weight, bias, pb, shard, cap, reduction, compute_grad, reduce_input_grad):
        grad_now = compute_grad and reduction != Reduction.NONE
        rows, grads = run(lambda m, valid: _LinearHead(x, weight, bias, cap, grad_now, m), pb, shard, grad_now)
        ctx.args = (pb, shard, cap, reduction, reduce_input_grad)
        if reduction == Reduction.NONE:
            ctx.save_for_backward(x, weight, bias)
        elif compute_grad:
            ctx.save_for_backward(*_cast(grads, x, weight))
        return reduce_rows(rows, pb.grad_scale, reduction, x.dtype)

    @staticmethod
    @once_differentiable  # the saved gradients are constants: a second derivative would be silently 0
    def backward(ctx, grad_loss):
        pb, shard, cap, reduction, reduce_input_grad = ctx.args
        if reduction == Reduction.NONE:
            x, weight, bias = ctx.saved_tensors
            scale = grad_loss.to(acc_dtype(x.dtype))
            _, grads = run(lambda m, valid: _LinearHead(x, weight, bias, cap, True, m),
                           replace(pb, grad_scale=torch.ones_like(pb.grad_scale)), shard, True,
                           row_weight=scale if pb.weight is None else pb.weight * scale)
            gx, gw, gb = _cast(grads, x, weight)
        else:
            gx, gw, gb = ctx.saved_tensors
            if unit(grad_loss):  # loss.backward() seeds 1: no (V_r, H) multiply then
                gx = gx.clone() if reduce_input_grad else gx  # the all-reduce writes in place
            else:
                gx, gw = gx * grad_loss.to(gx.dtype), gw * grad_loss.to(gw.dtype)
                gb = None if gb is None else gb * grad_loss.to(gb.dtype)
        if reduce_input_grad:
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=shard.group)
        return (gx, gw, gb) + (None,) * 6


def _cast(grads, x, weight):
    """The head's accumulators in the parameters' dtypes."""
    gx, gw, gb = grads
    return gx, gw.to(weight.dtype), None if gb is None else gb.to(x.dtype)


def _default_rows(kind: int, width: int, vt: int, esize: int, acc: int) -> int:
    """Chunk rows when ``chunk_size`` is None: the student logits and their gradient, the teacher
    chunk and (dense teacher) the torch temporaries of the row math, within the 256 MiB budget."""
    per_class = 2 * esize + (2 * acc if kind == SPARSE else 8 * acc)
    return budget_rows(width, per_class + (vt * max(esize, acc)) // max(width, 1))


def _local_chunks(kind: int, x: Tensor, teacher, teacher_weight, width: int, chunk_size) -> tuple:
    """(rows, cols) of this rank's chunks, after checking that the teacher covers the shard's classes."""
    if kind == SPARSE:
        check_sparse_device(OP, x.device)
    vt = teacher_weight.shape[0] if kind == HIDDEN else (teacher.shape[-1] if kind != SPARSE else width)
    if vt != width:
        raise ValueError(f"{OP}: the teacher covers {vt} classes on this rank, the student shard {width}: "
                         "give the teacher's shard over the same vocabulary range")
    n = x.reshape(-1, x.shape[-1]).shape[0]
    rows, cols = _chunk_plan(chunk_size, n, width, width, x.element_size())
    if cols < width and kind != SPARSE:
        raise ValueError(f"{OP}: vocabulary pieces (chunk_size=(rows, cols) with cols < V_r) need a SparseTeacher")
    if chunk_size is None:
        rows = _default_rows(kind, width, vt, x.element_size(), acc_dtype(x.dtype).itemsize)
    return rows, cols


def _shard_teacher(kind: int, teacher, teacher_weight, teacher_bias, cap: float, n: int, width: int):
    """The teacher as the engine takes it: the SparseTeacher, or :class:`Dense` rows ``(n, ...)``."""
    if kind == SPARSE:
        return teacher
    if kind == HIDDEN:
        return Dense(teacher.detach().reshape(n, teacher.shape[-1]), teacher_weight.detach(),
                     None if teacher_bias is None else teacher_bias.detach(), cap)
    return Dense(teacher.detach().reshape(n, width))


def fused_linear_kd_loss(student_input: Tensor, student_weight: Tensor, teacher, target: Optional[Tensor] = None,
                         *, process_group=None, vocab_start: int, student_bias: Optional[Tensor] = None,
                         teacher_weight: Optional[Tensor] = None, teacher_bias: Optional[Tensor] = None,
                         logit_softcap: Optional[float] = None, chunk_size=None, reduce_input_grad: bool = True,
                         teacher_format: str = "logits", divergence: str = "fkl", beta: float = 0.5,
                         temperature: float = 1.0, scale_t2: bool = True, hard_weight: Optional[float] = None,
                         soft_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
                         weight: Optional[Tensor] = None, reduction: str = "mean",
                         normalizer: Optional[Tensor] = None) -> Tensor:
    r""":func:`pysd.fused_linear_kd_loss` with the student head (and a teacher head) split over the
    vocabulary across ``process_group``: ``kd_loss(x @ W.T + b, ...)`` of the full vocabulary, where
    this rank holds the classes ``[vocab_start, vocab_start + V_r)``.

    Args:
        student_input: ``(..., H)`` float32/float64/bfloat16/float16 hidden states, the same on every
            rank (as the input of a column-parallel linear layer).
        student_weight: ``(V_r, H)`` this rank's rows of the head; ``student_bias``: ``(V_r,)`` or None.
        teacher: one of
            * the teacher's logits shard ``(..., V_r)`` over the same classes (detached);
            * a :class:`pysd.SparseTeacher` with rows ``(...)`` and **global** class ids, the same on
              every rank (each rank uses the ids in its range; the tail policies stay exact);
            * the teacher's hidden states ``(..., H_t)`` (the same on every rank) with its head shard
              ``teacher_weight (V_r, H_t)`` over the same classes and ``teacher_bias (V_r,)`` or None.
        target: ``(...)`` global class ids or ``ignore_index``, the same on every rank; ignored rows
            are dropped before any matmul.
        process_group: the tensor-parallel group (None: the default group).
        vocab_start: the first global class of this rank's shard; the shards must tile ``[0, V)``
            (uneven widths allowed).
        chunk_size: rows per chunk, or ``(rows, cols)`` to also split the local shard into pieces of
            ``cols`` classes (SparseTeacher only).  None: the most rows whose chunk buffers fit in 256
            MiB (the smallest over the ranks: every rank runs the same chunks).
        reduce_input_grad: the gradient of ``student_input`` is a sum over the group (every rank's
            shard contributes ``g_r @ W_r``).  True (default): the op all-reduces it in backward, so
            every rank's ``student_input.grad`` is the full gradient, as Megatron's
            ``ColumnParallelLinear`` does for its input.  False: each rank gets its own partial, for
            callers that reduce it themselves (an input that went through Megatron's
            ``copy_to_tensor_model_parallel_region`` or ``gather_from_sequence_parallel_region``,
            whose backward does the all-reduce / reduce-scatter).
        every other keyword: as :func:`pysd.fused_linear_kd_loss` (``weight``, ``normalizer``, the
            teacher's temperature and format options the same on every rank).

    Returns:
        the loss of the full vocabulary, identical on every rank.  Gradients flow to
        ``student_input`` (see ``reduce_input_grad``), ``student_weight`` and ``student_bias``
        (this rank's shard: nothing to reduce).

    Communication per chunk of rows, per row: dense / hidden teacher three all-reduces of at most
    3 + 5 + 2 numbers; SparseTeacher ``1 + 7 + k`` (``+ 2`` for jsd with a uniform tail); never an
    all-gather of logits.  Plus one ``(N, H)`` all-reduce of the input gradient in backward (with
    ``reduce_input_grad``), and at the start one ``all_gather_object`` of the options and shard
    layout and one flag all-reduce (a bad input on any rank raises ValueError on every rank, before
    any data moves).  Memory: one chunk of local logits ``(rows, V_r)``, their gradient, the
    teacher's chunk and (dense teacher) a few torch temporaries of the chunk in the accumulation dtype;
    the gradients ``(N, H)``, ``(V_r, H)``, ``(V_r,)`` accumulated in float32 (float64 for float64
    input) during forward.  The SparseTeacher path runs on the CPU (``pysd._C``'s piecewise kernels).
    """
    x, w_s, kind = student_input, student_weight, None
    kw = dict(teacher_format=teacher_format, divergence=divergence, beta=beta, temperature=temperature,
              scale_t2=scale_t2, hard_weight=hard_weight, soft_weight=soft_weight, label_smoothing=label_smoothing,
              ignore_index=ignore_index)
    ok = isinstance(x, Tensor) and isinstance(w_s, Tensor) and w_s.dim() == 2
    width = w_s.shape[0] if ok else 0
    grads = tuple(isinstance(t, Tensor) and t.requires_grad for t in (x, w_s, student_bias))
    compute_grad = torch.is_grad_enabled() and any(grads)
    hidden = teacher_weight is not None and isinstance(teacher, Tensor)
    config = _config(tuple(x.shape) if ok else None, x, teacher if isinstance(teacher, SparseTeacher) else
                     (tuple(teacher.shape) if hidden else type(teacher).__name__), target is None, weight is None,
                     normalizer is None, student_bias is None, teacher_bias is None, reduction, grads, compute_grad,
                     bool(reduce_input_grad), repr(logit_softcap), repr(chunk_size), sorted(kw.items()))
    state = {}

    def local():
        _check_linear("student", x, w_s, student_bias)
        _checks.integer(OP, "vocab_start", vocab_start, 0)
        _checks.boolean(OP, "reduce_input_grad", reduce_input_grad)
        state["kind"] = _teacher_kind(teacher, teacher_weight, teacher_bias, x.shape[:-1], x.device)
        state["cap"] = 0.0 if logit_softcap is None else _checks.real(OP, "logit_softcap", logit_softcap, 0.0,
                                                                     lo_open=True)
        _check_companion("target", target, x.shape[:-1], x.device)
        _check_companion("weight", weight, x.shape[:-1], x.device)
        rows, state["cols"] = _local_chunks(state["kind"], x, teacher, teacher_weight, width, chunk_size)
        return rows

    def resolve(v, chunk_rows):
        x2 = x.reshape(-1, x.shape[-1])
        t = _shard_teacher(state["kind"], teacher, teacher_weight, teacher_bias, state["cap"], x2.shape[0], width)
        return x2, _problem(x2, x2.shape[0], v, state["kind"], t, target, weight, normalizer, reduction, chunk_rows,
                            state["cols"], True, kw)

    shard, (x2, pb) = _collective(OP, process_group, config, vocab_start, width, local, resolve)
    red = Reduction[reduction.upper()]
    loss = _FusedShard.apply(x2, w_s, student_bias, pb, shard, state["cap"], red, compute_grad,
                             bool(reduce_input_grad))
    return loss.reshape(x.shape[:-1]) if red == Reduction.NONE else loss

