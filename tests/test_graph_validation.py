"""pysd.Graph: the CSR structure is validated where a graph enters pysd; malformed graphs raise ValueError
naming the attribute (they used to crash ``propagate`` or give silent garbage)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pysd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parts(n=4):
    m = sp.csr_matrix(np.array([[0, 1, 0, 2], [1, 0, 3, 0], [0, 3, 0, 0], [2, 0, 0, 0]], float)[:n, :n])
    return (torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int32)),
            torch.from_numpy(m.data))


@pytest.mark.parametrize("col", [4, 1000, -1])
def test_column_out_of_range_raises(col):
    p, i, v = parts()
    i[2] = col
    with pytest.raises(ValueError, match=r"Graph: indices must be column ids in \[0, num_nodes=4\)"):
        pysd.Graph(p, i, v, 4)


def test_indptr_rules():
    p, i, v = parts()
    bad = p.clone()
    bad[2] = 0  # rows 1 and 2 overlap: non-monotone
    with pytest.raises(ValueError, match="indptr must be non-decreasing"):
        pysd.Graph(bad, i, v, 4)
    bad = p.clone()
    bad[-1] += 3
    with pytest.raises(ValueError, match=r"indptr\[-1\] must equal nnz = 6"):
        pysd.Graph(bad, i, v, 4)
    bad = p.clone()
    bad[0] = 1
    with pytest.raises(ValueError, match="indptr must start at 0"):
        pysd.Graph(bad, i, v, 4)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_weights_must_be_finite_and_non_negative(value):
    p, i, v = parts()
    v[1] = value
    with pytest.raises(ValueError, match="Graph: values must be finite, non-negative edge weights"):
        pysd.Graph(p, i, v, 4)


def test_from_scipy_and_from_torch_refuse_malformed_input():
    p, i, v = parts()
    m = sp.csr_matrix((v.numpy(), i.numpy().copy(), p.numpy()), shape=(4, 4))
    m.indices[0] = 7  # scipy does not check this
    with pytest.raises(ValueError, match="Graph.from_scipy: indices must be column ids"):
        pysd.Graph.from_scipy(m)
    with pytest.raises(ValueError, match="Graph.from_scipy: indices must be column ids"):
        pysd.Graph.from_scipy(sp.csc_matrix((v.numpy(), m.indices, p.numpy()), shape=(4, 4)))
    nan = sp.csr_matrix(np.array([[0, np.nan], [1.0, 0]]))
    with pytest.raises(ValueError, match="Graph: values must be finite"):
        pysd.Graph.from_scipy(nan)
    bad_cols = i.to(torch.int64).clone()
    bad_cols[0] = 9
    t = torch.sparse_csr_tensor(p, bad_cols, v, (4, 4), check_invariants=False)
    with pytest.raises(ValueError, match="Graph: indices must be column ids"):
        pysd.Graph.from_torch(t)


def test_complex_input_raises():
    m = sp.csr_matrix(np.array([[0, 1 + 1j], [1 - 1j, 0]]))
    with pytest.raises(TypeError, match="Graph.from_scipy: matrix must hold real weights"):
        pysd.Graph.from_scipy(m)
    with pytest.raises(TypeError, match="Graph.from_torch: matrix must hold real weights"):
        pysd.Graph.from_torch(torch.tensor([[0, 1 + 1j], [1, 0]]).to_sparse())


def test_valid_graph_round_trips_and_is_validated_once(monkeypatch):
    p, i, v = parts()
    g = pysd.Graph(p, i, v, 4)
    assert g._validated
    np.testing.assert_array_equal(g.to_scipy().toarray(), sp.csr_matrix((v, i, p), shape=(4, 4)).toarray())
    calls = []
    monkeypatch.setattr(pysd.graph, "_check_csr", lambda *a, **k: calls.append(a))
    g.to("cpu")  # same dtype: no new check
    g.to(dtype=torch.float32)  # a dtype change re-checks the weights (float64 can overflow float32)
    assert len(calls) == 1
    built = pysd.knn_graph(torch.randn(20, 3), 3)
    assert built._validated and len(calls) == 1  # pysd's own graphs are trusted


def test_to_cuda_without_cuda_is_a_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    g = pysd.Graph(*parts(), 4)
    with pytest.raises(ValueError, match="Graph.to: device='cuda' but CUDA is not available"):
        g.to("cuda")
    with pytest.raises(TypeError, match="Graph.to: dtype must be"):
        g.to(dtype=torch.int32)


def test_random_csr_property_in_a_subprocess():
    """Hypothesis over random valid and corrupted CSR graphs; a crash fails this test instead of the run."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYSD_BACKEND", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_csr_property.py"), "40"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.stdout.strip().endswith("ok")
