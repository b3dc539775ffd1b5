"""Reference sparse-teacher distillation loss: the teacher scattered into a dense
vector over the vocabulary, the loss from the formulas, the gradient by autograd.

Float64-capable and deliberately plain (several ``(N, V)`` temporaries): it is the
oracle of the tests and the ``torch`` backend of ``pysd::sparse_kd_loss``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._codes import Divergence, Tail, TeacherFormat

FKL, RKL, JSD = int(Divergence.FKL), int(Divergence.RKL), int(Divergence.JSD)
LOGITS, PROBS, LOGPROBS = int(TeacherFormat.LOGITS), int(TeacherFormat.PROBS), int(TeacherFormat.LOGPROBS)
RENORMALIZE, BUCKET, UNIFORM = int(Tail.RENORMALIZE), int(Tail.BUCKET), int(Tail.UNIFORM)


def dense_teacher(indices: torch.Tensor, values: torch.Tensor, vocab: int, *, format: int, tail: int,
                  retemper: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse teacher as dense probabilities, from the documented semantics.

    ``indices, values: (N, k)``.  Returns ``p (N, V)`` (the k entries; for ``tail=uniform``
    also the tail classes), ``in_k (N, V) bool`` (classes named by an entry), ``p_tail (N,)``
    (the bucket's mass for ``tail=bucket``, else 0) and ``has_mass (N,) bool``.

    Entries with an id < 0 are padding; duplicate ids add their probabilities.  The stored
    distribution is ``exp(values)`` (logprobs, and logits up to a constant), or ``values``
    (probs); its missing mass ``m = max(0, 1 - sum)`` is the tail.  Re-tempering raises
    every atom (entries, bucket, each uniform tail class) to ``retemper = T_gen / T`` and
    renormalizes.
    """
    n, k = indices.shape
    dt = values.dtype
    valid = indices >= 0
    ids = torch.where(valid, indices, torch.zeros_like(indices)).long()
    logv = torch.log(values) if format == PROBS else values
    logv = torch.where(valid, logv, torch.full_like(logv, -math.inf))
    if format == LOGITS:  # only ratios matter: shift for range
        shift = logv.amax(-1, keepdim=True)
        logv = logv - torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    w = torch.zeros(n, vocab, dtype=dt).scatter_add(1, ids, torch.exp(logv))
    in_k = torch.zeros(n, vocab, dtype=dt).scatter_add(1, ids, valid.to(dt)) > 0  # padding adds 0
    mass = 1.0 - w.sum(-1) if format != LOGITS else torch.zeros(n, dtype=dt)
    m = mass.clamp_min(0.0)
    wr = torch.where(in_k & (w > 0), w.clamp_min(1e-300) ** retemper, torch.zeros_like(w))
    atom = torch.zeros(n, dtype=dt)
    tail_total = torch.zeros(n, dtype=dt)
    if tail == BUCKET:
        named_all = in_k.sum(-1) == vocab  # no class left for the bucket
        atom = torch.where((m > 0) & ~named_all, m.clamp_min(1e-300) ** retemper, atom)
        tail_total = atom
    elif tail == UNIFORM:
        nu = (~in_k).sum(-1).to(dt)
        ok = (nu > 0) & (m > 0)
        atom = torch.where(ok, (m / nu.clamp_min(1)).clamp_min(1e-300) ** retemper, atom)
        tail_total = nu * atom
    z = wr.sum(-1) + tail_total
    has_mass = z > 0
    zs = torch.where(has_mass, z, torch.ones_like(z))
    p = wr / zs[:, None]
    pt = atom / zs
    if tail == UNIFORM:
        p = torch.where(in_k, p, pt[:, None].expand_as(p))
        pt = torch.zeros_like(pt)
    return p, in_k, pt, has_mass


