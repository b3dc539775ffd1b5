"""Multi-round self-distillation of a linear probe, trained the way the paper's code does it.

A bias-free linear layer on fixed features, full batch, soft cross-entropy through
:func:`pysd.kd_loss` plus weight decay; each student is trained from scratch on the
previous model's softmax outputs on the training inputs.  Trained to tight tolerances
in float64, its outputs are the exact-mode outputs of :func:`pysd.theory.sd_outputs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import _checks
from ..ops.kd_loss import kd_loss
from ..ops.partial_labels import partial_labels

_WHERE = "linear_probe_sd"


@dataclass
class LinearProbeResult:
    """Result of :func:`linear_probe_sd` (``R`` = rounds; tensors on the features' device, in ``dtype``).

    outputs: ``(R+1, N, K)`` softmax outputs ``softmax(X W_t / tau)`` on the training inputs.
    predictions: ``(R+1, N)`` int64 argmax of ``outputs`` (ties: lower class).
    weights: ``(R+1, p, K)`` trained weights ``W_t`` (logits ``X W_t``).
    targets: ``(R+1, N, K)`` the targets each round trained on.
    accuracy, clean_accuracy, noisy_accuracy: ``(R+1,)`` float64 numpy, against ``true_labels``
        (all / given label correct / given label wrong); None without ``true_labels``.
    residuals: ``(R+1,)`` float64 numpy fixed-point residuals
        ``||P - softmax(X X^T (T - P) / (N lam tau^2))||_inf`` of the cross-entropy rounds
        (NaN for a GCE round, which has a different stationarity condition).
    grad_norms: ``(R+1,)`` float64 numpy, final ``max |dLoss/dW|``.
    iterations: ``(R+1,)`` int numpy, L-BFGS iterations per round.
    """

    outputs: Tensor
    predictions: Tensor
    weights: Tensor
    targets: Tensor
    accuracy: Optional[np.ndarray]
    clean_accuracy: Optional[np.ndarray]
    noisy_accuracy: Optional[np.ndarray]
    residuals: np.ndarray
    grad_norms: np.ndarray
    iterations: np.ndarray


def _gce(logits: Tensor, targets: Tensor, q: float, temperature: float) -> Tensor:
    # Generalized cross-entropy over the candidate classes (SelfPLL util.partial_loss):
    # mean over the candidates of (1 - p_k^q) / q, i.e. the target-weighted sum.
    p = torch.softmax(logits / temperature, dim=-1)
    return (targets * (1.0 - p.clamp_min(0).pow(q)) / q).sum(-1).mean()


def _train(x: Tensor, w0: Tensor, targets: Tensor, lam: float, temperature: float, loss: str, q: float,
           grad_tol: float, max_iter: int):
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=grad_tol, tolerance_change=0.0,
                            history_size=50, line_search_fn="strong_wolfe")

    def objective():
        logits = x @ w
        if loss == "ce":
            data = kd_loss(logits, targets, teacher_format="probs", divergence="fkl", temperature=temperature,
                           scale_t2=False)
        else:
            data = _gce(logits, targets, q, temperature)
        return data + 0.5 * lam * (w * w).sum()

    def closure():
        opt.zero_grad()
        f = objective()
        f.backward()
        return f

    # L-BFGS stops early on a flat line search; restarting from the current point with a
    # fresh history lets it finish, and stops when a restart makes no progress.
    best, iters = math.inf, 0
    for _ in range(20):
        opt.step(closure)
        iters += opt.state[w]["n_iter"]
        closure()
        g = float(w.grad.abs().max())
        if g <= grad_tol or g >= best:
            break
        best = g
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=grad_tol, tolerance_change=0.0,
                                history_size=50, line_search_fn="strong_wolfe")
    w = w.detach()
    if loss == "ce" and g > grad_tol:
        w, g = _newton_polish(x, w, targets, lam, temperature, grad_tol, g)
    return w, g, iters


def _newton_polish(x: Tensor, w: Tensor, targets: Tensor, lam: float, temperature: float, grad_tol: float,
                   g_max: float, steps: int = 4):
    """Newton-CG steps on the convex soft-CE objective, from L-BFGS's end point.

    Near ``max|grad| ~ 1e-9`` a step changes the objective by less than float64 resolves, so
    L-BFGS's line search stalls there; Newton steps need gradients only.  The Hessian-vector
    product of ``mean_i CE(t_i, softmax(x_i W / tau)) + lam/2 ||W||^2`` is analytic:
    ``X^T (p * XV - p <p, XV>) / (N tau^2) + lam V``.  A step is kept only if it lowers
    ``max |grad|``.
    """
    n, tau = x.shape[0], temperature

    def grad_and_probs(w_: Tensor):
        p = torch.softmax(x @ w_ / tau, dim=-1)
        return x.T @ (p - targets) / (n * tau) + lam * w_, p

    g, p = grad_and_probs(w)
    for _ in range(steps):
        def hvp(v: Tensor) -> Tensor:
            u = x @ v
            return x.T @ (p * u - p * (p * u).sum(-1, keepdim=True)) / (n * tau * tau) + lam * v

        d, r = torch.zeros_like(w), g.clone()
        q, rr = r.clone(), float((r * r).sum())
        for _ in range(min(4 * w.numel(), 200)):
            hq = hvp(q)
            a = rr / float((q * hq).sum())
            d += a * q
            r -= a * hq
            rr_next = float((r * r).sum())
            if rr_next <= 1e-32 * max(float((g * g).sum()), 1e-300):
                break
            q, rr = r + (rr_next / rr) * q, rr_next
        g_new, p_new = grad_and_probs(w - d)
        m = float(g_new.abs().max())
        if not m < g_max:
            break
        w, g, p, g_max = w - d, g_new, p_new, m
        if g_max <= grad_tol:
            break
    return w, g_max


def _as_tensor(x, name, dtype, device=None) -> Tensor:
    t = _checks.array(_WHERE, name, x, sequences=True)[0].detach()
    return t.to(dtype=dtype, device=device if device is not None else t.device)


def _check_options(variant, optimizer, pll_loss, dtype, rounds, lam, temperature, gce_q, grad_tol,
                   max_iter) -> None:
    _checks.choice(_WHERE, "variant", variant, ("sd", "pll"))
    _checks.choice(_WHERE, "optimizer", optimizer, ("lbfgs",))
    _checks.choice(_WHERE, "pll_loss", pll_loss, ("gce", "ce"))
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{_WHERE}: dtype must be torch.float32 or torch.float64, got {dtype}")
    _checks.integer(_WHERE, "rounds", rounds, 0)
    if variant == "pll" and rounds != 1:
        raise ValueError(f"{_WHERE}: variant='pll' trains one student; rounds must be 1, got {rounds}")
    for name, v in (("lam", lam), ("temperature", temperature), ("gce_q", gce_q), ("grad_tol", grad_tol)):
        _checks.real(_WHERE, name, v, 0.0, lo_open=True)
    _checks.integer(_WHERE, "max_iter", max_iter, 1)


def _check_data(features, noisy_labels, num_classes, true_labels, dtype):
    """``(x (N, p), y (N,) int64, K, true labels or None)``, checked."""
    x = _as_tensor(features, "features", dtype)
    if x.dim() != 2:
        raise ValueError(f"{_WHERE}: features must be (N, p), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{_WHERE}: features have NaN or infinite entries")
    n = x.shape[0]
    y = _as_tensor(noisy_labels, "noisy_labels", torch.int64, x.device)
    if y.shape != (n,):
        raise ValueError(f"{_WHERE}: noisy_labels must have shape ({n},), got {tuple(y.shape)}")
    if n == 0:
        raise ValueError(f"{_WHERE}: no training instances (N = 0)")
    if num_classes is not None:
        num_classes = _checks.integer(_WHERE, "num_classes", num_classes, 2)
    k = max(int(y.max()) + 1, 2) if num_classes is None else num_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"{_WHERE}: noisy_labels must lie in [0, {k})")
    true = None
    if true_labels is not None:
        true = _as_tensor(true_labels, "true_labels", torch.int64, x.device)
        if true.shape != (n,) or int(true.min()) < 0 or int(true.max()) >= k:
            raise ValueError(f"{_WHERE}: true_labels must have shape ({n},) with classes in [0, {k})")
    return x, y, k, true


def _train_rounds(x, y, k, rounds, lam, temperature, variant, pll_loss, gce_q, pll_warm_start, grad_tol, max_iter):
    """``(outputs, predictions, weights, targets, residuals, grad_norms, iterations)`` of the rounds."""
    n, p = x.shape
    dtype = x.dtype
    onehot = torch.nn.functional.one_hot(y, k).to(dtype)
    outputs = torch.empty((rounds + 1, n, k), dtype=dtype, device=x.device)
    tg = torch.empty_like(outputs)
    weights = torch.empty((rounds + 1, p, k), dtype=dtype, device=x.device)
    residuals = np.empty(rounds + 1)
    grad_norms = np.empty(rounds + 1)
    iterations = np.empty(rounds + 1, dtype=np.int64)
    lam_e = lam * temperature ** 2
    zero = torch.zeros((p, k), dtype=dtype, device=x.device)
    for t in range(rounds + 1):
        if t == 0:
            target, loss, start = onehot, "ce", zero
        elif variant == "sd":
            target, loss, start = outputs[t - 1], "ce", zero
        else:
            target = partial_labels(outputs[0], 2)
            loss = pll_loss
            start = weights[0] if pll_warm_start else zero
        w, g, it = _train(x, start, target, lam, temperature, loss, gce_q, grad_tol, max_iter)
        out = torch.softmax(x @ w / temperature, dim=-1)
        tg[t], outputs[t], weights[t] = target, out, w
        grad_norms[t], iterations[t] = g, it
        if loss == "ce":
            fixed = torch.softmax(x @ (x.T @ (target - out)) / (n * lam_e), dim=-1)
            residuals[t] = float((out - fixed).abs().max())
        else:
            residuals[t] = math.nan
    return outputs, outputs.argmax(-1), weights, tg, residuals, grad_norms, iterations


def _accuracies(pred, y, true):
    """Accuracy overall, on clean rows and on noisy rows per round (None without true labels)."""
    if true is None:
        return None, None, None
    correct = (pred == true).cpu().numpy()
    is_noisy = (y != true).cpu().numpy()
    rounds = correct.shape[0]

    def frac(mask):
        return correct[:, mask].mean(1) if mask.any() else np.full(rounds, np.nan)

    return correct.mean(1), frac(~is_noisy), frac(is_noisy)


def linear_probe_sd(features, noisy_labels, *, rounds: int, lam: float, variant: str = "sd",
                    temperature: float = 1.0, optimizer: str = "lbfgs", num_classes: Optional[int] = None,
                    true_labels=None, pll_loss: str = "gce", gce_q: float = 0.7, pll_warm_start: bool = True,
                    grad_tol: float = 1e-12, max_iter: int = 500, dtype: torch.dtype = torch.float64
                    ) -> LinearProbeResult:
    r"""Train a linear-probe teacher and its self-distilled students, as in Jeong & Chung's code.

    Round 0 (the teacher) minimises ``(1/N) sum_i CE(y_i, softmax(x_i W / tau)) + (lam/2) ||W||^2``
    on the given labels; round ``t`` minimises the same with the targets
    ``softmax(x_i W_{t-1} / tau)`` (``variant="sd"``), or, for ``variant="pll"``, trains one
    student on ``pysd.partial_labels(teacher outputs, k=2)`` (the teacher's top-2 classes at
    1/2 each).  The soft cross-entropy is ``pysd.kd_loss(..., teacher_format="probs",
    divergence="fkl", temperature=tau, scale_t2=False)``; without the ``tau^2`` factor the
    optimum depends on ``lam tau^2`` only, as in :func:`pysd.theory.sd_outputs`.  Every
    model starts from ``W = 0`` and is trained full batch by L-BFGS (strong Wolfe line
    search) until ``max |dLoss/dW| <= grad_tol``.

    The PLL student follows the authors' code by default: generalized cross-entropy
    (``pll_loss="gce"``, ``q = gce_q = 0.7``: ``sum_k t_k (1 - p_k^q)/q``) started from the
    teacher's weights (``pll_warm_start=True``).  The theory's PLL student is
    ``pll_loss="ce"`` (convex, so the start does not matter).

    Args:
        features: ``(N, p)`` fixed features (tensor or array; computed in ``dtype`` on its device).
        noisy_labels: ``(N,)`` integer given labels.
        rounds: number of students ``R >= 0`` (``variant="pll"``: exactly 1).
        lam: weight decay ``> 0``.
        variant: ``"sd"`` or ``"pll"``.
        temperature: ``tau > 0`` of every softmax (teacher outputs and students).
        optimizer: ``"lbfgs"`` (the only optimiser: full-batch quasi-Newton).
        num_classes: ``K`` (default: ``max(noisy_labels) + 1``, at least 2).
        true_labels: optional ``(N,)`` true classes, for the accuracies.
        grad_tol, max_iter: L-BFGS stopping rule (per restart).
        dtype: float64 (default) or float32.

    Returns:
        :class:`LinearProbeResult`.
    """
    _check_options(variant, optimizer, pll_loss, dtype, rounds, lam, temperature, gce_q, grad_tol, max_iter)
    x, y, k, true = _check_data(features, noisy_labels, num_classes, true_labels, dtype)
    res = _train_rounds(x, y, k, rounds, lam, temperature, variant, pll_loss, gce_q, pll_warm_start, grad_tol,
                        max_iter)
    return LinearProbeResult(*res[:4], *_accuracies(res[0].argmax(-1), y, true), *res[4:])
