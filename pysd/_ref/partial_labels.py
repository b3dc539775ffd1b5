"""Reference partial-label refinement: a stable sort gives the documented tie rule.

:func:`partial_labels` has the public signature of :func:`pysd.partial_labels`; :func:`backend` is the
``torch`` backend of the custom op.
"""

from __future__ import annotations

import torch

from .._codes import acc_dtype


def partial_labels(teacher_probs: torch.Tensor, k: int = 2, *, renormalize: bool = False,
                   strict: bool = False) -> torch.Tensor:
    """:func:`pysd.partial_labels` in plain torch for valid ``(..., C)`` inputs (``strict`` is not
    checked here), computed in float32/float64 and returned in the input dtype.

    A stable descending sort keeps equal probabilities in index order, so ties
    go to the lower class index, as in the kernels.
    """
    c = teacher_probs.shape[-1]
    p = teacher_probs.detach().reshape(-1, c).to(acc_dtype(teacher_probs.dtype))
    order = torch.sort(p, dim=-1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, order, True)
    uniform = keep.to(p.dtype) / k
    if renormalize:
        kept = torch.where(keep, p, torch.zeros_like(p))
        mass = kept.sum(-1, keepdim=True)
        out = torch.where(mass > 0, kept / torch.where(mass > 0, mass, torch.ones_like(mass)), uniform)
    else:
        out = uniform
    return out.to(teacher_probs.dtype).reshape(teacher_probs.shape)


def backend(probs: torch.Tensor, *, k: int, renormalize: bool) -> torch.Tensor:
    """Backend adapter (any device, any float dtype): ``(N, C)`` rows → ``(N, C)`` targets."""
    return partial_labels(probs, k, renormalize=renormalize)
