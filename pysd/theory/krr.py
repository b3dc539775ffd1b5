"""Kernel-ridge self-distillation for regression targets (Mobahi et al. 2020; Borup & Andersen 2021).

Round 0 fits ``y`` by kernel ridge regression; round ``t`` fits
``alpha y + (1 - alpha) f_{t-1}(X)``:  ``Y_t = K (K + lam I)^-1 (alpha y + (1 - alpha) Y_{t-1})``.
``alpha = 0`` is the fixed-ridge recursion of Mobahi et al. (``Y_t = (K (K + lam I)^-1)^(t+1) y``,
which collapses to 0); ``alpha > 0`` converges to ridge regression with ridge ``lam / alpha``.
With ``K = V diag(d) V^T`` and ``a_j = d_j / (d_j + lam)`` every round is diagonal:
``B_0 = a``, ``B_t = a ((1 - alpha) B_{t-1} + alpha)``, ``Y_t = V diag(B_t) V^T y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _checks
from ._inputs import as_float64, test_kernel


@dataclass
class KRRResult:
    """Result of :func:`krr_self_distillation` (float64 numpy; ``R`` = rounds, ``y`` of shape ``(N,)`` or ``(N, D)``).

    train: ``(R+1,) + y.shape`` fitted values per round.
    test: ``(R+1, M) + y.shape[1:]`` predictions ``K_test (K + lam I)^-1 target_t`` when ``K_test`` was given.
    gains: ``(R+1, N)`` the spectral gains ``B_t`` per eigenvector of ``K``.
    eigenvalues: ``(N,)`` of ``K`` (ascending).
    limit_train, limit_test: the ``t -> inf`` fit ``alpha K (alpha K + lam I)^-1 y`` (and its
        test predictions ``alpha K_test (alpha K + lam I)^-1 y``); 0 when ``alpha = 0``.
    """

    train: np.ndarray
    test: Optional[np.ndarray]
    gains: np.ndarray
    eigenvalues: np.ndarray
    limit_train: np.ndarray
    limit_test: Optional[np.ndarray]


def krr_self_distillation(K, y, lam: float, rounds: int, alpha: float = 0.0, K_test=None) -> KRRResult:
    """Every round of kernel-ridge self-distillation, in the spectral form (one eigendecomposition).

    Args:
        K: ``(N, N)`` symmetric PSD kernel matrix of the training inputs.
        y: ``(N,)`` or ``(N, D)`` regression targets.
        lam: ridge ``> 0``.
        rounds: students after the first fit (``R >= 0``).
        alpha: weight of the original targets in every student's target, ``0 <= alpha <= 1``.
        K_test: optional ``(M, N)`` kernel between test and training inputs (scikit-learn's orientation:
            ``sklearn.metrics.pairwise.rbf_kernel(X_test, X_train)``, as ``KernelRidge.predict`` uses).
    """
    where = "krr_self_distillation"
    kern = as_float64(K, "K", where, ndim=2)
    n = kern.shape[0]
    if kern.shape != (n, n) or np.abs(kern - kern.T).max(initial=0.0) > 1e-10 * max(np.abs(kern).max(initial=0), 1e-300):
        raise ValueError(f"{where}: K must be a symmetric (N, N) matrix, got shape {kern.shape}")
    yy = as_float64(y, "y", where)
    if yy.ndim not in (1, 2) or yy.shape[0] != n:
        raise ValueError(f"{where}: y must have shape ({n},) or ({n}, D), got {yy.shape}")
    lam = _checks.real(where, "lam", lam, lo=0.0, lo_open=True)
    rounds = _checks.integer(where, "rounds", rounds, lo=0)
    alpha = _checks.real(where, "alpha", alpha, lo=0.0, hi=1.0)
    kt = None
    if K_test is not None:
        kt = test_kernel(K_test, "K_test", where, n)
    d, v = np.linalg.eigh(0.5 * (kern + kern.T))
    if d[0] < -1e-10 * max(abs(d[-1]), 1.0):
        raise ValueError(f"{where}: K is not positive semi-definite (smallest eigenvalue {d[0]:.3g})")
    d = np.clip(d, 0.0, None)
    a = d / (d + lam)
    coef = v.T @ yy
    gains = np.empty((rounds + 1, n))
    gains[0] = a
    for t in range(1, rounds + 1):
        gains[t] = a * ((1.0 - alpha) * gains[t - 1] + alpha)
    expand = (slice(None), None) if yy.ndim == 2 else (slice(None),)
    train = np.stack([v @ (g[expand] * coef) for g in gains])
    limit_gain = alpha * d / (alpha * d + lam)
    limit_train = v @ (limit_gain[expand] * coef)
    test = limit_test = None
    if kt is not None:
        # Round t's target in the eigenbasis has gain c_t (c_0 = 1, c_t = alpha + (1-alpha) B_{t-1});
        # the test prediction applies K_test (K + lam I)^-1 to it.
        c = np.concatenate([np.ones((1, n)), alpha + (1.0 - alpha) * gains[:-1]])
        test = np.stack([kt @ (v @ ((ct / (d + lam))[expand] * coef)) for ct in c])
        limit_test = kt @ (v @ ((alpha / (alpha * d + lam))[expand] * coef))
    return KRRResult(train, test, gains, d, limit_train, limit_test)
