"""``pysd::sparse_kd_loss``: the distillation loss against a :class:`pysd.SparseTeacher`.

Two ways in:

* :func:`sparse_kd_loss` (what ``pysd.kd_loss(student, SparseTeacher(...), ...)`` calls):
  one fused pass per row over the student (row max, sums of exponentials, k gathers)
  and the gradient written in the same kernel call.
* The piecewise entry points, for a student row that is never whole in one place
  (vocabulary-chunked fused linear head, vocabulary-parallel heads).  Per row only
  O(1) statistics plus the k gathered student logits cross pieces:

  1. ``plan = sparse_kd_plan(teacher, vocab, target, dtype=..., **kd options)``
  2. ``stats, gathered = plan.new_stats()`` — ``(N, 8)`` and ``(N, k)`` in the accumulation dtype.
  3. for every piece ``[v0, v0 + w)``: ``sparse_kd_stats(plan, logits[:, v0:v0+w], v0, stats, gathered)``
     (in place).  Statistics of pieces computed elsewhere combine with :func:`merge_stats`
     (or ``rescale_stats`` to the all-reduced max, then a sum); ``gathered`` combines by sum.
  4. only if ``plan.needs_jsd_tail`` (jsd with ``tail="uniform"``): for every piece,
     ``sparse_kd_jsd_tail(plan, piece, v0, stats)`` adds to columns 6-7 of the *merged*
     stats; those two columns combine by sum (start each rank's from 0).
  5. ``rows, coef, delta = sparse_kd_finalize(plan, stats, gathered)`` — row losses
     ``(N,)`` (weighted, not reduced), coefficients ``(N, 12)``, per-entry corrections ``(N, k)``.
  6. for every piece: ``grad = sparse_kd_apply(plan, piece, v0, coef, delta)`` — the
     gradient of the reduced loss w.r.t. that piece of logits (reduction scale included).

  The loss is ``rows.sum() * plan.grad_scale`` (or ``rows`` for ``reduction="none"``).
  The math of every step is in ``csrc/include/pysd/sparse_kd_loss.h``; these entry points
  run on the ``cpp`` backend (CPU tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, _checks
from .._codes import FLOATS, Divergence, Phase, Reduction, Tail, TeacherFormat, acc_dtype, options
from .._cpp.sparse_kd_loss import call as _cpp_call
from ..sparse_teacher import SparseTeacher
from .kd_loss import _check_normalizer, _check_options, _check_tensors, _grad_scale, _rows_view

OP = "sparse_kd_loss"
_backend.register(OP)
NUM_STATS, NUM_COEF = 8, 12


def _call(student: Tensor, phase: Phase, *args) -> None:
    """One phase on ``pysd._C`` (the piecewise entry points run on CPU tensors only)."""
    ext = _backend.extension("_C")
    if ext is None:
        raise _backend.BackendError("pysd._C is not loaded; the piecewise sparse_kd_loss entry points need it")
    _cpp_call(ext, student, phase, *args)


# --------------------------------------------------------------------------- custom op


@torch.library.custom_op("pysd::sparse_kd_loss", mutates_args=())
def _sparse_kd_loss_op(
    student: Tensor, indices: Tensor, values: Tensor, target: Optional[Tensor], weight: Optional[Tensor],
    grad_scale: Tensor, format: int, tail: int, retemper: float, divergence: int, beta: float, temperature: float,
    soft_coef: float, hard_weight: float, label_smoothing: float, ignore_index: int, reduction: int,
    compute_grad: bool,
) -> Tuple[Tensor, Tensor]:
    """Validated ``(N, V)`` student, ``(N, k)`` int64 ids and accumulation-dtype values →
    (loss ``()`` or ``(N,)``, gradient buffer ``(N, V)`` or ``(0,)``)."""
    options = dict(format=format, tail=tail, retemper=retemper, divergence=divergence, beta=beta,
                   temperature=temperature, soft_coef=soft_coef, hard_weight=hard_weight,
                   label_smoothing=label_smoothing, ignore_index=ignore_index)
    fn = _backend.select(OP, student.device.type)[1]
    rows, grad = fn(student, indices, values, target, weight, grad_scale, compute_grad=compute_grad, **options)
    if reduction == Reduction.NONE:
        loss = rows.to(student.dtype)
    else:
        loss = (rows.sum() * grad_scale.to(rows.dtype)).to(student.dtype)
    return loss, (grad if grad is not None else student.new_empty(0))


@_sparse_kd_loss_op.register_fake
def _(student, indices, values, target, weight, grad_scale, format, tail, retemper, divergence, beta, temperature,
      soft_coef, hard_weight, label_smoothing, ignore_index, reduction, compute_grad):
    n = student.shape[0]
    loss = student.new_empty((n,) if reduction == Reduction.NONE else ())
    return loss, (student.new_empty(student.shape) if compute_grad else student.new_empty(0))


def _setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.reduction = inputs[16]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_buffer):
    (buf,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 18
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError("pysd.kd_loss with a SparseTeacher does not support double backward "
                           "(create_graph=True); use pysd._ref.sparse_kd_loss.sparse_kd_rows")
    if ctx.reduction == Reduction.NONE:
        g = buf * grad_loss.to(buf.dtype).unsqueeze(-1)
    elif not torch.compiler.is_compiling() and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
        g = buf
    else:
        g = buf * grad_loss.to(buf.dtype)
    return (g,) + (None,) * 17


_sparse_kd_loss_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- validation


@dataclass
class SparsePlan:
    """Validated arguments of one sparse-teacher loss over ``N`` rows and a vocabulary of ``vocab``.

    ``ids (N, k) int64``, ``vals (N, k)`` accumulation dtype, ``target (N,) int64`` or None,
    ``weight (N,)`` or None, ``grad_scale`` 0-d float64 (d reduced loss / d row loss before
    weights), ``options`` the kernel options, ``dtype`` the logits' dtype.
    """

    vocab: int
    ids: Tensor
    vals: Tensor
    target: Optional[Tensor]
    weight: Optional[Tensor]
    grad_scale: Tensor
    options: dict
    dtype: torch.dtype
    reduction: int

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def needs_jsd_tail(self) -> bool:
        o = self.options
        return o["soft_coef"] != 0.0 and o["divergence"] == Divergence.JSD and o["tail"] == Tail.UNIFORM

    def new_stats(self) -> Tuple[Tensor, Tensor]:
        """Empty statistics ``(N, 8)`` (max -inf, sums 0) and gathered logits ``(N, k)`` (0)."""
        acc = acc_dtype(self.dtype)
        stats = torch.zeros(self.rows, NUM_STATS, dtype=acc, device=self.ids.device)
        stats[:, 0] = -math.inf
        return stats, torch.zeros(self.rows, self.ids.shape[1], dtype=acc, device=self.ids.device)


def sparse_kd_plan(teacher: SparseTeacher, vocab: int, target: Optional[Tensor] = None, *,
                   dtype: torch.dtype = torch.float32, device=None, divergence: str = "fkl", beta: float = 0.5,
                   temperature: float = 1.0, scale_t2: bool = True, hard_weight: Optional[float] = None,
                   soft_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
                   weight: Optional[Tensor] = None, reduction: str = "mean",
                   normalizer: Optional[Tensor] = None) -> SparsePlan:
    """Validate the arguments of a sparse-teacher loss over logits ``(..., vocab)`` of ``dtype``
    (the options are :func:`pysd.kd_loss`'s) and resolve them into a :class:`SparsePlan`."""
    if not isinstance(teacher, SparseTeacher):
        raise TypeError(f"kd_loss: teacher must be a SparseTeacher here, got {type(teacher).__name__}")
    if dtype not in FLOATS:
        raise TypeError(f"kd_loss: student_logits must be float32/float64/bfloat16/float16, got {dtype}")
    device = teacher.device if device is None else torch.device(device)
    if teacher.device != device:
        raise ValueError(f"kd_loss: the SparseTeacher is on {teacher.device}, student_logits on {device}")
    o = _check_options("logits", divergence, reduction, beta, temperature, hard_weight, soft_weight, label_smoothing,
                       ignore_index)
    div, red, temperature, ignore_index = o["divergence"], o["reduction"], o["temperature"], o["ignore_index"]
    hard_weight = _checks.hard_weight("kd_loss", hard_weight, True, target is not None)
    if div == Divergence.RKL and teacher.tail == "renormalize":
        raise ValueError("kd_loss: divergence='rkl' (or 'jsd' with beta=1) with tail='renormalize' is infinite: "
                         "the teacher puts zero mass outside its top-k while the student's softmax does not; "
                         "use tail='bucket' or 'uniform', or divergence='fkl'/'jsd'")
    checks = not torch.compiler.is_compiling()
    ids = teacher.indices.reshape(-1, teacher.k)
    if checks and ids.numel():
        too_big = ids >= vocab
        if bool(too_big.any()):
            raise ValueError(f"kd_loss: the SparseTeacher has class id {int(ids[too_big][0])} outside [0, {vocab}) "
                             "(ids < 0 are padding)")
        if teacher.format == "probs" and bool((teacher.values < 0).any()):
            raise ValueError("kd_loss: the SparseTeacher's format is 'probs' but it has negative values")
    acc = acc_dtype(dtype)
    n = ids.shape[0]
    y = None if target is None else target.reshape(n).to(torch.int64).contiguous()
    w = None if weight is None else weight.detach().reshape(n).to(acc).contiguous()
    options = dict(format=int(TeacherFormat[teacher.format.upper()]), tail=int(Tail[teacher.tail.upper()]),
                   retemper=teacher.temperature / temperature, divergence=int(div), beta=o["beta"],
                   temperature=temperature,
                   soft_coef=o["soft_weight"] * (temperature * temperature if scale_t2 else 1.0),
                   hard_weight=hard_weight, label_smoothing=o["label_smoothing"], ignore_index=ignore_index)
    return SparsePlan(vocab, ids.to(torch.int64).contiguous(), teacher.values.detach().reshape(n, teacher.k).to(acc)
                      .contiguous(), y, w, _grad_scale(red, n, y, w, ignore_index, normalizer, device), options,
                      dtype, red)


def sparse_kd_loss(student_logits: Tensor, teacher: SparseTeacher, target: Optional[Tensor] = None, *,
                   divergence: str = "fkl", beta: float = 0.5, temperature: float = 1.0, scale_t2: bool = True,
                   hard_weight: Optional[float] = None, soft_weight: float = 1.0, label_smoothing: float = 0.0,
                   ignore_index: int = -100, weight: Optional[Tensor] = None, reduction: str = "mean",
                   normalizer: Optional[Tensor] = None) -> Tensor:
    r"""``pysd.kd_loss`` against a :class:`pysd.SparseTeacher`: same options and result.

    ``student_logits: (..., V)`` float32/float64/bfloat16/float16; the teacher's leading dims
    must equal ``(...)``.  The student is normalized over its full vocabulary ``V``; the
    teacher distribution is the one :class:`pysd.SparseTeacher` defines (format, tail policy,
    re-tempering ``p ** (T_gen / T)``).  Per row, with atoms ``a`` (the k entries, plus the
    bucket or the uniform tail classes)::

        fkl = sum_a p_a log(p_a / q_a)     rkl = sum_a q_a log(q_a / p_a)
        jsd = beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q

    where for ``tail="bucket"`` the bucket's student mass is ``q_t = 1 - sum_topk q``, and for
    ``"renormalize"`` every class outside the top-k is an atom with ``p = 0``
    (so ``rkl`` is infinite there and is refused with ``ValueError``; fkl and jsd are finite).

    Memory: ``(N,)`` row losses and, when the student requires grad, one ``(N, V)`` gradient
    buffer written in the forward kernel; per thread O(V + k) scratch.  No other ``(N, V)``
    temporaries (the ``torch`` fallback backend is a dense reference and has several).  On the
    CPU the gradient comes from pysd's buffer cache (:func:`pysd.cpu_cache_info`).
    """
    if not isinstance(student_logits, Tensor):
        raise TypeError(f"kd_loss: student_logits must be a torch.Tensor, got {type(student_logits).__name__}")
    if student_logits.dim() < 1 or student_logits.shape[-1] < 1:
        raise ValueError("kd_loss: student_logits must have shape (..., V) with V >= 1")
    v = student_logits.shape[-1]
    batch = student_logits.shape[:-1]
    if isinstance(teacher, SparseTeacher) and teacher.shape != batch:
        raise ValueError(f"kd_loss: the SparseTeacher's rows {tuple(teacher.shape)} must match student_logits "
                         f"without V {tuple(batch)}")
    if student_logits.dtype not in FLOATS:
        raise TypeError(f"kd_loss: student_logits must be float32/float64/bfloat16/float16, got {student_logits.dtype}")
    red = _checks.option("kd_loss", "reduction", reduction, Reduction, options(Reduction))
    _check_tensors(student_logits, None, target, weight, TeacherFormat.NONE, _checks.integer("kd_loss", "ignore_index",
                                                                                              ignore_index))
    _check_normalizer(normalizer, red, reduction)
    plan = sparse_kd_plan(teacher, v, target, dtype=student_logits.dtype, device=student_logits.device,
                          divergence=divergence, beta=beta, temperature=temperature, scale_t2=scale_t2,
                          hard_weight=hard_weight, soft_weight=soft_weight, label_smoothing=label_smoothing,
                          ignore_index=ignore_index, weight=weight, reduction=reduction, normalizer=normalizer)
    s2 = _rows_view(student_logits, v)
    compute_grad = student_logits.requires_grad and torch.is_grad_enabled()
    o = plan.options
    loss, _ = _sparse_kd_loss_op(s2, plan.ids, plan.vals, plan.target, plan.weight, plan.grad_scale, o["format"],
                                 o["tail"], o["retemper"], o["divergence"], o["beta"], o["temperature"],
                                 o["soft_coef"], o["hard_weight"], o["label_smoothing"], o["ignore_index"],
                                 int(red), compute_grad)
    return loss.reshape(batch) if red == Reduction.NONE else loss


# --------------------------------------------------------------------------- piecewise entry points


def _piece(plan: SparsePlan, piece: Tensor, v0: int) -> Tensor:
    if piece.dtype != plan.dtype or piece.dim() != 2 or piece.shape[0] != plan.rows:
        raise ValueError(f"sparse_kd: piece must be ({plan.rows}, w) {plan.dtype}, got {tuple(piece.shape)} "
                         f"{piece.dtype}")
    if not 0 <= v0 <= plan.vocab - piece.shape[1]:
        raise ValueError(f"sparse_kd: piece [{v0}, {v0 + piece.shape[1]}) is outside the vocabulary [0, {plan.vocab})")
    return piece if piece.shape[1] <= 1 or piece.stride(1) == 1 else piece.contiguous()


def sparse_kd_stats(plan: SparsePlan, piece: Tensor, v0: int, stats: Tensor, gathered: Tensor) -> None:
    """Merge the statistics of logits ``piece (N, w)`` (classes ``v0 .. v0+w-1``) into
    ``stats (N, 8)`` and add the logits at the teacher ids / target in the piece to
    ``gathered (N, k)`` / ``stats[:, 5]``.  Columns: 0 max s, 1 sum exp((s - max)/T),
    2 sum exp(s - max), 3 sum exp((s - max)/T) (s - max)/T, 4 sum s, 5 s[target],
    6-7 the jsd-uniform tail sums."""
    p = _piece(plan, piece, v0)
    _call(p, Phase.STATS, plan.rows, plan.vocab, v0, p.shape[1], plan.ids, plan.vals, plan.target, plan.weight,
          plan.grad_scale, None, None, stats, gathered, None, None, plan.options)


def sparse_kd_jsd_tail(plan: SparsePlan, piece: Tensor, v0: int, stats: Tensor) -> None:
    """Add the piece's jsd-uniform tail sums to ``stats[:, 6:8]``; ``stats`` columns 0-1 must
    already be merged over the whole vocabulary."""
    p = _piece(plan, piece, v0)
    _call(p, Phase.JSD_TAIL, plan.rows, plan.vocab, v0, p.shape[1], plan.ids, plan.vals, plan.target, plan.weight,
          plan.grad_scale, None, None, stats, None, None, None, plan.options)


def sparse_kd_finalize(plan: SparsePlan, stats: Tensor, gathered: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Row losses ``(N,)`` (weighted), coefficients ``(N, 12)`` and corrections ``(N, k)`` from
    statistics merged over the whole vocabulary."""
    acc = acc_dtype(plan.dtype)
    dev = plan.ids.device
    rows = torch.empty(plan.rows, dtype=acc, device=dev)
    coef = torch.empty(plan.rows, NUM_COEF, dtype=acc, device=dev)
    delta = torch.empty(plan.rows, plan.ids.shape[1], dtype=acc, device=dev)
    dummy = torch.empty(plan.rows, 0, dtype=plan.dtype, device=dev)
    _call(dummy, Phase.FINALIZE, plan.rows, plan.vocab, 0, 0, plan.ids, plan.vals, plan.target, plan.weight,
          plan.grad_scale, None, rows, stats, gathered, coef, delta, plan.options)
    return rows, coef, delta


def sparse_kd_apply(plan: SparsePlan, piece: Tensor, v0: int, coef: Tensor, delta: Tensor,
                    out: Optional[Tensor] = None) -> Tensor:
    """d(reduced loss)/d piece, ``(N, w)`` in the logits' dtype (written into ``out`` if given,
    which must be contiguous; it may be ``piece`` itself)."""
    p = _piece(plan, piece, v0)
    if out is None:
        out = torch.empty_like(p, memory_format=torch.contiguous_format)
    elif out.shape != p.shape or out.dtype != p.dtype or not out.is_contiguous():
        raise ValueError("sparse_kd_apply: out must be a contiguous tensor of the piece's shape and dtype")
    _call(p, Phase.APPLY, plan.rows, plan.vocab, v0, p.shape[1], plan.ids, plan.vals, plan.target, plan.weight,
          plan.grad_scale, out, None, None, None, coef, delta, plan.options)
    return out


def rescale_stats(stats: Tensor, new_max: Tensor, temperature: float) -> Tensor:
    """``stats`` with its sums rescaled from its own max (column 0) to ``new_max (N,)`` (>= it):
    after this, the statistics of pieces with the same max combine by summing columns 1-7."""
    out = stats.clone()
    old = stats[:, 0]
    empty = old == -math.inf
    d = torch.where(empty, torch.zeros_like(old), (old - new_max) / temperature)
    f = torch.where(empty, torch.zeros_like(old), torch.exp(d))
    g = torch.where(empty, torch.zeros_like(old), torch.exp(old - new_max))
    out[:, 3] = f * (stats[:, 3] + d * stats[:, 1])
    out[:, 1] = f * stats[:, 1]
    out[:, 2] = g * stats[:, 2]
    out[:, 0] = new_max
    return out


def merge_stats(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Statistics of two disjoint pieces of every row combined (as ``merge`` in the header)."""
    m = torch.maximum(a[:, 0], b[:, 0])
    ra, rb = rescale_stats(a, m, temperature), rescale_stats(b, m, temperature)
    out = ra + rb
    out[:, 0] = m
    return out
