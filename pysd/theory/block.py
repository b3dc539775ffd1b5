"""Block-structured Gram matrices: the scalar closed form, the rounds condition, PLL vs SD margins.

Block model (Jeong & Chung, arXiv 2402.10482): K classes of n instances each, instance
``i`` in cluster ``i // n`` (the cluster is the true class), ``G_ii = 1``, ``G_ij = c``
within a cluster and ``d`` across.  ``G`` has three eigenvalue levels, ``1 - c``
(within-cluster zero-sum vectors), ``mu2 = 1 - c + n (c - d)`` (cluster indicators
orthogonal to 1) and ``mu1 = mu2 + N d`` (the all-ones vector), so ``H = G (G + rho I)^-1``
acts on centred targets ``V`` as

    H V = alpha V + (beta - alpha) clustermean(V) + (gamma - beta) mean(V),

with the shrink factors ``alpha < beta < gamma`` of :func:`shrink_factors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import warnings

import numpy as np

from .. import _checks
from ._inputs import as_float64, as_int_labels, targets, top_k_targets
from .closed_form import SDResult, _accuracies, _check_common, _scaled


def _check_block(k, n, c, d, where):
    k = _checks.integer(where, "K", k, lo=2)
    n = _checks.integer(where, "n", n, lo=1)
    c = _checks.real(where, "c", c)
    d = _checks.real(where, "d", d)
    mu2 = 1.0 - c + n * (c - d)
    if 1.0 - c < 0 or mu2 < 0 or mu2 + k * n * d < 0:
        raise ValueError(f"{where}: the block Gram with c={c}, d={d}, n={n}, K={k} is not PSD "
                         f"(eigenvalues 1-c={1 - c:.3g}, mu2={mu2:.3g}, mu1={mu2 + k * n * d:.3g})")
    return k, n, c, d


_PSD_MODES = ("raise", "project", "ignore")


def block_gram(K: int, n: int, c: float, d: float, *, eps: float = 0.0, seed: Optional[int] = None,
               psd: str = "raise") -> np.ndarray:
    """The ``(K n, K n)`` float64 block Gram matrix (cluster-major order).

    ``G_ii = 1``, ``G_ij = c`` in a cluster, ``d`` across clusters, plus (``eps > 0``)
    Uniform(-eps, eps) noise, symmetrised (the authors' noise is not symmetric at all), diagonal
    kept at 1.  ``seed`` seeds numpy's default generator.

    Symmetric noise does *not* keep the matrix PSD: the noise matrix has eigenvalues of order
    ``eps sqrt(K n / 3)``, which exceed the smallest block eigenvalue ``1 - c`` once ``K n`` is
    large (with ``eps = 0.05``, ``c = 0.4``, ``d = 0.1`` the smallest eigenvalue is about -0.29 at
    ``K n = 500`` and -1.2 at ``K = 4``, ``n = 500``).
    ``psd`` says what happens then (checked with one ``eigvalsh`` when ``eps > 0``):
    ``"raise"`` (default) a ``ValueError`` naming ``eps`` and the smallest eigenvalue;
    ``"project"`` the nearest PSD matrix in Frobenius norm (negative eigenvalues set to 0; its
    diagonal is then no longer exactly 1); ``"ignore"`` the indefinite matrix as is.
    """
    where = "block_gram"
    K, n, c, d = _check_block(K, n, c, d, where)
    eps = _checks.real(where, "eps", eps, lo=0.0)
    if psd not in _PSD_MODES:
        raise ValueError(f"{where}: psd must be one of {_PSD_MODES}, got {psd!r}")
    _checks.alloc(where, "K * n", K * n, 8.0 * (3 if eps > 0 else 1) * (K * n) ** 2, "the (K n, K n) float64 matrix")
    cluster = np.repeat(np.arange(K), n)
    g = np.where(cluster[:, None] == cluster[None, :], c, d)
    if eps > 0:
        noise = np.random.default_rng(seed).uniform(-eps, eps, g.shape)
        g = g + 0.5 * (noise + noise.T)
    np.fill_diagonal(g, 1.0)
    if eps > 0 and psd != "ignore":
        mu, u = np.linalg.eigh(g) if psd == "project" else (np.linalg.eigvalsh(g), None)
        if mu[0] < -1e-12 * max(abs(mu[-1]), 1.0):
            if psd == "raise":
                raise ValueError(f"{where}: the noise eps={eps} makes the matrix indefinite (smallest eigenvalue "
                                 f"{mu[0]:.3g} at K n = {K * n}); lower eps, pass psd='project' for the nearest "
                                 "PSD matrix, or psd='ignore'")
            g = (u * np.clip(mu, 0.0, None)) @ u.T
            g = 0.5 * (g + g.T)
    return g


def shrink_factors(K: int, n: int, c: float, d: float, lam: float, *, temperature: float = 1.0):
    """``(alpha, beta, gamma)``: the eigenvalue shrink factors ``mu / (mu + rho)`` of the three levels.

    ``rho = K N lam tau^2`` with ``N = K n``.  ``alpha`` weighs an instance's own label,
    ``beta`` its cluster's average, ``gamma`` the global average.
    """
    K, n, c, d = _check_block(K, n, c, d, "shrink_factors")
    lam = _checks.real("shrink_factors", "lam", lam, lo=0.0, lo_open=True)
    temperature = _checks.real("shrink_factors", "temperature", temperature, lo=0.0, lo_open=True)
    rho = K * K * n * lam * temperature ** 2
    mu3 = 1.0 - c
    mu2 = mu3 + n * (c - d)
    mu1 = mu2 + K * n * d
    return mu3 / (mu3 + rho), mu2 / (mu2 + rho), mu1 / (mu1 + rho)


def block_sd_outputs(labels, K: int, n: int, c: float, d: float, lam: float, rounds: int, *,
                     variant: str = "sd", xi: float = 1.0, temperature: float = 1.0,
                     true_labels=None) -> SDResult:
    """Linearised :func:`sd_outputs` on ``block_gram(K, n, c, d)`` in ``O(K N)`` per round, no N x N matrix.

    Instance ``i`` belongs to cluster ``i // n``; ``labels`` are the given labels
    (``(N,)`` integers or ``(N, K)`` soft).  For plain SD this is the scalar formula

        P_t[i, k] = 1/K + alpha^(t+1) Y[i, k] + (beta^(t+1) - alpha^(t+1)) m[a, k]
                        + (gamma^(t+1) - beta^(t+1)) g[k] - gamma^(t+1)/K

    (``m[a, k]`` the fraction of cluster ``a`` labelled ``k``, ``g`` the overall label
    frequencies).  Same arguments and result as :func:`sd_outputs` with
    ``mode="linearized"`` (no ``test_outputs``; ``mode`` is ``"block"``).
    """
    where = "block_sd_outputs"
    K, n, c, d = _check_block(K, n, c, d, where)
    rounds, xi, lam, temperature = _check_common(variant, "linearized", rounds, xi, lam, temperature, where)
    y = targets(labels, K, where)
    if y.shape[0] != K * n:
        raise ValueError(f"{where}: labels must cover N = K n = {K * n} instances, got {y.shape[0]}")
    true = None if true_labels is None else as_int_labels(true_labels, "true_labels", where, K * n, K)
    alpha, beta, gamma = shrink_factors(K, n, c, d, lam, temperature=temperature)
    levels = np.array([alpha, beta, gamma])

    def parts(t):
        # Components of the centred targets T - 1/K on the three eigenspaces.  Means are taken
        # of T itself and 1/K subtracted after, so balanced one-hot labels give an exactly zero
        # global part: otherwise its rounding error, amplified by (gamma/beta)^t, would decide
        # the argmax after many rounds.
        cm = t.reshape(K, n, K).sum(1) / n
        gm = t.sum(0) / (K * n)
        cm_rep = np.repeat(cm, n, axis=0)
        return np.stack([t - cm_rep, cm_rep - gm, np.broadcast_to(gm - 1.0 / K, t.shape)])

    comp = parts(y)
    gains = levels.copy()
    q = np.empty((rounds + 1,) + y.shape)
    centered = np.empty_like(q)
    tg = np.empty_like(q)
    tg[0] = y
    for t in range(rounds + 1):
        if t > 0:
            if variant == "sd":
                gains = gains * levels
                tg[t] = 1.0 / K + q[t - 1]
            elif variant == "mix":
                gains = levels * (xi * gains + 1.0 - xi)
                tg[t] = xi * (1.0 / K + q[t - 1]) + (1.0 - xi) * y
            else:
                tg[t] = top_k_targets(centered[0], 2)
                comp, gains = parts(tg[t]), levels.copy()
        q[t] = np.tensordot(gains, comp, axes=1)
        # Rescale the gains before combining so that no component underflows after many rounds.
        top = np.abs(gains).max()
        centered[t] = _scaled(np.tensordot(gains / top, comp, axes=1) if top > 0 else q[t])
    pred = centered.argmax(-1)
    acc, clean, noisy = _accuracies(pred, y, true)
    return SDResult(q + 1.0 / K, centered, pred, acc, clean, noisy, None, None, tg, "block", variant, lam,
                    temperature, xi, K * K * n * lam * temperature ** 2)


def label_confusion(true_labels, given_labels, num_classes: int) -> np.ndarray:
    """``(K, K)`` float64 ``m[a, k]``: the fraction of true class ``a`` whose given label is ``k``.

    Rows of classes without instances are 0.
    """
    where = "label_confusion"
    K = _checks.integer(where, "num_classes", num_classes, lo=2)
    true_arr = as_int_labels(true_labels, "true_labels", where, len(true_labels), K)
    given = as_int_labels(given_labels, "given_labels", where, true_arr.shape[0], K)
    counts = np.zeros((K, K))
    np.add.at(counts, (true_arr, given), 1.0)
    size = counts.sum(1, keepdims=True)
    return np.divide(counts, size, out=np.zeros_like(counts), where=size > 0)


def _check_confusion(confusion, where):
    m = as_float64(confusion, "confusion", where, ndim=2)
    if m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"{where}: confusion must be a (K, K) matrix with K >= 2, got {m.shape}")
    if (m < 0).any() or np.abs(m.sum(1) - 1.0).max() > 1e-9:
        raise ValueError(f"{where}: confusion rows must be label distributions (non-negative, summing to 1)")
    return m


@dataclass
class MinRounds:
    """Result of :func:`min_rounds`.

    rounds: the first round ``t*`` (0 = the teacher) from which every training
        instance is classified as its true class in the linearised block model; None
        when that never happens (plurality fails, or ``beta <= alpha``).
    plurality: the corruption condition ``m[a, a] > max_{k != a} m[a, k]`` for every a.
    balanced: overall label frequencies are uniform (the formula assumes it).
    delta: ``min_a (m[a, a] - max_{l != a} m[a, l])``.
    alpha, beta, gamma: the shrink factors.
    imbalance: ``max_k |g_k - 1/K|``, how far the overall label frequencies ``g`` (column means
        of ``m``) are from uniform.
    rounds_with_frequencies: the first round at which the linearised block model, *with* the
        global term ``(gamma^(t+1) - beta^(t+1)) g[k]`` the formula drops, classifies every
        training instance correctly (None if not within ``max(4 (rounds + 1), 1000)`` rounds).
        Equals ``rounds`` when balanced; when not, the gap is how far the formula is off.
    """

    rounds: Optional[int]
    plurality: bool
    balanced: bool
    delta: float
    alpha: float
    beta: float
    gamma: float
    imbalance: float = 0.0
    rounds_with_frequencies: Optional[int] = None


def min_rounds(confusion, n: int, c: float, d: float, lam: float, *, temperature: float = 1.0) -> MinRounds:
    """Rounds of multi-round SD until every training label is corrected (block model).

    A noisy instance (true ``a``, given ``l``) is classified correctly at round ``t`` iff
    ``(beta/alpha)^(t+1) > 1 + 1/(m[a, a] - m[a, l])``; clean instances stay correct
    under plurality.  So ``t* = floor(ln(1 + 1/Delta_a) / ln(beta/alpha))`` maximised
    over the clusters ``a`` that have noisy instances (``t* = 0`` without noise); for
    symmetric noise at rate eta, ``Delta = 1 - eta K/(K-1)``.

    The formula assumes balanced overall label frequencies (the global term then cancels).  When
    they are not balanced, a ``UserWarning`` says by how much (``imbalance``) and gives the round
    the full linearised model reaches (``rounds_with_frequencies``), which the result also holds.

    Args:
        confusion: ``(K, K)`` label-confusion matrix ``m`` (see :func:`label_confusion`).
        n, c, d: block Gram parameters (``n`` instances per class).
        lam, temperature: as in :func:`sd_outputs`.
    """
    where = "min_rounds"
    m = _check_confusion(confusion, where)
    K = m.shape[0]
    alpha, beta, gamma = shrink_factors(K, n, c, d, lam, temperature=temperature)
    diag = np.diag(m)
    off = np.where(np.eye(K, dtype=bool), -np.inf, m)
    gap = diag - off.max(1)
    plurality = bool((gap > 0).all())
    imbalance = float(np.abs(m.mean(0) - 1.0 / K).max())
    balanced = imbalance <= 1e-12
    delta = float(gap.min())
    noisy = diag < 1.0
    if not plurality or (noisy.any() and beta <= alpha):
        result = MinRounds(None, plurality, balanced, delta, alpha, beta, gamma, imbalance, None)
        return _report_imbalance(result, m)
    t_star = 0
    log_ratio = np.log(beta / alpha) if noisy.any() else 1.0
    for g in gap[noisy]:
        need = np.log1p(1.0 / g)
        t = int(np.floor(need / log_ratio))
        # Guard the floor against rounding at an exact boundary: t is the least t with (t+1) ln r > need.
        while (t + 1) * log_ratio <= need:
            t += 1
        while t > 0 and t * log_ratio > need:
            t -= 1
        t_star = max(t_star, t)
    return _report_imbalance(MinRounds(t_star, plurality, balanced, delta, alpha, beta, gamma, imbalance, t_star), m)


def _first_correct_round(m: np.ndarray, alpha: float, beta: float, gamma: float, horizon: int) -> Optional[int]:
    """First t <= horizon at which every (true a, given l) group with ``m[a, l] > 0`` has the strict argmax
    a of ``alpha^(t+1) [k = l] + (beta^(t+1) - alpha^(t+1)) m[a, k] + (gamma^(t+1) - beta^(t+1)) g[k]``."""
    g = m.mean(0)
    a_idx, l_idx = np.nonzero(m > 0)
    for t in range(horizon + 1):
        pa, pb, pg = alpha ** (t + 1), beta ** (t + 1), gamma ** (t + 1)
        scores = (pb - pa) * m[a_idx] + (pg - pb) * g[None, :]
        scores[np.arange(a_idx.size), l_idx] += pa
        own = scores[np.arange(a_idx.size), a_idx]
        scores[np.arange(a_idx.size), a_idx] = -np.inf
        if (own > scores.max(1)).all():
            return t
    return None


def _report_imbalance(result: MinRounds, m: np.ndarray) -> MinRounds:
    if result.balanced:
        return result
    horizon = max(4 * ((result.rounds or 0) + 1), 1000)
    result.rounds_with_frequencies = _first_correct_round(m, result.alpha, result.beta, result.gamma, horizon)
    warnings.warn(f"min_rounds: the label frequencies are not balanced (max |g_k - 1/K| = {result.imbalance:.3g}); "
                  f"the formula's estimate rounds={result.rounds} ignores them, the linearised block model with them "
                  f"reaches every label at round {result.rounds_with_frequencies}", UserWarning, stacklevel=3)
    return result


@dataclass
class MarginComparison:
    """Result of :func:`compare_margins` (block model, balanced labels, plurality).

    sd_margin: ``Delta``, the plurality margin that multi-round SD amplifies.
    pll_margin: ``min_a (1/2 - max_{k != a} m_pll[a, k])``: positive iff the one-round PLL
        student classifies every training instance correctly.
    runner_up: ``(K,)`` the teacher's second class for the clean instances of each cluster.
    pll_better: ``pll_margin > sd_margin``.
    """

    sd_margin: float
    pll_margin: float
    runner_up: np.ndarray
    pll_better: bool


def compare_margins(confusion) -> MarginComparison:
    """PLL-vs-SD margins from the label-confusion matrix ``m`` (Jeong & Chung, arXiv 2402.10482).

    The teacher's top-2 contain the true class of every instance (top-1 when clean,
    top-2 when noisy), so the PLL targets put ``m_pll[a, a] = 1/2`` and, on a wrong
    class ``k``, ``(m[a, k] + [k == k*] m[a, a]) / 2`` with ``k*`` the runner-up of the
    clean instances (the largest ``m[a, k]``, ``k != a``, lower index on ties, as the
    teacher's tie rule).  Symmetric noise at rate eta gives
    ``pll_margin = (eta/2)(K-2)/(K-1)``, which beats ``Delta = 1 - eta K/(K-1)``
    when ``eta > 2(K-1)/(3K-2)``.  Needs plurality (``ValueError`` otherwise).
    """
    where = "compare_margins"
    m = _check_confusion(confusion, where)
    K = m.shape[0]
    off = np.where(np.eye(K, dtype=bool), -np.inf, m)
    gap = np.diag(m) - off.max(1)
    if not (gap > 0).all():
        raise ValueError(f"{where}: the plurality condition fails (true class not the strict plurality "
                         "in every cluster); the teacher's top-2 need not contain the true class")
    runner = off.argmax(1)
    pll = m.copy()
    pll[np.arange(K), runner] += np.diag(m)
    pll = 0.5 * np.where(np.eye(K, dtype=bool), -np.inf, pll)
    pll_margin = float((0.5 - pll.max(1)).min())
    sd_margin = float(gap.min())
    return MarginComparison(sd_margin, pll_margin, runner, pll_margin > sd_margin)
