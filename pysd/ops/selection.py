"""Small-loss sample selection: ``pysd.small_loss_mask``, ``pysd.gmm_clean_prob`` (vectorised torch) and the
per-mini-batch rule of AML-KD, :func:`batch_small_loss_mask`."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _checks

_EPS = 1e-9  # keeps floor(ratio * n) from losing a sample to rounding (0.29 * 100 = 28.999...)


def _losses(losses, op: str) -> tuple:
    t, kind = _checks.array(op, "losses", losses)
    if not t.is_floating_point():
        raise TypeError(f"{op}: losses must be floating point, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{op}: losses must have shape (N,), got {tuple(t.shape)}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{op}: losses contain NaN or inf")
    return t, kind


def small_loss_mask(losses, labels, ratio: float, per_class: bool = True):
    """Keep the ``ratio`` fraction of smallest losses, per class (or over all rows).

    Args:
        losses: ``(N,)`` float per-sample losses (torch, numpy or DLPack).
        labels: ``(N,)`` integer classes >= 0; needed when ``per_class`` (may be None otherwise).
        ratio: keep fraction in [0, 1].  A class with ``n_c`` rows keeps ``floor(ratio * n_c)`` of them
            (``floor(ratio * N)`` overall when ``per_class=False``), as AML-KD's ``floor((1 - r) B)``.
        per_class: select within each class (default) or over all rows.

    Ties in loss keep the lower row index first, so the result is deterministic.

    Returns:
        ``(N,)`` bool mask of the kept rows, of the same array kind as ``losses``.  Allocates a few
        ``(N,)`` int64 buffers (two stable sorts).
    """
    op = "small_loss_mask"
    x, kind = _losses(losses, op)
    ratio = _checks.real(op, "ratio", ratio, 0.0, 1.0)
    _checks.boolean(op, "per_class", per_class)
    n = x.shape[0]
    order = torch.argsort(x, stable=True)
    if not per_class:
        keep = torch.zeros(n, dtype=torch.bool, device=x.device)
        keep[order[: math.floor(float(ratio) * n + _EPS)]] = True
        return _checks.restore(keep, kind)
    if labels is None:
        raise ValueError(f"{op}: labels are required when per_class=True")
    y, _ = _checks.array(op, "labels", labels)
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{op}: labels must be integer class indices, got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{op}: labels must have shape ({n},) like losses, got {tuple(y.shape)}")
    y = y.to(device=x.device, dtype=torch.int64)
    if n and bool((y < 0).any()):
        raise ValueError(f"{op}: labels must be >= 0, found {int(y.min())}")
    counts = torch.bincount(y)
    k = torch.floor(float(ratio) * counts.to(torch.float64) + _EPS).to(torch.int64)
    order = order[torch.argsort(y[order], stable=True)]
    ys = y[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=x.device) - starts[ys]
    keep = torch.zeros(n, dtype=torch.bool, device=x.device)
    keep[order] = rank < k[ys]
    return _checks.restore(keep, kind)


def _log_gauss(x: Tensor, w: Tensor, mu: Tensor, var: Tensor) -> Tensor:
    return torch.log(w) - 0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mu) ** 2 / var)


def _m_step(x: Tensor, resp: Tensor, reg_covar: float):
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    mu = (resp * x).sum(0) / nk
    var = (resp * (x - mu) ** 2).sum(0) / nk + reg_covar
    return nk / nk.sum(), mu, var


def gmm_clean_prob(losses, *, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4):
    """Posterior of the low-mean component of a two-component 1-D Gaussian mixture (DivideMix).

    The losses are min-max normalised to [0, 1]; the mixture starts from 1-D 2-means (Lloyd from centres
    0 and 1, hard responsibilities), then runs sklearn's ``GaussianMixture`` EM: at most ``max_iter``
    steps, stopping when the mean log-likelihood changes by less than ``tol``, variances plus
    ``reg_covar``.  Computed in float64.

    Args:
        losses: ``(N,)`` float per-sample losses (torch, numpy or DLPack).

    Returns:
        ``(N,)`` clean probabilities in the dtype and kind of ``losses``.  Constant losses (nothing to
        separate, including N = 1) give 1 for every sample.  Allocates O(N) buffers.
    """
    op = "gmm_clean_prob"
    t, kind = _losses(losses, op)
    x = t.to(torch.float64)
    n = x.shape[0]
    lo, hi = (x.min(), x.max()) if n else (x.new_zeros(()), x.new_zeros(()))
    if n == 0 or not bool(hi > lo):
        return _checks.restore(torch.ones_like(t), kind)
    x = ((x - lo) / (hi - lo)).unsqueeze(1)
    centres = x.new_tensor([0.0, 1.0])
    assign = None
    for _ in range(100):
        new = (x - centres).abs().argmin(1)
        if assign is not None and bool((new == assign).all()):
            break
        assign = new
        onehot = torch.nn.functional.one_hot(assign, 2).to(x.dtype)
        centres = torch.where(onehot.sum(0) > 0, (onehot * x).sum(0) / onehot.sum(0).clamp_min(1), centres)
    resp = torch.nn.functional.one_hot(assign, 2).to(x.dtype)
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    mu = (resp * x).sum(0) / nk
    var = (resp * (x - mu) ** 2).sum(0) / nk + reg_covar
    w = nk / n
    prev = -math.inf
    for _ in range(max_iter):
        lp = _log_gauss(x, w, mu, var)
        norm = torch.logsumexp(lp, 1, keepdim=True)
        ll = float(norm.mean())
        w, mu, var = _m_step(x, torch.exp(lp - norm), reg_covar)
        if abs(ll - prev) < tol:
            break
        prev = ll
    lp = _log_gauss(x, w, mu, var)
    post = torch.exp(lp - torch.logsumexp(lp, 1, keepdim=True))
    return _checks.restore(post[:, int(torch.argmin(mu))].to(t.dtype), kind)


def batch_small_loss_mask(losses: Tensor, keep_ratio: float, batch_size: int, order: Optional[Tensor] = None) -> Tensor:
    """The published rule: inside each mini-batch of ``batch_size`` (in ``order``, the order in which
    samples were seen), keep the ``floor(keep_ratio * B)`` smallest losses.  Returns an ``(N,)`` bool mask
    in dataset order."""
    n = losses.shape[0]
    order = torch.arange(n, device=losses.device) if order is None else order
    mask = torch.zeros(n, dtype=torch.bool, device=losses.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        keep = int(keep_ratio * idx.numel())
        if keep > 0:
            mask[idx[torch.argsort(losses[idx], stable=True)[:keep]]] = True
    return mask
