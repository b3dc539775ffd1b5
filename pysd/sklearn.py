"""scikit-learn estimators on pysd's kNN graph and label propagation (importing this module imports scikit-learn).

* :class:`GraphLabelSpreading`: a ``sklearn.semi_supervised.LabelSpreading``-compatible classifier on
  :func:`pysd.knn_graph` and :func:`pysd.propagate` (``fit`` with ``-1`` = unlabelled, ``transduction_``,
  ``label_distributions_``, ``predict`` / ``predict_proba`` for new points, ``score``; usable in ``Pipeline`` and
  ``GridSearchCV``).
* :func:`refine_labels`: refined labels and sample weights for a noisy, fully labelled training set, in the
  label space it was given (strings included), to pass to any estimator's ``fit(X, labels, sample_weight=...)``.

Matching scikit-learn's ``LabelSpreading(kernel="knn", n_neighbors=n, alpha=a)``: scikit-learn links every point to
its ``n`` nearest points *counting itself*, does not symmetrise, normalises with the in-degrees (column sums, as
``scipy.sparse.csgraph.laplacian(normed=True)``), iterates ``F <- a S F + (1 - a) Y`` without class-mass
normalisation, and predicts a new point by the plain mean of ``label_distributions_`` over its ``n`` nearest
training points.  The same model here is::

    GraphLabelSpreading(n_neighbors=n, include_self=True, metric="l2", power=0.0, symmetrize="none",
                        normalize="sym_in", alpha=a, solver="iterate", class_mass_norm=False,
                        max_iter=200, tol=0.0)

and both agree (``label_distributions_``, ``transduction_``, ``predict_proba``) once both have converged (pysd's
iterate starts from ``Y`` rather than ``(1 - a) Y``; the row normalisation removes the scale): give scikit-learn a
``max_iter`` and ``tol`` that let it converge, e.g. ``max_iter=1000, tol=1e-12``.  The default configuration is
pysd's recipe instead (LP-DeepSSL / AML-KD: cosine affinities to the power 3, ``W + W^T``, conjugate gradients,
class-mass-normalised seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._ref.knn_graph import affinity, degrees, normalized, select_topk, similarity
from .graph import Graph
from .ops.knn_graph import knn_graph, prepare_features
from .ops.propagate import Propagation, propagate

__all__ = ["GraphLabelSpreading", "refine_labels", "RefinedLabels"]

_NORMALIZE = ("sym", "rw", "sym_in", None)
# Query rows per block of predict's exact neighbour search: a (block, N_train) similarity slab.
_QUERY_BLOCK_ELEMENTS = 1 << 22


def _in_degree_normalized(g: Graph) -> Graph:
    """``D^-1/2 W D^-1/2`` with ``D`` the column sums of ``W`` (in-degrees; a zero degree counts as 1)."""
    rows = torch.repeat_interleave(torch.arange(g.num_nodes, device=g.device), g.indptr.diff())
    cols = g.indices.to(torch.int64)
    deg = degrees(cols, g.values, g.num_nodes)
    return replace(g, values=normalized(g.values, deg[rows], deg[cols], "sym"))


def _labelled(y: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: entries that are not the unlabelled marker ``-1`` (never true for strings)."""
    if y.dtype.kind in "iuf":
        return y != -1
    return np.array([not (isinstance(v, (int, float, np.number)) and v == -1) for v in y], dtype=bool)


