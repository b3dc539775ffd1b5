"""``pysd.fused_linear_kd_loss``: the distillation loss of a linear head, chunk by chunk,
without ever forming the ``(N, V)`` logits.

Per chunk of rows: ``logits = x @ W.T + b`` (torch GEMM), optional soft-capping, the fused
row kernel of ``kd_loss`` (dense teacher) or ``sparse_kd_loss`` (:class:`pysd.SparseTeacher`)
which writes the logits gradient, then ``grad_x[rows] = g @ W``, ``grad_W += g.T @ x``,
``grad_b += g.sum(0)``.  With a sparse teacher the chunk may also split the vocabulary (the
piecewise entry points of :mod:`pysd.ops.sparse_kd_loss`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, _checks, cpu_cache
from .._codes import FLOATS, Reduction, TeacherFormat, acc_dtype, options
from ..sparse_teacher import SparseTeacher
from . import sparse_kd_loss as skd
from .kd_loss import _check_normalizer, _check_options, _check_tensors, _grad_scale

DENSE, SPARSE, HIDDEN = 0, 1, 2
# bytes of chunk buffers when chunk_size is None: at V = 128k that is ~340 rows, where the CPU GEMMs
# run near their full-matrix speed (128-row chunks lost ~15% to GEMM shape)
DEFAULT_BUDGET = 512 << 20


def _softcap_(z: Tensor, cap: float) -> Tensor:
    """``z <- cap * tanh(z / cap)`` in place."""
    return z.div_(cap).tanh_().mul_(cap)


def _chunk_logits(x: Tensor, weight: Tensor, bias: Optional[Tensor], cap: float, out: Optional[Tensor] = None,
                  ) -> Tensor:
    """``x @ weight.T + bias``, soft-capped, into ``out`` (a reused chunk buffer) when given."""
    if out is None:
        z = x @ weight.T if bias is None else torch.addmm(bias, x, weight.T)
    else:
        z = torch.mm(x, weight.T, out=out) if bias is None else torch.addmm(bias, x, weight.T, out=out)
    return _softcap_(z, cap) if cap > 0 else z


class _Buffer:
    """One ``(rows, cols)`` chunk buffer reused by every chunk of a call: a fresh multi-MiB tensor
    per chunk costs its page faults again each time."""

    def __init__(self, like: Tensor, cols: int):
        self.like, self.cols, self.t = like, cols, None

    def rows(self, r: int) -> Tensor:
        if self.t is None or self.t.shape[0] < r:
            self.t = cpu_cache.empty((r, self.cols), self.like.dtype, self.like.device)
        return self.t[:r]


def _match_vocab(t: Tensor, v: int, probs: bool) -> Tensor:
    """Teacher rows over the student's vocabulary: extra teacher classes are dropped, missing
    ones get probability 0 (logit -inf), never logit 0."""
    vt = t.shape[1]
    if vt == v:
        return t
    if vt > v:
        return t[:, :v]
    pad = t.new_full((t.shape[0], v - vt), 0.0 if probs else -math.inf)
    return torch.cat([t, pad], 1)


class _Head:
    """The student head and the running gradients of one call (fp32/fp64 accumulators).  The weight
    and bias gradients start uninitialised: the first chunk of rows writes them (``torch.mm`` with
    ``out=``), later chunks accumulate, so no ``(V, H)`` zero fill precedes the first GEMM."""

    def __init__(self, x, weight, bias, cap, compute_grad, rows):
        self.x, self.weight, self.bias, self.cap = x, weight, bias, cap
        acc = acc_dtype(x.dtype)
        self.gx = cpu_cache.empty((rows, x.shape[1]), x.dtype, x.device) if compute_grad else None
        self.gw = cpu_cache.empty(weight.shape, acc, x.device) if compute_grad else None
        self.gb = torch.empty(weight.shape[0], dtype=acc, device=x.device) if compute_grad and bias is not None \
            else None
        self.first_rows = True  # the current chunk of rows is the first one

    def logits(self, xc: Tensor, v0: int, v1: int, out: Optional[Tensor] = None) -> Tensor:
        b = None if self.bias is None else self.bias[v0:v1]
        return _chunk_logits(xc, self.weight[v0:v1], b, self.cap, out)

    def backward(self, rows: slice, xc: Tensor, z: Tensor, g: Tensor, v0: int, v1: int, first: bool) -> None:
        """Accumulate the gradients of a (rows x [v0, v1)) chunk whose (capped) logits are ``z``
        and logits gradient ``g`` (both overwritten); ``first``: the chunk's first vocabulary piece."""
        if self.cap > 0:  # d cap*tanh(u/cap) / du = 1 - (z/cap)^2
            g.mul_(z.div_(self.cap).square_().neg_().add_(1.0))
        if first:
            torch.mm(g, self.weight[v0:v1], out=self.gx[rows])
        else:
            self.gx[rows].addmm_(g, self.weight[v0:v1])
        gacc = g if g.dtype == self.gw.dtype else g.to(self.gw.dtype)
        xacc = xc if xc.dtype == self.gw.dtype else xc.to(self.gw.dtype)
        if self.first_rows:
            torch.mm(gacc.T, xacc, out=self.gw[v0:v1])
        else:
            self.gw[v0:v1].addmm_(gacc.T, xacc)
        if self.gb is not None:
            if self.first_rows:
                torch.sum(gacc, 0, out=self.gb[v0:v1])
            else:
                self.gb[v0:v1] += gacc.sum(0)

    def finish_rows(self) -> None:
        self.first_rows = False

    def gradients(self, valid: Optional[Tensor]):
        """(grad_x, grad_weight, grad_bias) in the accumulators' dtypes; zeros when no chunk ran.
        ``valid``: the rows the chunks ran on (None: all), the others get a zero grad_x row."""
        if self.first_rows:
            for t in (self.gx, self.gw, self.gb):
                if t is not None:
                    t.zero_()
        gx = self.gx
        if valid is not None:
            gx = self.x.new_zeros(self.x.shape)
            gx[valid] = self.gx
        return gx, self.gw, self.gb


