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


def block_gram(K: int, n: int, c: float, d: float, *, eps: float = 0.0, seed: Optional[int] = None) -> np.ndarray:
    """The ``(K n, K n)`` float64 block Gram matrix (cluster-major order).

    ``G_ii = 1``, ``G_ij = c`` in a cluster, ``d`` across clusters, plus (``eps > 0``)
    Uniform(-eps, eps) noise, symmetrised (the authors' noise is not, which can break
    PSD and so uniqueness), diagonal kept at 1.  ``seed`` seeds numpy's default generator.
    """
    K, n, c, d = _check_block(K, n, c, d, "block_gram")
    eps = _checks.real("block_gram", "eps", eps, lo=0.0)
    cluster = np.repeat(np.arange(K), n)
    g = np.where(cluster[:, None] == cluster[None, :], c, d)
    if eps > 0:
        noise = np.random.default_rng(seed).uniform(-eps, eps, g.shape)
        g = g + 0.5 * (noise + noise.T)
    np.fill_diagonal(g, 1.0)
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
    """

    rounds: Optional[int]
    plurality: bool
    balanced: bool
    delta: float
    alpha: float
    beta: float
    gamma: float


def min_rounds(confusion, n: int, c: float, d: float, lam: float, *, temperature: float = 1.0) -> MinRounds:
    """Rounds of multi-round SD until every training label is corrected (block model).

    A noisy instance (true ``a``, given ``l``) is classified correctly at round ``t`` iff
    ``(beta/alpha)^(t+1) > 1 + 1/(m[a, a] - m[a, l])``; clean instances stay correct
    under plurality.  So ``t* = floor(ln(1 + 1/Delta_a) / ln(beta/alpha))`` maximised
    over the clusters ``a`` that have noisy instances (``t* = 0`` without noise); for
    symmetric noise at rate eta, ``Delta = 1 - eta K/(K-1)``.

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
    balanced = bool(np.abs(m.mean(0) - 1.0 / K).max() <= 1e-12)
    delta = float(gap.min())
    noisy = diag < 1.0
    if not plurality or (noisy.any() and beta <= alpha):
        return MinRounds(None, plurality, balanced, delta, alpha, beta, gamma)
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
    return MinRounds(t_star, plurality, balanced, delta, alpha, beta, gamma)


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