class GraphLabelSpreading(ClassifierMixin, BaseEstimator):
    """Label spreading over pysd's exact kNN graph, with scikit-learn's estimator interface.

    ``fit(X, y)`` builds ``pysd.knn_graph(X, k, metric, power, symmetrize, normalize)`` and solves
    ``(I - alpha S) Z = Y`` with :func:`pysd.propagate`, every labelled sample a seed.

    Parameters:
        n_neighbors: neighbours per point (``k`` of :func:`pysd.knn_graph`); new points in ``predict`` are
            scored from their ``n_neighbors`` nearest training points.  Needs ``n_samples > n_neighbors``
            (``>= n_neighbors`` with ``include_self``).
        include_self: count each training point among its own ``n_neighbors`` (scikit-learn's convention):
            the graph then links it to ``n_neighbors - 1`` others.
        metric, power, symmetrize: as :func:`pysd.knn_graph` (``power=0`` gives a 0/1 connectivity graph).
        normalize: ``"sym"``, ``"rw"`` or None as :func:`pysd.knn_graph` (degrees = row sums), or
            ``"sym_in"``: ``D^-1/2 W D^-1/2`` with ``D`` the in-degrees (column sums), scikit-learn's choice
            for its directed kNN graph; the same as ``"sym"`` on a symmetrised graph.
        alpha, solver, max_iter, tol, class_mass_norm: as :func:`pysd.propagate` (``solver="cg"`` needs a
            symmetric ``S``: a symmetrised graph with ``"sym"``; use ``"iterate"`` otherwise).

    Attributes (after ``fit``):
        classes_: ``(C,)`` sorted distinct labels other than ``-1`` (any dtype: ints, strings, ...).
        X_: ``(N, d)`` the training features.
        label_distributions_: ``(N, C)`` float ``z+`` with L1-normalised rows (zero for a point the graph
            does not reach from any seed).
        transduction_: ``(N,)`` ``classes_[argmax label_distributions_]`` (``classes_[0]`` for a zero row,
            as scikit-learn).
        propagation_: the :class:`pysd.Propagation` (numpy): ``issues``, ``oos_scores``, weights, residuals.
        n_iter_: solver iterations.  n_features_in_, feature_names_in_: as scikit-learn.

    Memory: ``fit`` as :func:`pysd.knn_graph` plus :func:`pysd.propagate`; keeps ``X_`` and a prepared copy
    of it (normalised rows for cosine).  ``predict_proba`` works in blocks of query rows: one ``(block, N)``
    similarity slab of about ``2**22`` elements and the block's ``(block, n_neighbors, C)`` gathered
    distributions, besides its ``(M, C)`` result.
    """

    def __init__(self, n_neighbors: int = 10, *, include_self: bool = False, metric: str = "cosine",
                 power: float = 3.0, symmetrize: str = "sum", normalize: Any = "sym", alpha: float = 0.99,
                 solver: str = "cg", max_iter: int = 20, tol: float = 1e-6, class_mass_norm: bool = True):
        self.n_neighbors = n_neighbors
        self.include_self = include_self
        self.metric = metric
        self.power = power
        self.symmetrize = symmetrize
        self.normalize = normalize
        self.alpha = alpha
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.class_mass_norm = class_mass_norm

    def _graph_k(self, n: int) -> int:
        k = self.n_neighbors
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"GraphLabelSpreading: n_neighbors must be an int >= 1, got {k!r}")
        if not isinstance(self.include_self, bool):
            raise TypeError(f"GraphLabelSpreading: include_self must be a bool, got {self.include_self!r}")
        need = k if self.include_self else k + 1
        if n < need or (self.include_self and k == 1):
            raise ValueError(f"GraphLabelSpreading: n_neighbors={k} (include_self={self.include_self}) needs "
                             f"n_samples >= {max(need, 2)}, got n_samples={n}")
        return int(k) - 1 if self.include_self else int(k)

    def fit(self, X, y):
        """Fit on ``X: (N, d)`` features and ``y: (N,)`` labels: ``-1`` = unlabelled, any other value a class
        (string labels with unlabelled samples come as an object array holding strings and ``-1``, as
        scikit-learn's semi-supervised estimators take them)."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        labelled = _labelled(y)
        check_classification_targets(y[labelled])   # object arrays mix string labels and the -1 marker
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"GraphLabelSpreading: normalize must be one of {list(_NORMALIZE)}, "
                             f"got {self.normalize!r}")
        k = self._graph_k(X.shape[0])
        if not labelled.any():
            raise ValueError("GraphLabelSpreading: y has no labelled sample (every label is -1)")
        self.classes_, codes = np.unique(y[labelled], return_inverse=True)
        seeds = np.full(y.shape[0], -1, dtype=np.int64)
        seeds[labelled] = codes
        sym_in = self.normalize == "sym_in"
        g = knn_graph(X, k, metric=self.metric, power=self.power, symmetrize=self.symmetrize,
                      normalize=None if sym_in else self.normalize)
        if sym_in:
            g = _in_degree_normalized(g)
        r = propagate(g, seeds, num_classes=len(self.classes_), alpha=self.alpha, solver=self.solver,
                      max_iter=self.max_iter, tol=self.tol, class_mass_norm=self.class_mass_norm)
        mass = r.scores.sum(1, keepdims=True)
        self.label_distributions_ = r.scores / np.where(mass > 0, mass, 1.0)
        self.transduction_ = self.classes_[self.label_distributions_.argmax(1)]
        self.propagation_: Propagation = r
        self.n_iter_ = r.iterations
        self.X_ = X
        self._train, sqnorm = prepare_features(torch.from_numpy(X.copy()), self.metric)
        self._train_sqnorm = sqnorm
        # l2 affinities are scaled by the training graph's mean squared k-th-neighbour distance
        self._l2_scale = (-g.knn_similarities[:, -1]).clamp(min=0).mean() if self.metric == "l2" else None
        return self

    def _neighbours(self, q: torch.Tensor, q_sqnorm):
        """Exact ``(m, n_neighbors)`` nearest training points of the prepared queries ``q`` (best first, ties
        to the lower index, as :func:`pysd.knn_graph`) and their similarities."""
        return select_topk(similarity(q @ self._train.T, q_sqnorm, self._train_sqnorm), int(self.n_neighbors))

    def predict_proba(self, X) -> np.ndarray:
        """``(M, C)`` class probabilities of new points ``X: (M, d)``: the affinity-weighted mean of
        ``label_distributions_`` over their ``n_neighbors`` nearest training points (exact search; the
        weights are the training graph's affinity recipe, unweighted for ``power=0``).  A point whose
        neighbours carry no weight or no label mass gets the uniform distribution."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        q, q_sqnorm = prepare_features(torch.from_numpy(X.astype(self._train.numpy().dtype, copy=True)),
                                           self.metric, rows="rows of X")
        out = np.empty((X.shape[0], len(self.classes_)))
        block = max(1, _QUERY_BLOCK_ELEMENTS // self._train.shape[0])
        for i0 in range(0, X.shape[0], block):
            rows = slice(i0, i0 + block)
            idx, sims = self._neighbours(q[rows], None if q_sqnorm is None else q_sqnorm[rows])
            w = affinity(sims, self.metric, float(self.power), self._l2_scale).numpy()
            out[rows] = np.einsum("mk,mkc->mc", w, self.label_distributions_[idx.numpy()])
        mass = out.sum(1, keepdims=True)
        return np.where(mass > 0, out / np.where(mass > 0, mass, 1.0), 1.0 / len(self.classes_))

    def predict(self, X) -> np.ndarray:
        """``(M,)`` ``classes_[argmax predict_proba(X)]`` (first maximum)."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]


@dataclass
class RefinedLabels:
    """Result of :func:`refine_labels` (numpy; ``N`` samples, ``C`` classes).

    labels: ``(N,)`` refined labels in the label space of ``y`` (the given label where the graph gives none).
    weights: ``(N,)`` LP-DeepSSL sample weights ``entropy_weight * class_weight[label]`` (0 where the graph
        gives no label).
    confidence: ``(N,)`` the refined label's share of the propagated mass.
    issues: ``(K,)`` indices whose given label differs from the refined one, most suspicious first.
    pred_probs: ``(N, C)`` neighbours-only scores (``Propagation.oos_scores``), columns in ``classes`` order:
        the out-of-sample ``pred_probs`` cleanlab takes.
    classes: ``(C,)`` the sorted distinct labels.
    """

    labels: np.ndarray
    weights: np.ndarray
    confidence: np.ndarray
    issues: np.ndarray
    pred_probs: np.ndarray
    classes: np.ndarray


def refine_labels(X, y, **params) -> RefinedLabels:
    """Refine the noisy labels ``y: (N,)`` (any label values; every sample labelled) of ``X: (N, d)``.

    Every sample seeds its given label; :class:`GraphLabelSpreading` ``(**params)`` propagates them over the
    kNN graph.  Train any estimator on the result::

        r = refine_labels(X, y_noisy)
        LogisticRegression().fit(X, r.labels, sample_weight=r.weights)
    """
    est = GraphLabelSpreading(**params).fit(X, y)
    r = est.propagation_
    known = r.labels >= 0
    codes = np.where(known, r.labels, 0)
    labels = np.where(known, est.classes_[codes], np.asarray(y).reshape(-1))
    weights = np.where(known, r.entropy_weight * r.class_weight[codes], 0.0)
    return RefinedLabels(labels=labels, weights=weights, confidence=r.confidence, issues=r.issues,
                         pred_probs=r.oos_scores, classes=est.classes_)
