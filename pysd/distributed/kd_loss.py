"""``pysd.distributed.global_normalizer``: the loss normalizer of :func:`pysd.kd_loss` over the ranks."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor


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
    """
    if not isinstance(target, Tensor) or target.is_floating_point():
        raise TypeError("global_normalizer: target must be an integer tensor of class indices")
    valid = target.reshape(-1) != ignore_index
    if weight is None:
        total = valid.sum().to(torch.float64)
    else:
        if weight.numel() != valid.numel():
            raise ValueError(f"global_normalizer: weight has {weight.numel()} elements, target {valid.numel()}")
        total = (weight.detach().reshape(-1).to(torch.float64) * valid).sum()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total