def _dense_kernel(s, t, y, w, grad_scale, opts, compute_grad):
    fn = _backend.select("kd_loss", s.device.type)[1]
    keys = ("teacher_format", "divergence", "beta", "temperature", "soft_coef", "hard_weight", "label_smoothing",
            "ignore_index")
    return fn(s, t, y, w, grad_scale, compute_grad=compute_grad, **{k: opts[k] for k in keys})


def _sparse_kernel(s, ids, vals, y, w, grad_scale, opts, compute_grad):
    fn = _backend.select("sparse_kd_loss", s.device.type)[1]
    return fn(s, ids, vals, y, w, grad_scale, compute_grad=compute_grad, **opts)


def _teacher_rows(kind, teacher, rows, v, opts, t_weight, t_bias, cap, out=None):
    """Dense teacher logits ``(c, V)`` of a chunk of rows (or the sparse ids / values); ``out``:
    the buffer of the hidden-state teacher's logits."""
    if kind == SPARSE:
        return teacher[0][rows], teacher[1][rows]
    if kind == HIDDEN:
        t = _chunk_logits(teacher[rows], t_weight, t_bias, cap, out)
    else:
        t = teacher[rows]
    return _match_vocab(t, v, opts["teacher_format"] == TeacherFormat.PROBS)


_SPARSE_KEYS = ("format", "tail", "retemper", "divergence", "beta", "temperature", "soft_coef", "hard_weight",
                "label_smoothing", "ignore_index")


def _sparse_opts(opts: dict) -> dict:
    return {k: opts[k] for k in _SPARSE_KEYS}


