"""Reference partial-label refinement: a stable sort gives the documented tie rule."""

from __future__ import annotations

import torch

from .. import _backend


def partial_labels_rows(probs: torch.Tensor, k: int, renormalize: bool) -> torch.Tensor:
    """``(N, C)`` probabilities → ``(N, C)`` top-k targets, computed in float32/float64.

    A stable descending sort keeps equal probabilities in index order, so ties
    go to the lower class index, as in the kernels.
    """
    acc = torch.float64 if probs.dtype == torch.float64 else torch.float32
    p = probs.to(acc)
    order = torch.sort(p, dim=-1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, order, True)
    if renormalize:
        kept = torch.where(keep, p, torch.zeros_like(p))
        mass = kept.sum(-1, keepdim=True)
        out = torch.where(mass > 0, kept / torch.where(mass > 0, mass, torch.ones_like(mass)),
                          keep.to(acc) / k)
    else:
        out = keep.to(acc) / k
    return out.to(probs.dtype)


@_backend.register("partial_labels", "torch")
def partial_labels_backend(probs: torch.Tensor, *, k: int, renormalize: bool) -> torch.Tensor:
    """Backend adapter (any device, any float dtype)."""
    return partial_labels_rows(probs, k, renormalize)
