"""``sd_outputs``: every round's outputs of multi-round self-distillation of a linear probe.

Model (Jeong & Chung, arXiv 2402.10482): a bias-free
linear probe ``z_i = W x_i / tau`` on fixed features, trained on soft targets by
``(1/N) sum_i CE(t_i, softmax(z_i)) + (lam/2) ||W||_F^2``.  Round 0 (the teacher)
trains on the given labels ``Y``; round ``t`` on the previous round's outputs
(``variant="sd"``), on ``xi P_{t-1} + (1 - xi) Y`` (``"mix"``), or once on the
teacher's top-2 classes at 1/2 each (``"pll"``).  Only ``G = X X^T`` and
``lam_e = lam tau^2`` enter the solution.

Linearised softmax (``softmax(z) ~ 1/K + z/K`` on zero-mean logits) gives, with
``rho = K N lam tau^2`` and ``H = G (G + rho I)^-1``, ``Q_t = P_t - 1/K = H Tc_t`` where
``Tc_t`` is the centred target of round ``t`` (for plain SD ``Q_t = H^(t+1) (Y - 1/K)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import scipy.linalg

from .. import _checks
from . import exact as _exact
from ._inputs import as_float64, as_int_labels, targets, test_kernel, top_k_targets

_WHERE = "sd_outputs"
_MODES = ("linearized", "exact")
_VARIANTS = ("sd", "pll", "mix")


@dataclass
class SDResult:
    """Outputs of every round of :func:`sd_outputs` (and :func:`pysd.theory.block_sd_outputs`).

    Attributes (``R`` = rounds, all numpy, float64 unless said):
        outputs: ``(R+1, N, K)`` training outputs ``P_t``; index 0 is the teacher.
            Linearised outputs are affine in the labels and can leave [0, 1].
        centered: ``(R+1, N, K)`` ``P_t - 1/K`` computed without forming ``P_t`` (for
            exact mode the logits minus their row mean), divided by its largest
            absolute entry per round.  Same row argmax as ``outputs``, but safe to
            compare after many rounds when ``P_t = 1/K + tiny`` (and in float32).
        predictions: ``(R+1, N)`` int64 row argmax of ``centered`` (ties: lower class).
        accuracy, clean_accuracy, noisy_accuracy: ``(R+1,)`` fraction of instances whose
            prediction equals ``true_labels`` (all / given label correct / given label
            wrong); None without ``true_labels``; NaN for an empty split.
        residuals: ``(R+1,)`` fixed-point residuals ``||P - softmax(G (T - P)/(N lam_e))||_inf``
            (exact mode), else None.
        test_outputs: ``(R+1, M, K)`` outputs on test points when ``test_gram`` was given.
        targets: ``(R+1, N, K)`` the targets each round trained on (round 0: the labels).
        mode, variant, lam, temperature, xi, rho: the configuration (``rho = K N lam tau^2``).
    """

    outputs: np.ndarray
    centered: np.ndarray
    predictions: np.ndarray
    accuracy: Optional[np.ndarray]
    clean_accuracy: Optional[np.ndarray]
    noisy_accuracy: Optional[np.ndarray]
    residuals: Optional[np.ndarray]
    test_outputs: Optional[np.ndarray]
    targets: np.ndarray
    mode: str
    variant: str
    lam: float
    temperature: float
    xi: float
    rho: float


def _scaled(q: np.ndarray) -> np.ndarray:
    m = np.abs(q).max(initial=0.0)
    return q / m if m > 0 else q.copy()


def _accuracies(pred: np.ndarray, given: np.ndarray, true: Optional[np.ndarray]):
    if true is None:
        return None, None, None
    correct = pred == true[None, :]
    noisy = given.argmax(1) != true

    def frac(mask):
        return correct[:, mask].mean(1) if mask.any() else np.full(pred.shape[0], np.nan)

    return correct.mean(1), frac(~noisy), frac(noisy)


def _check_common(variant, mode, rounds, xi, lam, temperature, where):
    if variant not in _VARIANTS:
        raise ValueError(f"{where}: variant must be one of {_VARIANTS}, got {variant!r}")
    if mode not in _MODES:
        raise ValueError(f"{where}: mode must be one of {_MODES}, got {mode!r}")
    rounds = _checks.integer(where, "rounds", rounds, lo=0)
    xi = _checks.real(where, "xi", xi)
    if variant != "mix" and xi != 1.0:
        raise ValueError(f"{where}: xi is the mixing weight of variant='mix'; got xi={xi} with variant={variant!r}")
    if variant == "pll" and rounds != 1:
        raise ValueError(f"{where}: variant='pll' trains one student on the teacher's top-2 classes; "
                         f"rounds must be 1, got {rounds}")
    lam = _checks.real(where, "lam", lam, lo=0.0, lo_open=True)
    temperature = _checks.real(where, "temperature", temperature, lo=0.0, lo_open=True)
    return rounds, xi, lam, temperature


def linear_rounds(apply_h: Callable[[np.ndarray], Tuple[np.ndarray, Optional[np.ndarray]]], y: np.ndarray,
                  rounds: int, variant: str, xi: float, test_gram: Optional[np.ndarray]):
    """Iterate the linearised rounds.

    ``apply_h(Tc)`` returns ``(H Tc, (G + rho I)^-1 Tc or None)`` for centred targets
    ``Tc`` ``(N, K)``.  Returns centred outputs ``(R+1, N, K)``, targets ``(R+1, N, K)``
    and test outputs ``(R+1, M, K)`` or None.
    """
    n, k = y.shape
    yc = y - 1.0 / k
    q = np.empty((rounds + 1, n, k))
    tg = np.empty((rounds + 1, n, k))
    te = None if test_gram is None else np.empty((rounds + 1, test_gram.shape[0], k))
    tc = yc
    for t in range(rounds + 1):
        if t > 0:
            if variant == "sd":
                tc = q[t - 1]
            elif variant == "mix":
                tc = xi * q[t - 1] + (1.0 - xi) * yc
            else:
                tc = top_k_targets(q[0], 2) - 1.0 / k
        tg[t] = tc + 1.0 / k
        q[t], w = apply_h(tc)
        if te is not None:
            # Test logits / K are G_te (T - P) / (K N lam_e) = G_te (G + rho I)^-1 Tc.
            te[t] = 1.0 / k + test_gram @ w
    return q, tg, te


def _psd_error(where, rho):
    return ValueError(f"{where}: the Gram matrix is not positive semi-definite "
                      f"(G + rho I is not positive definite for rho = {rho:.3g})")


def _gram_operator(gram: np.ndarray, rho: float, where: str):
    try:
        factor = scipy.linalg.cho_factor(gram + rho * np.eye(gram.shape[0]), lower=True, check_finite=False)
    except np.linalg.LinAlgError as exc:
        raise _psd_error(where, rho) from exc

    def apply_h(tc):
        # H Tc = G (G + rho I)^-1 Tc: one Cholesky solve and one product, no cancellation
        # (I - rho (G + rho I)^-1 would lose the small components).
        w = scipy.linalg.cho_solve(factor, tc, check_finite=False)
        return gram @ w, w

    return apply_h


def _feature_operator(x: np.ndarray, rho: float):
    """``H = X (X^T X + rho I)^-1 X^T`` for ``(N, p)`` features with ``p < N``: a ``p x p`` factorisation."""
    factor = scipy.linalg.cho_factor(x.T @ x + rho * np.eye(x.shape[1]), lower=True, check_finite=False)

    def apply_h(tc):
        q = x @ scipy.linalg.cho_solve(factor, x.T @ tc, check_finite=False)
        # (G + rho I)^-1 Tc = (Tc - H Tc) / rho, the coefficients test points need.
        return q, (tc - q) / rho

    return apply_h


def _gram_input(gram_or_features, n: int, kind: str, where: str) -> Tuple[str, np.ndarray]:
    """``("gram", G)`` or ``("features", X)`` after validation."""
    x = as_float64(gram_or_features, "gram_or_features", where, ndim=2)
    if kind not in ("auto", "gram", "features"):
        raise ValueError(f"{where}: kind must be 'auto', 'gram' or 'features', got {kind!r}")
    if x.shape[0] != n:
        raise ValueError(f"{where}: gram_or_features has {x.shape[0]} rows but labels have {n}")
    scale = max(np.abs(x).max(initial=0.0), 1e-300)
    square_sym = x.shape == (n, n) and np.abs(x - x.T).max(initial=0.0) <= 1e-10 * scale
    if kind == "gram" or (kind == "auto" and square_sym):
        if not square_sym:
            raise ValueError(f"{where}: kind='gram' needs a symmetric (N, N) matrix, got shape {x.shape}"
                             + ("" if x.shape != (n, n) else " that is not symmetric"))
        return "gram", 0.5 * (x + x.T)
    return "features", x


def sd_outputs(gram_or_features, labels, num_classes: int, lam: float, rounds: int, *,
               mode: str = "linearized", variant: str = "sd", xi: float = 1.0, temperature: float = 1.0,
               test_gram=None, true_labels=None, kind: str = "auto", tol: float = 1e-10,
               max_iter: int = 100) -> SDResult:
    r"""Outputs of the teacher and of ``rounds`` self-distilled students of a linear probe.

    Args:
        gram_or_features: the ``(N, N)`` Gram matrix ``G = X X^T`` (symmetric PSD), or
            ``(N, p)`` features ``X``.  With features and ``p < N`` the linearised mode
            works in weight space (``X (X^T X + rho I)^-1 X^T``, a ``p x p`` system, no
            ``N x N`` matrix); otherwise ``G`` is formed, an ``(N, N)`` float64 matrix that
            the kernel-form solution needs by definition.  numpy or torch (any device;
            copied to CPU float64).
        labels: ``(N,)`` integer given (noisy) labels in ``[0, K)``, or ``(N, K)`` soft labels.
        num_classes: ``K >= 2``.
        lam: weight decay ``> 0``.
        rounds: number of students ``R >= 0`` (``variant="pll"``: exactly 1).
        mode: ``"linearized"`` (closed form) or ``"exact"`` (softmax CE, solved to the
            fixed-point residual ``tol``).
        variant: ``"sd"`` (train on the previous outputs), ``"mix"`` (on
            ``xi P_{t-1} + (1 - xi) Y``), ``"pll"`` (one student on the teacher's top-2
            classes at 1/2 each; ties go to the lower class index).
        xi: mixing weight of ``"mix"`` (any real; ``xi = 0`` retrains on the labels).
        temperature: ``tau > 0``; teacher and student softmax at ``tau``, the same as
            ``lam -> lam tau^2``.
        test_gram: optional ``(M, N)`` cross Gram ``X_test X_train^T`` (scikit-learn's orientation, as
            ``pairwise_kernels(X_test, X_train, metric="linear")``): adds ``test_outputs``.
        true_labels: optional ``(N,)`` true classes: adds the accuracies.
        kind: ``"auto"`` (a symmetric ``(N, N)`` input is a Gram matrix, anything else
            features), ``"gram"`` or ``"features"`` (e.g. for square symmetric features).
        tol: exact mode: required fixed-point residual per round.
        max_iter: exact mode: Newton steps per round.

    Returns:
        :class:`SDResult`.

    Cost: linearised, one Cholesky of ``G + rho I`` (``N^3/3``) and ``O(N^2 K)`` per round
    (a triangular solve pair and a product with ``G``), or with ``p < N`` features
    ``O(N p^2)`` once and ``O(N p K)`` per round; exact, per Newton step a dense SPD
    Cholesky of size ``N (K-1)`` (``O((N K)^3)`` time, ``8 (N (K-1))^2`` bytes; typically 3-5
    steps per round), so exact mode is meant for validation sizes (``N K`` up to a few
    thousand).  The dense factorisations run on numpy's BLAS threads.

    Raises:
        ValueError / TypeError naming the argument for bad input; ValueError when G is
        not PSD; RuntimeError when exact mode cannot reach ``tol`` (raise ``lam`` or
        ``tol``: the residual's floor grows like ``||G|| / (N lam)`` times rounding).
    """
    rounds, xi, lam, temperature = _check_common(variant, mode, rounds, xi, lam, temperature, _WHERE)
    y = targets(labels, num_classes, _WHERE)
    n, k = y.shape
    if n == 0:
        raise ValueError(f"{_WHERE}: labels are empty (N = 0)")
    source, mat = _gram_input(gram_or_features, n, kind, _WHERE)
    tg_test = None
    if test_gram is not None:
        tg_test = test_kernel(test_gram, "test_gram", _WHERE, n)
    true = None if true_labels is None else as_int_labels(true_labels, "true_labels", _WHERE, n, k)
    tol = _checks.real(_WHERE, "tol", tol, lo=0.0, lo_open=True)
    max_iter = _checks.integer(_WHERE, "max_iter", max_iter, lo=1)
    lam_e = lam * temperature ** 2
    rho = k * n * lam_e
    if mode == "linearized" and source == "features" and mat.shape[1] < n:
        apply_h = _feature_operator(mat, rho)
    else:
        gram = mat if source == "gram" else mat @ mat.T
        apply_h = _gram_operator(gram, rho, _WHERE)

    if mode == "linearized":
        q, tg, te = linear_rounds(apply_h, y, rounds, variant, xi, tg_test)
        outputs = q + 1.0 / k
        centered = np.stack([_scaled(qt) for qt in q])
        residuals = None
    else:
        outputs, centered, tg, te, residuals = _exact_rounds(gram, y, apply_h, lam_e, rounds, variant, xi,
                                                             tg_test, tol, max_iter)
    pred = centered.argmax(-1)
    acc, clean, noisy = _accuracies(pred, y, true)
    return SDResult(outputs, centered, pred, acc, clean, noisy, residuals, te, tg, mode, variant, lam,
                    temperature, xi, rho)


def _exact_rounds(gram, y, apply_h, lam_e, rounds, variant, xi, test_gram, tol, max_iter):
    n, k = y.shape
    outputs = np.empty((rounds + 1, n, k))
    centered = np.empty_like(outputs)
    tg = np.empty_like(outputs)
    te = None if test_gram is None else np.empty((rounds + 1, test_gram.shape[0], k))
    residuals = np.empty(rounds + 1)
    for t in range(rounds + 1):
        if t == 0:
            target = y
        elif variant == "sd":
            target = outputs[t - 1]
        elif variant == "mix":
            target = xi * outputs[t - 1] + (1.0 - xi) * y
        else:
            target = top_k_targets(centered[0], 2)
        if target.min() < 0:
            raise ValueError(f"{_WHERE}: variant='mix' with xi={xi} gives negative targets in round {t}; "
                             "exact mode needs probability targets (0 <= xi <= 1)")
        # Start from the better of A = 0 and the linearised solution A = K (G + rho I)^-1 Tc.
        zero = np.zeros((n, k))
        lin = k * apply_h(target - 1.0 / k)[1]
        obj = [_exact._objective(gram @ a, a, target, lam_e) for a in (zero, lin)]
        start = lin if obj[1] < obj[0] else zero
        r = _exact.solve_round(gram, target, lam_e, start, tol=tol, max_iter=max_iter)
        if r.residual > tol:
            raise RuntimeError(f"{_WHERE}: exact mode reached a fixed-point residual of {r.residual:.3g} in "
                               f"round {t}, above tol={tol:.3g}; raise lam or tol")
        tg[t] = target
        outputs[t] = r.outputs
        centered[t] = _scaled(r.logits - r.logits.mean(1, keepdims=True))
        residuals[t] = r.residual
        if te is not None:
            te[t] = _exact.softmax_rows(test_gram @ r.coef)
    return outputs, centered, tg, te, residuals
