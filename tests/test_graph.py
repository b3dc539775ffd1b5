"""pysd.Graph conversions: the kNN distance graph (scikit-learn / cleanlab layout)."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import pysd


@pytest.mark.parametrize("metric, sk_metric", [("cosine", "cosine"), ("l2", "euclidean")])
def test_distance_graph_equals_sklearn_kneighbors_graph(metric, sk_metric):
    x = np.random.default_rng(0).normal(size=(120, 6))
    g = pysd.knn_graph(x, k=5, metric=metric)
    ours = g.to_scipy(mode="distance")
    ref = NearestNeighbors(n_neighbors=5, metric=sk_metric).fit(x).kneighbors_graph(mode="distance")
    assert ours.shape == (120, 120) and ours.nnz == 600
    np.testing.assert_array_equal(np.diff(ours.indptr), 5)
    np.testing.assert_allclose(ours.toarray(), ref.toarray(), rtol=1e-6, atol=1e-6)
    rows = ours.data.reshape(120, 5)
    assert (np.diff(rows, axis=1) >= 0).all()                      # nearest first
    x[7] = x[3]                                                    # a duplicate: an explicit zero distance
    dup = pysd.knn_graph(x, k=5, metric=metric).to_scipy(mode="distance")
    assert dup.indices[dup.indptr[3]] == 7 and dup.data[dup.indptr[3]] == 0 and dup.nnz == 600


def test_distance_graph_refusals():
    x = np.random.default_rng(1).normal(size=(30, 4))
    with pytest.raises(ValueError, match="metric 'cosine' or 'l2'"):
        pysd.knn_graph(x, k=3, metric="ip").to_scipy(mode="distance")
    with pytest.raises(ValueError, match="exclude_self=True"):
        pysd.knn_graph(x, k=3, exclude_self=False).to_scipy(mode="distance")
    with pytest.raises(ValueError, match="lists absent"):
        pysd.Graph.from_scipy(pysd.knn_graph(x, k=3).to_scipy()).to_scipy(mode="distance")
    with pytest.raises(ValueError, match="mode"):
        pysd.knn_graph(x, k=3).to_scipy(mode="nope")
    g = pysd.knn_graph(torch.from_numpy(x), k=3, metric="l2")
    assert g.metric == "l2" and g.to(dtype=torch.float64).metric == "l2"
