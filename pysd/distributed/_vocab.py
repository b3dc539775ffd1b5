"""The engine of the vocabulary-parallel losses (:func:`pysd.distributed.kd_loss`,
:func:`pysd.distributed.fused_linear_kd_loss`): rows chunk by chunk, each rank sweeping only its
vocabulary shard, and per row only O(1) statistics crossing the group.

Per chunk of ``c`` rows (every rank holds the same rows; shards split the classes):

* dense teacher (a logits shard, or hidden states times a head shard), in torch on the chunk:
  all-reduce MAX of the row maxima (student at ``1/T``, teacher at ``1/T``, student at 1), all-reduce
  SUM of the sums of exponentials at those maxima (and the target logit, the row sum for label
  smoothing, the teacher's mass for ``"probs"``), then, with the global log-normalizers known, an
  all-reduce SUM of the divergence's partial sums (its value and ``sum_c q_c f_c`` for rkl / jsd), then
  the gradient of the local logits.  Three collectives, at most ``3 + 5 + 2`` numbers per row.
* :class:`pysd.SparseTeacher` (global ids): the piecewise kernels of
  :mod:`pysd.ops.sparse_kd_loss` on the local pieces (``v0`` shifted by ``vocab_start``; each rank
  sees only the teacher ids in its range), all-reduce MAX of the student's max, all-reduce SUM of the
  rescaled statistics together with the ``k`` gathered student logits (each owned by one rank, the
  others add 0), the jsd-uniform tail sweep and its SUM when needed, then finalize / apply.
  ``8 + k`` numbers per row (``+ 2`` for jsd with a uniform tail).

A *head* turns a chunk's context into logits over local classes ``[v0, v1)`` and takes their gradient
back, with the protocol of the linear head of :mod:`pysd.ops.fused_linear_kd_loss` (``context(rows)``,
``logits(ctx, v0, v1)``, ``backward(out_rows, ctx, z, g, v0, v1, first)`` with ``out_rows`` the chunk's
slice of the non-ignored rows, ``finish_rows()``, ``gradients(valid)``): the shard of given logits
(:class:`ShardHead`) or that linear head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .._codes import Divergence, Reduction, TeacherFormat, acc_dtype
from ..ops import sparse_kd_loss as skd
from ..ops.fused_linear_kd_loss import _chunk_logits
from ._comm import agree

BUDGET = 256 << 20  # bytes of chunk buffers per rank when the chunk is not given


@dataclass
class Shard:
    """This rank's classes ``[start, start + width)`` of a vocabulary of ``vocab`` split over ``group``."""

    group: object
    start: int
    width: int
    vocab: int


def layout(op: str, group, config: tuple, error: Optional[str], start, width: int, rows: int) -> Tuple[Shard, int]:
    """Agree on options and local validity (ValueError on every rank if any rank failed or the options
    differ), then on the vocabulary: the shards must tile ``[0, V)`` without gap or overlap.  Returns
    the shard and the chunk rows (the smallest any rank asked for)."""
    extras = agree(op, group, config, error, (start, width, rows))
    spans = sorted((s, w) for s, w, _ in extras)
    at = 0
    for r, (s, w) in enumerate(spans):
        if s != at:
            raise ValueError(f"pysd.distributed.{op}: the vocabulary shards (vocab_start, width) {spans} do not "
                             f"tile [0, V): a shard starts at {s} where {at} was expected")
        at += w
    return Shard(group, int(start), width, at), max(1, min(c for _, _, c in extras))


def check_sparse_device(op: str, device: torch.device) -> None:
    """The piecewise sparse-teacher kernels run on the CPU only (``pysd._C``)."""
    if device.type != "cpu":
        raise ValueError(f"{op}: a SparseTeacher needs CPU tensors here (the piecewise sparse kernels run on the "
                         f"CPU only), got {device}; give the teacher as a dense logits shard or hidden states")