def _vocab_pieces(head, plan, out_rows, xc, cols, compute_grad):
    """The sparse loss of one chunk of rows over vocabulary pieces: stats (GEMM per piece),
    finalize, apply (GEMM again per piece).  Never more than (rows, cols) logits."""
    v = plan.vocab
    spans = [(v0, min(v, v0 + cols)) for v0 in range(0, v, cols)]
    stats, gathered = plan.new_stats()
    for v0, v1 in spans:
        skd.sparse_kd_stats(plan, head.logits(xc, v0, v1), v0, stats, gathered)
    if plan.needs_jsd_tail:
        for v0, v1 in spans:
            skd.sparse_kd_jsd_tail(plan, head.logits(xc, v0, v1), v0, stats)
    out, coef, delta = skd.sparse_kd_finalize(plan, stats, gathered)
    if compute_grad:
        for i, (v0, v1) in enumerate(spans):
            z = head.logits(xc, v0, v1)
            g = skd.sparse_kd_apply(plan, z, v0, coef, delta)
            head.backward(out_rows, xc, z, g, v0, v1, i == 0)
    return out


# --------------------------------------------------------------------------- custom op


_OPT_NAMES = ("teacher_format", "format", "tail", "retemper", "divergence", "beta", "temperature", "soft_coef",
              "hard_weight", "label_smoothing", "ignore_index")


def _run(x, weight, bias, y, w, grad_scale, kind, teacher, t_weight, t_bias, opts, cap, chunk_rows, chunk_cols,
         compute_grad):
    """Row losses ``(N,)`` and (optionally) the gradients of x, weight, bias.  Rows whose target is
    ignore_index are dropped before any GEMM; the others run in chunks of ``chunk_rows``."""
    n, v = x.shape[0], weight.shape[0]
    valid = None if y is None else (y != opts["ignore_index"]).nonzero().squeeze(1)
    if valid is not None and valid.numel() == n:
        valid = None  # every row counts: chunks are slices (views), no gathers
    m = n if valid is None else valid.numel()
    head = _Head(x, weight, bias, cap, compute_grad, m)
    losses = torch.zeros(n, dtype=acc_dtype(x.dtype), device=x.device)
    z_buf = _Buffer(x, v)
    t_buf = _Buffer(teacher, t_weight.shape[0]) if kind == HIDDEN else None
    for i in range(0, m, chunk_rows):
        out_rows = slice(i, min(m, i + chunk_rows))  # rows of the compacted gradient
        rows = out_rows if valid is None else valid[out_rows]
        xc = x[rows]
        yc = None if y is None else y[rows]
        wc = None if w is None else w[rows]
        r = out_rows.stop - out_rows.start
        t_out = t_buf.rows(r) if t_buf is not None else None
        t = _teacher_rows(kind, teacher, rows, v, opts, t_weight, t_bias, cap, t_out)
        if chunk_cols < v:
            plan = skd.SparsePlan(v, t[0], t[1], yc, wc, grad_scale, _sparse_opts(opts), x.dtype, Reduction.SUM)
            losses[rows] = _vocab_pieces(head, plan, out_rows, xc, chunk_cols, compute_grad)
        else:
            z = head.logits(xc, 0, v, z_buf.rows(r))
            if kind == SPARSE:
                out, g = _sparse_kernel(z, t[0], t[1], yc, wc, grad_scale, _sparse_opts(opts), compute_grad)
            else:
                out, g = _dense_kernel(z, t, yc, wc, grad_scale, opts, compute_grad)
            losses[rows] = out
            if compute_grad:
                head.backward(out_rows, xc, z, g, 0, v, True)
        head.finish_rows()
    return losses, head.gradients(valid) if compute_grad else None