def _xlog_ratio(a: torch.Tensor, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """a (la - lb) with 0 * anything = 0."""
    return torch.where(a > 0, a * (la - lb), torch.zeros_like(a))


def _jsd_terms(p, lp, q, lq, beta):
    lm = torch.logaddexp(math.log(beta) + lp, math.log(1.0 - beta) + lq)
    return beta * _xlog_ratio(p, lp, lm) + (1.0 - beta) * _xlog_ratio(q, lq, lm)


def soft_divergence(student: torch.Tensor, p: torch.Tensor, in_k: torch.Tensor, pt: torch.Tensor, *, tail: int,
                    divergence: int, beta: float, temperature: float) -> torch.Tensor:
    """D(teacher atoms, student atoms) per row, differentiable in ``student (N, V)``."""
    lq = F.log_softmax(student / temperature, -1)
    q = lq.exp()
    lp = torch.log(p)
    if tail == BUCKET:
        # atoms: the named classes, and one bucket holding everything else
        zero = torch.zeros_like(q)
        qk = torch.where(in_k, q, zero)
        qt = (1.0 - qk.sum(-1)).clamp_min(0.0)
        # log q_t through a safe branch: autograd of where() would turn log(0)'s -inf into NaN
        lqt = torch.where(qt > 0, torch.log(torch.where(qt > 0, qt, torch.ones_like(qt))), -math.inf)
        lpt = torch.log(pt)
        lqk = torch.where(in_k, lq, zero)
        lpk = torch.where(in_k, lp, zero)
        pk = torch.where(in_k, p, zero)
        if divergence == FKL:
            return _xlog_ratio(pk, lpk, lqk).sum(-1) + _xlog_ratio(pt, lpt, lqt)
        if divergence == RKL:
            return _xlog_ratio(qk, lqk, lpk).sum(-1) + _xlog_ratio(qt, lqt, lpt)
        jk = torch.where(in_k, _jsd_terms(p, lp, q, lq, beta), zero)
        return jk.sum(-1) + _jsd_terms(pt, lpt, qt, lqt, beta)
    if divergence == FKL:
        return _xlog_ratio(p, lp, lq).sum(-1)
    if divergence == RKL:
        return _xlog_ratio(q, lq, lp).sum(-1)
    return _jsd_terms(p, lp, q, lq, beta).sum(-1)


def sparse_kd_rows(student, indices, values, target, weight, *, format: int, tail: int, retemper: float,
                   divergence: int, beta: float, temperature: float, soft_coef: float, hard_weight: float,
                   label_smoothing: float, ignore_index: int) -> torch.Tensor:
    """Weighted per-row loss ``(N,)`` for ``student (N, V)``, differentiable in ``student``."""
    n, v = student.shape
    loss = student.new_zeros(n)
    valid = torch.ones(n, dtype=torch.bool) if target is None else target != ignore_index
    if target is not None and hard_weight != 0.0:
        lq1 = F.log_softmax(student, -1)
        tgt = torch.where(valid, target, torch.zeros_like(target))
        nll = -lq1.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        smooth = -lq1.sum(-1) / v
        loss = loss + hard_weight * ((1.0 - label_smoothing) * nll + label_smoothing * smooth)
    if soft_coef != 0.0:
        p, in_k, pt, has_mass = dense_teacher(indices, values.to(student.dtype), v, format=format, tail=tail,
                                              retemper=retemper)
        d = soft_divergence(student, p, in_k, pt, tail=tail, divergence=divergence, beta=beta,
                            temperature=temperature)
        loss = loss + soft_coef * torch.where(has_mass, d, torch.zeros_like(d))
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss * weight if weight is not None else loss


def _autograd_inside_op():
    """Re-enables autograd recording inside a custom op's implementation (which runs below
    the autograd dispatch keys), so the reference can differentiate itself there."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.AutogradCPU, torch._C.DispatchKey.AutogradCUDA,
                torch._C.DispatchKey.ADInplaceOrView):
        exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def backend(student, indices, values, target, weight, grad_scale, *, compute_grad: bool, **options):
    """Backend adapter: ``(rows, grad_scale * d sum(rows) / d student)`` in the accumulation dtype."""
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    s = student.detach().to(acc).requires_grad_(compute_grad)
    with _autograd_inside_op(), torch.enable_grad():
        rows = sparse_kd_rows(s, indices, values.to(acc), target, weight, **options)
        if not compute_grad:
            return rows.detach(), None
        (grad,) = torch.autograd.grad((rows * grad_scale.to(acc)).sum(), s)
    return rows.detach(), grad.to(student.dtype)
