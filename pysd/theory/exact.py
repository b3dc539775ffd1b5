"""Exact (nonlinear softmax) rounds: the strictly convex regularised CE, solved by Newton in kernel form.

One round trains a bias-free linear probe on targets ``T`` (``(N, K)`` rows on the
simplex).  With ``W = X^T A`` the logits are ``S = G A`` and the objective is

    F(A) = (1/N) sum_i [lse(S_i) - T_i . S_i] + (lam_e / 2) tr(A^T G A),    lam_e = lam * tau^2,

whose gradient is ``G R(A)`` with ``R(A) = (softmax(S) - T) / N + lam_e A``.  At the
optimum ``A = (T - P) / (N lam_e)``, so the outputs satisfy the fixed point
``P = softmax(G (T - P) / (N lam_e))``; its sup-norm residual certifies the solve.

Newton solves ``J dA = -R`` with ``J = D G / N + lam_e I`` (``D`` the per-row softmax
Jacobians), which is the Newton step of ``F`` (its Hessian is ``G J``); ``J`` is
invertible for any PSD ``G`` because the eigenvalues of ``D G`` are non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg

from .. import _checks
from ._inputs import as_float64


def softmax_rows(s: np.ndarray) -> np.ndarray:
    z = s - s.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _lse_rows(s: np.ndarray) -> np.ndarray:
    m = s.max(axis=1)
    return m + np.log(np.exp(s - m[:, None]).sum(axis=1))


def _residual(gram: np.ndarray, targets: np.ndarray, outputs: np.ndarray, lam_e: float) -> float:
    n = gram.shape[0]
    return float(np.abs(outputs - softmax_rows(gram @ (targets - outputs) / (n * lam_e))).max(initial=0.0))


def fixed_point_residual(gram, targets, outputs, lam: float, *, temperature: float = 1.0) -> float:
    """Certificate of an exact round: ``max |P - softmax(G (T - P) / (N lam tau^2))|``.

    Args:
        gram: ``(N, N)`` Gram matrix of the training inputs.
        targets: ``(N, K)`` targets ``T`` the round trained on.
        outputs: ``(N, K)`` its softmax outputs ``P`` on the training inputs.
        lam, temperature: weight decay ``> 0`` and softmax temperature ``tau > 0``.
    numpy or torch inputs, evaluated in float64.  Returns the residual as a float; it is 0
    exactly at the minimiser of the round's regularised cross-entropy.
    """
    where = "fixed_point_residual"
    g = as_float64(gram, "gram", where, ndim=2)
    t = as_float64(targets, "targets", where, ndim=2)
    p = as_float64(outputs, "outputs", where, ndim=2)
    n = g.shape[0]
    if g.shape != (n, n) or t.shape[0] != n or p.shape != t.shape:
        raise ValueError(f"{where}: need gram (N, N) and targets, outputs (N, K); got {g.shape}, {t.shape}, "
                         f"{p.shape}")
    lam = _checks.real(where, "lam", lam, lo=0.0, lo_open=True)
    temperature = _checks.real(where, "temperature", temperature, lo=0.0, lo_open=True)
    return _residual(g, t, p, lam * temperature ** 2)


@dataclass
class ExactRound:
    outputs: np.ndarray    # (N, K) softmax outputs
    logits: np.ndarray     # (N, K) S = G A (logits / tau)
    coef: np.ndarray       # (N, K) A
    residual: float        # fixed-point residual of `outputs`
    iterations: int


def _objective(gram_a: np.ndarray, a: np.ndarray, t: np.ndarray, lam_e: float) -> float:
    n = a.shape[0]
    return float((_lse_rows(gram_a) - (t * gram_a).sum(1)).sum() / n + 0.5 * lam_e * (a * gram_a).sum())


def _newton_solver(gram: np.ndarray, p: np.ndarray, lam_e: float) -> Callable[[np.ndarray], np.ndarray]:
    """Factor ``J`` at outputs ``p``; the returned function maps ``R`` to the solution of ``J dA = -R``.

    ``J`` is handled through a symmetric positive definite system of size ``N (K-1)``.

    Each softmax Jacobian ``D_i = diag(p_i) - p_i p_i^T`` has rank ``K - 1`` and factors as
    ``D_i = C_i C_i^T`` with ``C_i`` of shape ``(K, K-1)``: ``C_i = B_i Hh_i[:, :K-1]`` where
    ``B_i = diag(sqrt p_i) - p_i sqrt(p_i)^T`` (``B_i B_i^T = D_i``, ``B_i sqrt(p_i) = 0``) and
    ``Hh_i`` is the Householder reflection sending ``sqrt(p_i)`` to ``-e_K``, whose first
    ``K - 1`` columns span the complement of ``sqrt(p_i)``.  With ``Gt = G / N`` on instances,
    Woodbury gives ``J^-1 = (I - C (lam_e I + C^T Gt C)^-1 C^T Gt) / lam_e``; the inner
    matrix is SPD, so a Cholesky factorisation solves it, and working with ``K - 1``
    columns cuts its cost by ``((K-1)/K)^3`` against the full ``N K`` system.
    """
    n, k = p.shape
    sq = np.sqrt(p)
    b = np.einsum("ik,kl->ikl", sq, np.eye(k)) - p[:, :, None] * sq[:, None, :]   # (N, K, K)
    # B_i Hh_i = B_i - (B_i e_K) v_i^T / (1 + sqrt p_iK), v_i = sqrt(p_i) + e_K.
    c = b[:, :, :-1] - b[:, :, -1:] * (sq[:, None, :-1] / (1.0 + sq[:, -1])[:, None, None])   # (N, K, K-1)
    m = k - 1
    ct = c.transpose(0, 2, 1).reshape(n * m, k)     # rows (i, j), columns k: C_i[k, j]
    inner = ct @ ct.T
    inner.reshape(n, m, n, m)[...] *= (gram / n)[:, None, :, None]
    inner[np.diag_indices_from(inner)] += lam_e
    factor = scipy.linalg.cho_factor(inner, lower=True, overwrite_a=True, check_finite=False)

    def solve(r: np.ndarray) -> np.ndarray:
        rhs = np.einsum("ikj,ik->ij", c, gram @ r / n).reshape(-1)
        z = scipy.linalg.cho_solve(factor, rhs, check_finite=False).reshape(n, m)
        return (np.einsum("ikj,ij->ik", c, z) - r) / lam_e

    return solve


def solve_round(gram: np.ndarray, targets: np.ndarray, lam_e: float, start: np.ndarray, *,
                tol: float, max_iter: int) -> ExactRound:
    """Minimise ``F`` for one round from the coefficients ``start`` (``(N, K)``).

    Damped Newton with Armijo backtracking on ``F``; near the solution a full step
    is also accepted when it lowers ``max |R|``, since ``F`` then changes by less
    than its rounding error.  Once a full step has cut ``max |R|`` a hundredfold, the
    next step first reuses that factorisation (a chord step, ``O(N^2 K)``) and keeps it
    only if it cuts ``max |R|`` tenfold.  Stops once the fixed-point residual is
    ``<= tol``, or after ``max_iter`` steps, or when three steps no longer lower it.
    """
    n = gram.shape[0]

    def resid(a_, s_):
        return (softmax_rows(s_) - targets) / n + lam_e * a_

    a = start.copy()
    s = gram @ a
    f = _objective(s, a, targets, lam_e)
    best = None
    solver, fast = None, False
    for it in range(max_iter + 1):
        p = softmax_rows(s)
        res = _residual(gram, targets, p, lam_e)
        if best is None or res < best.residual:
            best = ExactRound(p, s, a, res, it)
        if res <= tol or it == max_iter or (it - best.iterations) >= 3:
            break
        r = (p - targets) / n + lam_e * a
        r_norm = np.abs(r).max()
        if fast:
            a_try = a + solver(r)
            s_try = gram @ a_try
            if np.abs(resid(a_try, s_try)).max() <= 0.1 * r_norm:
                a, s, f = a_try, s_try, _objective(s_try, a_try, targets, lam_e)
                continue
        solver = _newton_solver(gram, p, lam_e)
        step = solver(r)
        slope = float((gram @ r * step).sum())
        t = 1.0
        while True:
            a_new = a + t * step
            s_new = gram @ a_new
            f_new = _objective(s_new, a_new, targets, lam_e)
            r_new = np.abs(resid(a_new, s_new)).max() if t == 1.0 else np.inf
            if f_new <= f + 1e-4 * t * slope or r_new < r_norm:
                break
            t *= 0.5
            if t < 1e-12:
                break
        fast = r_new <= 0.01 * r_norm
        a, s, f = a_new, s_new, f_new
    return best