@torch.library.custom_op("pysd::fused_linear_kd_loss", mutates_args=())
def _op(x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Optional[Tensor], row_weight: Optional[Tensor],
        grad_scale: Tensor, kind: int, teacher: Optional[Tensor], teacher_ids: Optional[Tensor],
        teacher_vals: Optional[Tensor], teacher_weight: Optional[Tensor], teacher_bias: Optional[Tensor],
        teacher_format: int, format: int, tail: int, retemper: float, divergence: int, beta: float,
        temperature: float, soft_coef: float, hard_weight: float, label_smoothing: float, ignore_index: int,
        softcap: float, chunk_rows: int, chunk_cols: int, reduction: int, compute_grad: bool,
        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validated ``x (N, H)``, ``weight (V, H)`` → (loss ``()`` or ``(N,)``, grad_x ``(N, H)``,
    grad_weight ``(V, H)``, grad_bias ``(V,)``; the gradients are ``(0,)`` without compute_grad)."""
    opts = dict(zip(_OPT_NAMES, (teacher_format, format, tail, retemper, divergence, beta, temperature, soft_coef,
                                 hard_weight, label_smoothing, ignore_index)))
    t = (teacher_ids, teacher_vals) if kind == SPARSE else teacher
    rows, grads = _run(x, weight, bias, target, row_weight, grad_scale, kind, t, teacher_weight, teacher_bias, opts,
                       softcap, chunk_rows, chunk_cols, compute_grad)
    if reduction == Reduction.NONE:
        loss = rows.to(x.dtype)
    else:
        loss = (rows.sum() * grad_scale.to(rows.dtype)).to(x.dtype)
    if not compute_grad:
        return loss, x.new_empty(0), x.new_empty(0), x.new_empty(0)
    gx, gw, gb = grads
    return loss, gx, gw.to(weight.dtype), gb.to(x.dtype) if gb is not None else x.new_empty(0)


@_op.register_fake
def _(x, weight, bias, target, row_weight, grad_scale, kind, teacher, teacher_ids, teacher_vals, teacher_weight,
      teacher_bias, teacher_format, format, tail, retemper, divergence, beta, temperature, soft_coef, hard_weight,
      label_smoothing, ignore_index, softcap, chunk_rows, chunk_cols, reduction, compute_grad):
    loss = x.new_empty((x.shape[0],) if reduction == Reduction.NONE else ())
    if not compute_grad:
        return loss, x.new_empty(0), x.new_empty(0), x.new_empty(0)
    gb = x.new_empty(weight.shape[0]) if bias is not None else x.new_empty(0)
    return loss, x.new_empty(x.shape), weight.new_empty(weight.shape), gb


_TENSOR_ARGS = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11)


def _setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.inputs = inputs
    ctx.reduction = inputs[26]
    ctx.has_bias = inputs[2] is not None
    if ctx.reduction == Reduction.NONE:
        # per-row upstream gradients: backward runs the chunks again with them as row weights
        ctx.save_for_backward(*[inputs[i] for i in _TENSOR_ARGS])
    else:
        ctx.save_for_backward(output[1], output[2], output[3])


def _backward(ctx, grad_loss, *_unused):
    none = [None] * 28
    if grad_loss is None:
        return tuple(none)
    if ctx.reduction == Reduction.NONE:
        args = list(ctx.inputs)
        for i, t in zip(_TENSOR_ARGS, ctx.saved_tensors):
            args[i] = t
        x, rw = args[0], args[4]
        scale = grad_loss.to(acc_dtype(x.dtype))
        args[4] = scale if rw is None else rw.to(scale.dtype) * scale
        args[5] = torch.ones((), dtype=torch.float64, device=x.device)
        args[26], args[27] = Reduction.SUM, True
        _, gx, gw, gb = _op(*args)
    else:
        gx, gw, gb = ctx.saved_tensors
        # loss.backward() seeds 1: the stored gradients are the answer (no (V, H) multiply)
        unit = not torch.compiler.is_compiling() and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0
        if not unit:
            gx, gw = gx * grad_loss.to(gx.dtype), gw * grad_loss.to(gw.dtype)
            gb = gb * grad_loss.to(gb.dtype) if ctx.has_bias else gb
    none[0], none[1] = gx, gw
    none[2] = gb if ctx.has_bias else None
    return tuple(none)


_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public function


def _check_linear(name: str, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"fused_linear_kd_loss: {name}_input and {name}_weight must be torch.Tensors")
    if x.dtype not in FLOATS or weight.dtype != x.dtype:
        raise TypeError(f"fused_linear_kd_loss: {name}_input must be float32/float64/bfloat16/float16 and "
                        f"{name}_weight the same dtype; got {x.dtype} and {weight.dtype}")
    if x.dim() < 1 or weight.dim() != 2 or weight.shape[1] != x.shape[-1] or weight.shape[0] < 1:
        raise ValueError(f"fused_linear_kd_loss: {name}_weight must be (V, H) with H = {name}_input.shape[-1]; "
                         f"got {tuple(weight.shape)} and {tuple(x.shape)}")
    if weight.device != x.device:
        raise ValueError(f"fused_linear_kd_loss: {name}_weight is on {weight.device}, {name}_input on {x.device}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (weight.shape[0],)
                             or bias.dtype != x.dtype or bias.device != x.device):
        raise ValueError(f"fused_linear_kd_loss: {name}_bias must be a ({weight.shape[0]},) {x.dtype} tensor on "
                         f"{x.device}")


def _teacher_kind(teacher, teacher_weight, teacher_bias, batch, device) -> int:
    if isinstance(teacher, SparseTeacher):
        if teacher_weight is not None:
            raise ValueError("fused_linear_kd_loss: teacher_weight goes with teacher hidden states, not a SparseTeacher")
        if teacher.shape != batch:
            raise ValueError(f"fused_linear_kd_loss: the SparseTeacher's rows {tuple(teacher.shape)} must match "
                             f"student_input without H {tuple(batch)}")
        return SPARSE
    if not isinstance(teacher, Tensor):
        raise TypeError(f"fused_linear_kd_loss: teacher must be a tensor (logits or hidden states) or a "
                        f"SparseTeacher, got {type(teacher).__name__}")
    if teacher.requires_grad and torch.is_grad_enabled():
        raise ValueError("fused_linear_kd_loss: teacher requires grad; pass teacher.detach()")
    if teacher.shape[:-1] != batch or teacher.device != device:
        raise ValueError(f"fused_linear_kd_loss: teacher must have shape ({', '.join(map(str, batch))}, ...) on "
                         f"{device}, got {tuple(teacher.shape)} on {teacher.device}")
    if teacher_weight is None:
        if teacher_bias is not None:
            raise ValueError("fused_linear_kd_loss: teacher_bias needs teacher_weight")
        return DENSE
    _check_linear("teacher", teacher, teacher_weight, teacher_bias)
    return HIDDEN


def _chunk_plan(chunk_size, n: int, v: int, vt: int, esize: int) -> Tuple[int, int]:
    """(rows, cols) of one chunk; None: as many rows as DEFAULT_BUDGET allows for the student
    logits, their gradient and the teacher's logits (4 bytes each for the kernel's fp32 math)."""
    if chunk_size is None:
        per_row = v * (2 * esize + 4) + vt * max(esize, 4)
        most = max(1, DEFAULT_BUDGET // per_row)
        return -(-max(n, 1) // -(-max(n, 1) // most)), v  # equal chunks: no small GEMM at the end
    if isinstance(chunk_size, int) and not isinstance(chunk_size, bool):
        chunk_size = (chunk_size, v)
    if (not isinstance(chunk_size, tuple) or len(chunk_size) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in chunk_size)):
        raise ValueError(f"fused_linear_kd_loss: chunk_size must be None, rows >= 1, or (rows, cols), got "
                         f"{chunk_size!r}")
    return chunk_size[0], min(chunk_size[1], v)


def fused_linear_kd_loss(student_input: Tensor, student_weight: Tensor, teacher, target: Optional[Tensor] = None,
                         *, student_bias: Optional[Tensor] = None, teacher_weight: Optional[Tensor] = None,
                         teacher_bias: Optional[Tensor] = None, logit_softcap: Optional[float] = None,
                         chunk_size=None, teacher_format: str = "logits", divergence: str = "fkl",
                         beta: float = 0.5, temperature: float = 1.0, scale_t2: bool = True,
                         hard_weight: Optional[float] = None, soft_weight: float = 1.0, label_smoothing: float = 0.0,
                         ignore_index: int = -100, weight: Optional[Tensor] = None, reduction: str = "mean",
                         normalizer: Optional[Tensor] = None) -> Tensor:
    r"""``kd_loss(student_input @ student_weight.T + student_bias, teacher, target, ...)`` without
    the ``(N, V)`` logits.

    Args:
        student_input: ``(..., H)`` float32/float64/bfloat16/float16 hidden states.
        student_weight: ``(V, H)`` head weight, same dtype; ``student_bias``: ``(V,)`` or None.
        teacher: one of
            * dense logits ``(..., V_t)`` in ``teacher_format`` (detached);
            * a :class:`pysd.SparseTeacher` with rows ``(...)`` (its format/tail/temperature apply);
            * the teacher's hidden states ``(..., H_t)`` with ``teacher_weight (V_t, H_t)`` and
              ``teacher_bias (V_t,)`` or None (teacher logits ``h @ W_t.T + b_t``, format "logits").
            With ``V_t != V`` the teacher covers the student's vocabulary: classes ``>= V`` of the
            teacher are dropped (it is renormalized over ``[0, V)``), and student classes ``>= V_t``
            get teacher probability 0 (logit ``-inf``, never 0).
        target: ``(...)`` class ids or ``ignore_index``; ignored rows are dropped before any matmul.
        logit_softcap: ``c > 0`` applies ``c * tanh(z / c)`` to the student logits (and to teacher
            logits computed from hidden states), with its exact gradient ``1 - tanh^2``.
        chunk_size: rows per chunk, or ``(rows, cols)`` to also split the vocabulary (SparseTeacher
            only).  None: the most rows whose chunk buffers (student logits and their gradient,
            teacher logits) fit in 512 MiB, split into equal chunks.
        every other keyword: as :func:`pysd.kd_loss`.

    Returns:
        the loss as :func:`pysd.kd_loss` returns it.  Gradients flow to ``student_input``,
        ``student_weight`` and ``student_bias``.

    Memory: one chunk of student logits, their gradient and (dense / hidden teacher) the teacher
    chunk at a time, plus the gradients of input ``(N, H)``, weight ``(V, H)`` and bias, which
    are accumulated in float32 (float64 for float64 input) and computed during the forward call
    (for ``reduction="none"`` they are computed in backward, with the upstream gradient as row
    weights).  bf16/fp16 GEMMs run in the input dtype (fp32 accumulation inside the GEMM).
    On the CPU the chunk buffers and the input and weight gradients come from pysd's buffer cache
    (:func:`pysd.cpu_cache_info`).
    """
    _check_linear("student", student_input, student_weight, student_bias)
    x = student_input
    batch, dev = x.shape[:-1], x.device
    v = student_weight.shape[0]
    kind = _teacher_kind(teacher, teacher_weight, teacher_bias, batch, dev)
    cap = 0.0
    if logit_softcap is not None:
        cap = _checks.real("fused_linear_kd_loss", "logit_softcap", logit_softcap, 0.0, lo_open=True)
    red = _checks.option("kd_loss", "reduction", reduction, Reduction, options(Reduction))
    probe = torch.empty((), dtype=x.dtype, device=dev).expand(*batch, v)  # shapes for the checks, no memory
    _check_tensors(probe, None, target, weight, TeacherFormat.NONE, _checks.integer("kd_loss", "ignore_index",
                                                                                     ignore_index))
    _check_normalizer(normalizer, red, reduction)
    if kind == SPARSE:
        plan = skd.sparse_kd_plan(teacher, v, target, dtype=x.dtype, device=dev, divergence=divergence, beta=beta,
                                  temperature=temperature, scale_t2=scale_t2, hard_weight=hard_weight,
                                  soft_weight=soft_weight, label_smoothing=label_smoothing,
                                  ignore_index=ignore_index, weight=weight, reduction=reduction,
                                  normalizer=normalizer)
        opts = dict(plan.options, teacher_format=int(TeacherFormat.LOGITS))
        y, w, grad_scale = plan.target, plan.weight, plan.grad_scale
        tens, ids, vals, vt = None, plan.ids, plan.vals, v
    else:
        opts, y, w, grad_scale = _dense_options(x, v, target, weight, normalizer, red, kind, teacher_format,
                                                divergence, beta, temperature, scale_t2, hard_weight, soft_weight,
                                                label_smoothing, ignore_index)
        tens = teacher.detach().reshape(-1, teacher.shape[-1])
        ids = vals = None
        vt = teacher_weight.shape[0] if kind == HIDDEN else teacher.shape[-1]
    n = y.shape[0] if y is not None else x.reshape(-1, x.shape[-1]).shape[0]
    rows, cols = _chunk_plan(chunk_size, n, v, vt, x.element_size())
    if cols < v and kind != SPARSE:
        raise ValueError("fused_linear_kd_loss: vocabulary chunks (chunk_size=(rows, cols) with cols < V) need a "
                         "SparseTeacher")
    compute_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, student_weight, student_bias))
    loss, *_ = _op(x.reshape(-1, x.shape[-1]), student_weight, student_bias, y, w, grad_scale, kind, tens, ids,
                   vals, teacher_weight, teacher_bias, opts["teacher_format"], opts["format"], opts["tail"],
                   opts["retemper"], opts["divergence"], opts["beta"], opts["temperature"], opts["soft_coef"],
                   opts["hard_weight"], opts["label_smoothing"], opts["ignore_index"], cap, rows, cols, red,
                   compute_grad and red != Reduction.NONE)
    return loss.reshape(batch) if red == Reduction.NONE else loss


def _dense_options(x, v, target, weight, normalizer, red, kind, teacher_format, divergence, beta, temperature,
                   scale_t2, hard_weight, soft_weight, label_smoothing, ignore_index):
    """Kernel options, targets, row weights and the reduction scale of a dense / hidden teacher."""
    o = _check_options("logits" if kind == HIDDEN else teacher_format, divergence, red.name.lower(), beta, temperature,
                       hard_weight, soft_weight, label_smoothing, ignore_index)
    tf, div, beta, temperature = o["teacher_format"], o["divergence"], o["beta"], o["temperature"]
    soft_weight, label_smoothing, ignore_index = o["soft_weight"], o["label_smoothing"], o["ignore_index"]
    hard_weight = _checks.hard_weight("kd_loss", hard_weight, True, target is not None)
    n = x.reshape(-1, x.shape[-1]).shape[0]
    acc = acc_dtype(x.dtype)
    y = None if target is None else target.reshape(n).to(torch.int64).contiguous()
    w = None if weight is None else weight.detach().reshape(n).to(acc).contiguous()
    opts = dict(teacher_format=int(tf), format=0, tail=0, retemper=1.0, divergence=int(div), beta=beta,
                temperature=temperature, soft_coef=soft_weight * (temperature ** 2 if scale_t2 else 1.0),
                hard_weight=hard_weight, label_smoothing=label_smoothing, ignore_index=ignore_index)
    return opts, y, w, _grad_scale(red, n, y, w, ignore_index, normalizer, x.device)
