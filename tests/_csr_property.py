"""Property check run in a subprocess by tests/test_graph_validation.py (a crash there is a failed test, not a dead run).

Random CSR graphs, valid and corrupted: a valid one equals the scipy construction of the same edges and
propagates like it on every CPU backend; a corrupted one raises ValueError at ``pysd.Graph``.
Usage: python _csr_property.py MAX_EXAMPLES
"""

import os
import sys

import numpy as np
import scipy.sparse as sp
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

import pysd

CORRUPTIONS = ("col_high", "col_negative", "indptr_decreasing", "indptr_end_high", "indptr_end_low",
               "indptr_start", "nan", "inf", "negative")


@st.composite
def csr(draw):
    n = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dense = rng.random((n, n)) * (rng.random((n, n)) < draw(st.floats(0.0, 0.8)))
    m = sp.csr_matrix(dense)
    return n, m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float64), rng


def corrupt(kind, n, indptr, indices, values, rng):
    indptr, indices, values = indptr.copy(), indices.copy(), values.copy()
    nnz = len(indices)
    if kind in ("col_high", "col_negative", "nan", "inf", "negative") and nnz == 0:
        return None
    pos = int(rng.integers(nnz)) if nnz else 0
    if kind == "col_high":
        indices[pos] = n + int(rng.integers(0, 1000))
    elif kind == "col_negative":
        indices[pos] = -1 - int(rng.integers(0, 1000))
    elif kind == "indptr_decreasing":
        if nnz == 0 or n < 2:
            return None
        row = int(rng.integers(1, n))
        indptr[row] = indptr[row + 1] + 1 + int(rng.integers(0, 5))
    elif kind == "indptr_end_high":
        indptr[-1] = nnz + 1 + int(rng.integers(0, 1000))
    elif kind == "indptr_end_low":
        if nnz == 0:
            return None
        indptr[-1] = nnz - 1
    elif kind == "indptr_start":
        indptr[0] = 1
    else:
        values[pos] = {"nan": np.nan, "inf": np.inf, "negative": -0.5}[kind]
    return indptr, indices, values


def check_valid(n, indptr, indices, values):
    g = pysd.Graph(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(values), n)
    ref = sp.csr_matrix((values, indices, indptr), shape=(n, n))
    np.testing.assert_array_equal(g.to_scipy().toarray(), ref.toarray())
    if ref.nnz == 0:
        return
    # normalise as a propagation graph expects (row sums <= 1) and compare with the scipy-built Graph
    d = np.asarray(ref.sum(1)).ravel()
    d[d == 0] = 1
    s = (sp.diags(1 / d) @ ref).tocsr()
    ours = pysd.Graph(torch.from_numpy(s.indptr.astype(np.int64)), torch.from_numpy(s.indices.astype(np.int32)),
                      torch.from_numpy(s.data), n)
    theirs = pysd.Graph.from_scipy(s, dtype=torch.float64)
    labels = np.full(n, -1)
    labels[0] = 0
    for backend in ("cpp", "torch"):  # numba shares the validated entry point; its JIT would cost seconds
        os.environ["PYSD_BACKEND"] = backend
        a = pysd.propagate(ours, labels, num_classes=2, alpha=0.5)
        b = pysd.propagate(theirs, labels, num_classes=2, alpha=0.5)
        np.testing.assert_allclose(a.raw_scores, b.raw_scores, rtol=1e-12, atol=1e-14)
    os.environ.pop("PYSD_BACKEND")


def check_corrupt(kind, n, indptr, indices, values, rng):
    bad = corrupt(kind, n, indptr, indices, values, rng)
    if bad is None:
        return
    p, i, v = (torch.from_numpy(a) for a in bad)
    try:
        pysd.Graph(p, i, v, n)
    except ValueError as exc:
        assert "Graph:" in str(exc), exc
    else:
        raise AssertionError(f"corruption {kind} accepted: {bad}")
    if kind in CORRUPTIONS[:6] and kind != "indptr_end_low":
        # structural: scipy's unchecked CSR must be refused too, not converted (a shorter indptr[-1]
        # is a valid scipy matrix of fewer entries)
        try:
            m = sp.csr_matrix((bad[2], bad[1], bad[0]), shape=(n, n), copy=False)
        except ValueError:
            return  # scipy's own light check caught it
        try:
            pysd.Graph.from_scipy(m)
        except ValueError as exc:
            assert "Graph.from_scipy:" in str(exc), exc
        else:
            raise AssertionError(f"from_scipy accepted corruption {kind}")


def main(examples):
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(csr(), st.sampled_from(("valid",) + CORRUPTIONS))
    def prop(graph, kind):
        n, indptr, indices, values, rng = graph
        if kind == "valid":
            check_valid(n, indptr, indices, values)
        else:
            check_corrupt(kind, n, indptr, indices, values, rng)

    prop()
    print("ok")


if __name__ == "__main__":
    main(int(sys.argv[1]))