def budget_rows(width: int, per_class: int) -> int:
    """Rows of one chunk whose ``per_class`` bytes per local class fit in :data:`BUDGET`."""
    return max(1, BUDGET // max(1, width * per_class))


def _all_reduce(t: Tensor, op, group) -> Tensor:
    if t.numel():
        dist.all_reduce(t, op=op, group=group)
    return t


class ShardHead:
    """A head over given logits ``s (N, V_r)``: the chunk's context is its rows of ``s``; the gradient
    goes into one ``(N, V_r)`` buffer (the only full-size allocation).  Same protocol as the linear
    head of :mod:`pysd.ops.fused_linear_kd_loss`: ``backward`` takes the chunk's slice of the
    compacted (non-ignored) rows ``valid``."""

    def __init__(self, s: Tensor, compute_grad: bool, valid: Optional[Tensor]):
        self.s, self.valid = s, valid
        self.grad = None
        if compute_grad:  # every entry is written when no row is ignored
            alloc = torch.empty_like if valid is None else torch.zeros_like
            self.grad = alloc(s, memory_format=torch.contiguous_format)

    def context(self, rows) -> Tensor:
        return self.s[rows]

    def logits(self, ctx: Tensor, v0: int, v1: int) -> Tensor:
        return ctx[:, v0:v1]

    def backward(self, out_rows: slice, ctx, z, g, v0, v1, first) -> None:
        rows = out_rows if self.valid is None else self.valid[out_rows]
        self.grad[rows, v0:v1] = g.to(self.grad.dtype)

    def finish_rows(self) -> None:
        pass

    def gradients(self, valid) -> Tuple[Tensor]:
        return (self.grad,)


# --------------------------------------------------------------------------- dense teacher


@dataclass
class Dense:
    """A dense teacher shard: logits ``(N, V_r)`` or hidden states ``(N, H_t)`` with ``weight (V_r, H_t)``."""

    teacher: Tensor
    weight: Optional[Tensor] = None
    bias: Optional[Tensor] = None
    cap: float = 0.0

    def rows(self, rows: Tensor) -> Tensor:
        t = self.teacher[rows]
        return t if self.weight is None else _chunk_logits(t, self.weight, self.bias, self.cap)


def _dense_stats(s, t, yc, o, shard):
    """Global log-normalizers ``lse_*`` and sums ``(c,)`` of one chunk, and the softmaxes of its local
    columns over the full vocabulary ``q_z`` (student at ``1/T``), ``q_t`` (teacher), ``q_1`` (student
    at 1, the same tensor as ``q_z`` when ``T == 1``); two collectives."""
    probs = o["teacher_format"] == TeacherFormat.PROBS
    soft, hard = t is not None, yc is not None
    same = soft and hard and o["temperature"] == 1.0
    inv_t = 1.0 / o["temperature"]
    a = (s if inv_t == 1.0 else s * inv_t) if soft else None
    u = (t if inv_t == 1.0 else t * inv_t) if soft and not probs else None
    st = {"a": a, "u": u}
    terms = [(name, x) for name, x in (("z", a), ("t", u), ("1", s if hard and not same else None))
             if x is not None]
    if not terms:
        return st
    mx = _all_reduce(torch.stack([x.amax(1) for _, x in terms], 1), dist.ReduceOp.MAX, shard.group)
    exps = [torch.exp(x - mx[:, i:i + 1]) for i, (_, x) in enumerate(terms)]
    cols = [e.sum(1) for e in exps]
    if soft and probs:
        cols.append(t.sum(1))
    if hard:
        local = (yc >= shard.start) & (yc < shard.start + shard.width)
        idx = torch.where(local, yc - shard.start, 0).unsqueeze(1)
        cols.append(torch.where(local, s.gather(1, idx).squeeze(1), 0.0))
        cols.append(s.sum(1) if o["label_smoothing"] != 0.0 else torch.zeros_like(cols[-1]))
        st["local_y"] = local
    sums = _all_reduce(torch.stack(cols, 1), dist.ReduceOp.SUM, shard.group)
    for i, (name, _) in enumerate(terms):
        st["lse_" + name] = mx[:, i] + torch.log(sums[:, i])
        st["q_" + name] = exps[i].div_(sums[:, i:i + 1])
    if same:
        st["lse_1"], st["q_1"] = st["lse_z"], st["q_z"]
    j = len(terms)
    if soft and probs:
        st["mass_p"] = sums[:, j]
        j += 1
    if hard:
        st["sy"], st["ssum"] = sums[:, j], sums[:, j + 1]
    return st


def _pdot(w: Tensor, x: Tensor) -> Tensor:
    """``sum_c w_c x_c`` per row with ``0 * anything = 0`` (``x`` is overwritten where ``w == 0``)."""
    return (w * x.masked_fill_(w <= 0, 0.0)).sum(1)


def _col(v: Tensor) -> Tensor:
    return v.unsqueeze(1)


def _dense_soft(st, t, o, shard):
    """The soft term of a chunk: (divergence ``(c,)``, gradient w.r.t. ``s/T`` ``(c, V_r)``, a fresh
    tensor); one collective.  ``log q = a - lse_z``, ``log p = u - lse_t`` (or ``log t`` for probs)."""
    div, beta, probs = o["divergence"], o["beta"], o["teacher_format"] == TeacherFormat.PROBS
    a, q, lse_z = st["a"], st["q_z"], st["lse_z"]
    p = t if probs else st["q_t"]
    if div == Divergence.FKL:  # sum p (log p - log q) = sum p (u - a) + (lse_z - lse_t) sum p
        diff = torch.log(t).sub_(a) if probs else st["u"] - a
        part = _all_reduce(_pdot(p, diff), dist.ReduceOp.SUM, shard.group)
        mass = st["mass_p"] if probs else None
        offset = lse_z * mass if probs else lse_z - st["lse_t"]
        gz = torch.sub(q, p) if mass is None else (q * _col(mass)).sub_(p)
        return part + offset, gz
    logp = torch.log(t) if probs else st["u"] - _col(st["lse_t"])
    if div == Divergence.RKL:
        f, scale = (a - _col(lse_z)).sub_(logp), 1.0  # log q - log p
        part = _all_reduce(_pdot(q, f), dist.ReduceOp.SUM, shard.group)
        d, g_sum = part, part
    else:
        logq = a - _col(lse_z)
        logm = torch.logaddexp(logp + math.log(beta), logq + math.log(1.0 - beta))
        f, scale = logq.sub_(logm), 1.0 - beta  # log q - log m
        qf = _pdot(q, f)
        local = torch.stack([beta * _pdot(p, logp.sub_(logm)) + scale * qf, qf], 1)
        part = _all_reduce(local, dist.ReduceOp.SUM, shard.group)
        d, g_sum = part[:, 0], part[:, 1]
    return d, f.sub_(_col(g_sum)).mul_(q).mul_(scale)  # q (f - sum q f); f was zeroed where q == 0


def dense_chunk(z: Tensor, t: Optional[Tensor], yc, wc, grad_scale, o: dict, shard: Shard, compute_grad: bool):
    """Row losses ``(c,)`` (weighted) and the gradient of the reduced loss w.r.t. the local logits
    ``z (c, V_r)`` (None without ``compute_grad``), computed in the accumulation dtype."""
    acc = acc_dtype(z.dtype)
    s = z.to(acc)
    soft = t is not None and o["soft_coef"] != 0.0
    hard = yc is not None and o["hard_weight"] != 0.0
    t = t.to(acc) if soft else None
    st = _dense_stats(s, t, yc if hard else None, o, shard)
    rows = s.new_zeros(s.shape[0])
    g = None
    if soft:
        d, gz = _dense_soft(st, t, o, shard)
        rows += o["soft_coef"] * d
        g = gz.mul_(o["soft_coef"] / o["temperature"]) if compute_grad else None
    if hard:
        hw, eps = o["hard_weight"], o["label_smoothing"]
        lse1 = st["lse_1"]
        rows += hw * ((1.0 - eps) * (lse1 - st["sy"]) + eps * (lse1 - st["ssum"] / shard.vocab))
        if compute_grad:
            g = st["q_1"] * hw if g is None else g.add_(st["q_1"], alpha=hw)
            if eps != 0.0:
                g.sub_(hw * eps / shard.vocab)
            local = st["local_y"].nonzero().squeeze(1)
            g[local, yc[local] - shard.start] -= hw * (1.0 - eps)
    if wc is not None:
        rows = rows * wc
    if not compute_grad:
        return rows, None
    if g is None:
        return rows, torch.zeros_like(s)
    return rows, g.mul_(grad_scale.to(acc) * (_col(wc) if wc is not None else 1.0))


# --------------------------------------------------------------------------- sparse teacher


def _reduce_sparse(stats: Tensor, gathered: Tensor, temperature: float, group) -> Tuple[Tensor, Tensor]:
    """Statistics and gathered logits of every rank's pieces combined: MAX of the max, then one SUM."""
    mx = _all_reduce(stats[:, 0].clone(), dist.ReduceOp.MAX, group)
    stats = skd.rescale_stats(stats, mx, temperature)
    buf = _all_reduce(torch.cat([stats[:, 1:], gathered], 1), dist.ReduceOp.SUM, group)
    stats[:, 1:] = buf[:, :skd.NUM_STATS - 1]
    return stats, buf[:, skd.NUM_STATS - 1:].contiguous()  # the kernels read (N, k) rows densely


def sparse_chunk(head, ctx, out_rows, plan, shard: Shard, cols: int, compute_grad: bool) -> Tensor:
    """Row losses ``(c,)`` of one chunk against a sparse teacher; the head takes the logits gradient.
    The local shard is swept in pieces of ``cols`` classes (one piece: its logits are kept between the
    statistics and the gradient; several: recomputed, never more than ``(c, cols)`` at once)."""
    spans = [(v0, min(shard.width, v0 + cols)) for v0 in range(0, shard.width, cols)]
    kept = {}
    piece = (lambda v0, v1: kept[v0] if v0 in kept else head.logits(ctx, v0, v1))
    stats, gathered = plan.new_stats()
    for v0, v1 in spans:
        z = head.logits(ctx, v0, v1)
        if len(spans) == 1:
            kept[v0] = z
        skd.sparse_kd_stats(plan, z, shard.start + v0, stats, gathered)
    stats, gathered = _reduce_sparse(stats, gathered, plan.options["temperature"], shard.group)
    if plan.needs_jsd_tail:
        mine = stats.clone()
        mine[:, 6:8] = 0.0
        for v0, v1 in spans:
            skd.sparse_kd_jsd_tail(plan, piece(v0, v1), shard.start + v0, mine)
        stats[:, 6:8] = _all_reduce(mine[:, 6:8].contiguous(), dist.ReduceOp.SUM, shard.group)
    out, coef, delta = skd.sparse_kd_finalize(plan, stats, gathered)
    if compute_grad:
        for i, (v0, v1) in enumerate(spans):
            z = piece(v0, v1)
            g = skd.sparse_kd_apply(plan, z, shard.start + v0, coef, delta)
            head.backward(out_rows, ctx, z, g, v0, v1, i == 0)
    return out


# --------------------------------------------------------------------------- both


@dataclass
class Problem:
    """One validated call: targets / row weights ``(N,)`` (or None), the reduction scale, the kernel
    options, the teacher (:class:`Dense`, or the sparse ids / values ``(N, k)``) and the chunking."""

    n: int
    target: Optional[Tensor]
    weight: Optional[Tensor]
    grad_scale: Tensor
    options: dict
    dense: Optional[Dense]
    sparse: Optional[Tuple[Tensor, Tensor]]
    dtype: torch.dtype
    chunk_rows: int
    chunk_cols: int


def run(new_head, pb: Problem, shard: Shard, compute_grad: bool, row_weight: Optional[Tensor] = None):
    """Row losses ``(N,)`` (accumulation dtype, 0 on ignored rows) and, with ``compute_grad``, the
    gradients of the reduced loss as ``new_head(m, valid).gradients(valid)`` returns them (``m`` rows
    are not ignored, ``valid`` their ids or None for all).  ``row_weight``, if given, replaces the row
    weights.  Ignored rows are dropped before any logits exist."""
    w = pb.weight if row_weight is None else row_weight
    y = pb.target
    dev = pb.grad_scale.device
    losses = torch.zeros(pb.n, dtype=acc_dtype(pb.dtype), device=dev)
    valid = None if y is None else (y != pb.options["ignore_index"]).nonzero().squeeze(1)
    if valid is not None and valid.numel() == pb.n:
        valid = None  # every row counts: chunks are slices
    m = pb.n if valid is None else valid.numel()
    head = new_head(m, valid)
    for i in range(0, m, pb.chunk_rows):
        out_rows = slice(i, min(m, i + pb.chunk_rows))
        rows = out_rows if valid is None else valid[out_rows]
        ctx = head.context(rows)
        yc = None if y is None else y[rows]
        wc = None if w is None else w[rows]
        if pb.sparse is not None:
            plan = skd.SparsePlan(shard.vocab, pb.sparse[0][rows], pb.sparse[1][rows], yc, wc, pb.grad_scale,
                                  pb.options, pb.dtype, Reduction.SUM)
            losses[rows] = sparse_chunk(head, ctx, out_rows, plan, shard, pb.chunk_cols, compute_grad)
        else:
            z = head.logits(ctx, 0, shard.width)
            t = None if pb.dense is None or pb.options["soft_coef"] == 0.0 else pb.dense.rows(rows)
            out, g = dense_chunk(z, t, yc, wc, pb.grad_scale, pb.options, shard, compute_grad)
            losses[rows] = out
            if compute_grad:
                head.backward(out_rows, ctx, z, g.to(z.dtype), 0, shard.width, True)
        head.finish_rows()
    return losses, (head.gradients(valid) if compute_grad else None)


def unit(grad_loss: Tensor) -> bool:
    """Whether the upstream gradient is the 1 of ``loss.backward()`` (read only on the CPU: no sync),
    so the gradients computed in forward are the answer as they are."""
    return not torch.compiler.is_compiling() and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0


def reduce_rows(rows: Tensor, grad_scale: Tensor, reduction: int, dtype: torch.dtype) -> Tensor:
    """The loss as the single-process ops return it."""
    if reduction == Reduction.NONE:
        return rows.to(dtype)
    return (rows.sum() * grad_scale.to(rows.dtype)).to(dtype)
