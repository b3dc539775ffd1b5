"""Label-noise generators of the SelfPLL code (``util.get_corrupted_target``) and the validation design.

All generators take the true labels ``(N,)`` (numpy or torch integers), return the
noisy labels as an int64 numpy array ``(N,)``, and draw from
``numpy.random.default_rng(seed)``: the same seed gives the same labels, but not the
authors' exact draws (their code uses its own random calls).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _checks
from ._inputs import as_float64, as_int_labels


def _labels(labels, num_classes, where):
    k = _checks.integer(where, "num_classes", num_classes, lo=2)
    return as_int_labels(labels, "labels", where, len(labels), k), k


def _sample_rows(transition: np.ndarray, labels: np.ndarray, rng) -> np.ndarray:
    cdf = np.cumsum(transition[labels], axis=1)
    u = rng.random(labels.shape[0])[:, None]
    return np.minimum((u >= cdf).sum(1), transition.shape[1] - 1).astype(np.int64)


def symmetric_noise(labels, num_classes: int, eta: float, *, seed: Optional[int] = None) -> np.ndarray:
    """Each label flips with probability ``eta`` to one of the other ``K - 1`` classes, uniformly."""
    y, k = _labels(labels, num_classes, "symmetric_noise")
    eta = _checks.real("symmetric_noise", "eta", eta, lo=0.0, hi=1.0)
    t = np.full((k, k), eta / (k - 1))
    np.fill_diagonal(t, 1.0 - eta)
    return _sample_rows(t, y, np.random.default_rng(seed))


def asymmetric_transition(num_classes: int, eta: float) -> np.ndarray:
    """``(K, K)`` transition matrix of the asymmetric noise: ``eta/K`` to every class, another
    ``eta/K`` to class ``(k + 1) mod K``, the rest kept: diagonal ``1 - eta``, so ``eta`` is the flip rate."""
    k = _checks.integer("asymmetric_transition", "num_classes", num_classes, lo=2)
    eta = _checks.real("asymmetric_transition", "eta", eta, lo=0.0, hi=1.0)
    t = np.full((k, k), eta / k)
    t[np.arange(k), (np.arange(k) + 1) % k] += eta / k
    t[np.arange(k), np.arange(k)] += 1.0 - eta - eta / k
    return t


def asymmetric_noise(labels, num_classes: int, eta: float, *, seed: Optional[int] = None) -> np.ndarray:
    """Labels drawn from :func:`asymmetric_transition` (class ``k`` leans towards ``k + 1``)."""
    y, k = _labels(labels, num_classes, "asymmetric_noise")
    return _sample_rows(asymmetric_transition(k, eta), y, np.random.default_rng(seed))


def superclass_noise(labels, superclass, eta: float, *, seed: Optional[int] = None) -> np.ndarray:
    """Each label flips with probability ``eta`` to another class of its superclass, uniformly.

    ``superclass``: ``(K,)`` integer group of each class (see :func:`superclass_groups`);
    a class alone in its group never flips.  For groups of size ``s`` the plurality
    condition of :func:`pysd.theory.min_rounds` is ``eta < (s - 1)/s``.
    """
    where = "superclass_noise"
    groups = np.asarray(superclass)
    if groups.ndim != 1 or groups.size < 2 or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(f"{where}: superclass must be a (K,) integer array with K >= 2, got {groups.shape}")
    y, k = _labels(labels, groups.size, where)
    eta = _checks.real(where, "eta", eta, lo=0.0, hi=1.0)
    same = groups[:, None] == groups[None, :]
    size = same.sum(1)
    t = np.where(same, eta / np.maximum(size - 1, 1)[:, None], 0.0)
    np.fill_diagonal(t, np.where(size > 1, 1.0 - eta, 1.0))
    return _sample_rows(t, y, np.random.default_rng(seed))


def superclass_groups(features, labels, num_classes: int, num_groups: int) -> np.ndarray:
    """``(K,)`` superclass of each class: average-linkage clustering of the class means' correlations.

    The authors group classes by hierarchical clustering of class-mean feature
    correlations; this uses distance ``1 - corr`` between class means, average linkage,
    cut into ``num_groups`` clusters (labels 0..num_groups-1).  ``features``: ``(N, p)``.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    where = "superclass_groups"
    x = as_float64(features, "features", where, ndim=2)
    y, k = _labels(labels, num_classes, where)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: features have {x.shape[0]} rows but labels have {y.shape[0]}")
    g = _checks.integer(where, "num_groups", num_groups, lo=1)
    if g > k:
        raise ValueError(f"{where}: num_groups must be <= num_classes={k}, got {g}")
    counts = np.bincount(y, minlength=k)
    if (counts == 0).any():
        raise ValueError(f"{where}: class {int(np.argmin(counts))} has no instances")
    means = np.zeros((k, x.shape[1]))
    np.add.at(means, y, x)
    means /= counts[:, None]
    dist = np.clip(1.0 - np.corrcoef(means), 0.0, None)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(0.5 * (dist + dist.T), checks=False), method="average")
    return (fcluster(tree, t=g, criterion="maxclust") - 1).astype(np.int64)


def deterministic_flips(num_classes: int, n: int, f: int):
    """The validation design: ``K`` clusters of ``n``, exactly ``f`` instances relabelled to each other class.

    Returns ``(true_labels, given_labels)``, int64 ``(K n,)``, cluster-major.  In cluster
    ``a`` the first ``f`` instances get the smallest other class, the next ``f`` the
    next one, and so on, so ``m[a, a] = 1 - (K-1) f / n``, ``m[a, k] = f / n`` and the
    label frequencies are uniform.
    """
    where = "deterministic_flips"
    k = _checks.integer(where, "num_classes", num_classes, lo=2)
    n = _checks.integer(where, "n", n, lo=1)
    f = _checks.integer(where, "f", f, lo=0)
    if (k - 1) * f > n:
        raise ValueError(f"{where}: (K-1) f = {(k - 1) * f} flips exceed the cluster size n = {n}")
    true = np.repeat(np.arange(k, dtype=np.int64), n)
    given = true.copy()
    for a in range(k):
        others = [b for b in range(k) if b != a]
        for j, b in enumerate(others):
            given[a * n + j * f: a * n + (j + 1) * f] = b
    return true, given
