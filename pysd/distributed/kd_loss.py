"""``pysd.distributed.global_normalizer``: the loss normalizer of :func:`pysd.kd_loss` over the ranks."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from ._comm import agree_flag, message

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
