"""pysd.Graph conversions: the kNN distance graph (scikit-learn / cleanlab layout); array kinds in and out
(numpy, torch CPU / CUDA, CuPy) with shared memory."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import pysd
from conftest import requires_cuda


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


# --------------------------------------------------------------------------- array kinds

def _fields(r):
    return [r.scores, r.labels, r.confidence, r.entropy_weight, r.class_weight, r.oos_scores, r.issues,
            r.residual, r.raw_scores]


def test_numpy_in_numpy_out_and_no_copies():
    x = np.random.default_rng(2).normal(size=(80, 5)).astype(np.float32)
    labels = np.random.default_rng(2).integers(-1, 3, 80)
    g = pysd.knn_graph(x, k=6)
    assert g.device.type == "cpu"
    m = g.to_scipy()
    assert np.shares_memory(m.data, g.values.numpy()) and np.shares_memory(m.indices, g.indices.numpy())
    assert np.shares_memory(np.asarray(g.knn_indices), g.knn_indices.numpy())
    for graph in (g, m):                                             # a Graph or its scipy view
        r = pysd.propagate(graph, labels)
        assert all(isinstance(a, np.ndarray) for a in _fields(r))
    rt = pysd.propagate(pysd.knn_graph(torch.from_numpy(x), k=6), torch.from_numpy(labels))
    assert all(isinstance(a, torch.Tensor) for a in _fields(rt))
    np.testing.assert_array_equal(r.labels, rt.labels.numpy())
    np.testing.assert_allclose(r.scores, rt.scores.numpy())


def test_cupy_conversions_need_a_cuda_graph():
    g = pysd.knn_graph(np.random.default_rng(3).normal(size=(20, 3)), k=3)
    with pytest.raises(ValueError, match=r"graph.to\('cuda'\) first"):
        g.to_cupy()


@pytest.mark.cuda
@requires_cuda
def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy", reason="the CuPy check needs pysd[cupy] on the GPU machine")
    import cupyx.scipy.sparse as csp

    x = np.random.default_rng(4).normal(size=(300, 8)).astype(np.float32)
    labels = np.random.default_rng(4).integers(-1, 4, 300)
    g = pysd.knn_graph(cupy.asarray(x), k=7)
    assert g.device.type == "cuda"
    m = g.to_cupy()
    assert isinstance(m, csp.csr_matrix) and m.data.data.ptr == g.values.data_ptr()      # shared memory
    back = pysd.Graph.from_cupy(m)
    assert torch.equal(back.indptr, g.indptr) and torch.equal(back.indices, g.indices)
    assert torch.equal(back.values, g.values)
    for graph in (g, m):
        r = pysd.propagate(graph, cupy.asarray(labels))
        assert all(isinstance(a, cupy.ndarray) for a in _fields(r))
    ref = pysd.propagate(pysd.knn_graph(x, k=7), labels)
    np.testing.assert_array_equal(cupy.asnumpy(r.labels), ref.labels)
    np.testing.assert_allclose(cupy.asnumpy(r.scores), ref.scores, rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
@requires_cuda
def test_torch_cuda_in_torch_cuda_out():
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(200, 6)).astype(np.float32)).cuda()
    labels = torch.from_numpy(np.random.default_rng(5).integers(-1, 3, 200)).cuda()
    g = pysd.knn_graph(x, k=5)
    r = pysd.propagate(g, labels)
    assert g.values.is_cuda and all(a.is_cuda for a in _fields(r))
