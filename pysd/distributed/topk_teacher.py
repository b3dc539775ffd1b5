"""``pysd.distributed.topk_teacher``: the global top-k of teacher logits split over the vocabulary."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from .._codes import FLOATS, Tail, TeacherFormat, acc_dtype, options
from ..ops.kd_loss import _rows_view
from ..ops.topk_teacher import topk_teacher as _local_topk
from ..sparse_teacher import SparseTeacher
from ._comm import all_gather_rows, message
from ._vocab import layout

OP = "topk_teacher"


def _check(x, k, temperature, format, tail) -> None:
    if not isinstance(x, Tensor) or x.dtype not in FLOATS:
        raise TypeError(f"{OP}: teacher_logits_shard must be a float32/float64/bfloat16/float16 tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{OP}: teacher_logits_shard must have shape (..., V_r) with V_r >= 1")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{OP}: k must be an int >= 1, got {k!r}")
    _checks.real(OP, "temperature", temperature, 0.0, lo_open=True)
    _checks.option(OP, "format", format, TeacherFormat, options(TeacherFormat))
    _checks.choice(OP, "tail", tail, options(Tail))
    if format == "logits" and tail != "renormalize":
        raise ValueError(f"{OP}: format='logits' needs tail='renormalize' (see SparseTeacher)")


def _merge(cand: Tensor, k: int) -> tuple:
    """``cand (P, N, 2k + 1)``: every rank's logits/T, global ids and log-sum-exp → the global top-k
    (ids ``(N, k)`` int64, logits/T ``(N, k)`` float64; ties: the lower id first) and the global lse."""
    n, pk = cand.shape[1], cand.shape[0] * k
    z = cand[..., :k].permute(1, 0, 2).reshape(n, pk)
    ids = cand[..., k:2 * k].permute(1, 0, 2).reshape(n, pk)
    by_id = torch.argsort(ids, dim=1, stable=True)
    z, ids = z.gather(1, by_id), ids.gather(1, by_id)
    order = torch.argsort(z, dim=1, descending=True, stable=True)[:, :k]
    return ids.gather(1, order).to(torch.int64), z.gather(1, order), torch.logsumexp(cand[..., 2 * k], dim=0)


def topk_teacher(teacher_logits_shard: Tensor, k: int, *, process_group=None, vocab_start: int,
                 temperature: float = 1.0, format: str = "logprobs", tail: str = "renormalize") -> SparseTeacher:
    r""":func:`pysd.topk_teacher` of logits split over the vocabulary across ``process_group``: the
    ``k`` largest of the full row and their values at ``temperature``, on every rank.

    Args:
        teacher_logits_shard: ``(..., V_r)`` float32/float64/bfloat16/float16, this rank's classes
            ``[vocab_start, vocab_start + V_r)``; the shards must tile ``[0, V)``.
        k: ``1 <= k <= V`` (a rank with ``V_r < k`` contributes all its classes).
        temperature, format, tail: as :func:`pysd.topk_teacher` (the same on every rank).

    Returns:
        the same :class:`pysd.SparseTeacher` on every rank: ``indices (..., k)`` int64 **global** ids
        sorted by logit descending (ties: the lower global id first), ``values (..., k)`` float32
        (float64 for float64 input) in ``format`` with the log-sum-exp of the full vocabulary.

    Each rank runs the one-pass local top-k (:func:`pysd.topk_teacher` on its shard, which also
    gives its log-sum-exp); then one all-gather of ``2 min(k, V_r) + 1`` float64 numbers per row and
    rank (values, ids, log-sum-exp; padded to ``2k + 1``) and a merge of the ``P k`` candidates.  Before
    that, one ``all_gather_object`` of the options and shard layout (bad input on any rank raises
    ValueError on every rank).  Memory: the outputs and ``(P, N, 2k + 1)`` float64 candidates.
    """
    x, error = teacher_logits_shard, None
    try:
        _check(x, k, temperature, format, tail)
        _checks.integer(OP, "vocab_start", vocab_start, 0)
    except Exception as exc:  # noqa: BLE001  (any local failure must reach the other ranks)
        error = message(OP, exc)
    ok = error is None
    width = x.shape[-1] if ok else 0
    config = repr((tuple(x.shape[:-1]) if ok else None, str(getattr(x, "dtype", None)), k, temperature, format, tail))
    shard, _ = layout(OP, process_group, config, error, vocab_start, width, 1)
    if k > shard.vocab:
        raise ValueError(f"pysd.distributed.{OP}: k must be in [1, V={shard.vocab}], got {k}")
    x2 = _rows_view(x.detach(), width)
    n, kl = x2.shape[0], min(k, width)
    local = _local_topk(x2, kl, temperature=temperature, format="logprobs")
    z = (x2.gather(1, local.indices).to(torch.float64) / temperature)
    mine = torch.full((n, 2 * k + 1), -torch.inf, dtype=torch.float64, device=x.device)
    mine[:, :kl] = z
    mine[:, k:2 * k] = shard.vocab  # padding: larger than every id, loses every tie
    mine[:, k:k + kl] = local.indices.to(torch.float64) + vocab_start
    mine[:, 2 * k] = z[:, 0] - local.values[:, 0].to(torch.float64) if n else 0.0
    p = dist.get_world_size(process_group)
    cand = torch.empty((p * n, 2 * k + 1), dtype=mine.dtype, device=x.device)
    if n:
        all_gather_rows(cand, mine, process_group)
    ids, top, lse = _merge(cand.view(p, n, 2 * k + 1), k)
    vals = top if format == "logits" else top - lse.unsqueeze(1)
    if format == "probs":
        vals = vals.exp()
    batch = x.shape[:-1]
    return SparseTeacher(ids.reshape(*batch, k), vals.to(acc_dtype(x.dtype)).reshape(*batch, k), format, tail,
                         float(temperature))
