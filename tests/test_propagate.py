"""pysd.propagate against scipy (per-class CG loop, Zhou loop), across backends, plus edge cases and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, strategies as st
from scipy.sparse.linalg import cg as scipy_cg

import pysd
from pysd import _backend
from conftest import requires_cuda


def sym_graph(x, k, power=3.0):
    """The AML-KD graph: ip kNN on normalised features, max(s,0)^p, W+W^T, D^-1/2 W D^-1/2 (float64)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    s = np.maximum(np.take_along_axis(sim, idx, 1), 0) ** power
    w = sp.csr_matrix((s.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    w = (w + w.T).tocsr()
    w.setdiag(0)
    w.eliminate_zeros()
    d = np.asarray(w.sum(1)).ravel()
    d[d == 0] = 1
    dm = sp.diags(d ** -0.5)
    return (dm @ w @ dm).tocsr()


def seeds(labels, c, seed=None, w=None):
    n = len(labels)
    seed = labels >= 0 if seed is None else seed
    w = np.ones(n) if w is None else w
    y = np.zeros((n, c))
    for k in range(c):
        rows = seed & (labels == k)
        if w[rows].sum() > 0:
            y[rows, k] = w[rows] / w[rows].sum()
    return y


def scipy_cg_loop(S, Y, alpha, tol, maxiter):
    a = sp.identity(S.shape[0], format="csr") - alpha * S
    return np.stack([scipy_cg(a, Y[:, c], rtol=tol, maxiter=maxiter)[0] for c in range(Y.shape[1])], 1)


def scipy_zhou(S, Y, alpha, iters):
    z = Y.copy()
    for _ in range(iters):
        z = alpha * (S @ z) + Y
    return z


def blobs(n, c, d=16, spread=0.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    return centres[y] + spread * rng.normal(size=(n, d)), y


@pytest.fixture(scope="module")
def problem():
    x, y = blobs(400, 6, spread=1.0)
    return sym_graph(x, 8), y


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_cg_matches_scipy_loop(backend, problem, dtype, rtol):
    S, y = problem
    ref = scipy_cg_loop(S, seeds(y, 6), 0.99, 1e-6, 20)
    r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=dtype), y)
    scale = np.abs(ref).max()
    assert np.abs(r.raw_scores - ref).max() <= rtol * scale
    assert r.iterations == 20 and r.raw_scores.dtype == (np.float64 if dtype == torch.float64 else np.float32)


def test_cg_per_column_stopping_and_empty_class(backend, problem):
    """Loose tol: columns converge at different steps; class 6 has no seed (zero column, no NaN)."""
    S, y = problem
    y = y.copy()
    y[y == 5] = 0  # class 5 empty as well, keeps its index
    c = 7
    for tol in (1e-2, 3e-2):
        ref = scipy_cg_loop(S, seeds(y, c), 0.99, tol, 40)
        r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, num_classes=c, tol=tol, max_iter=40)
        assert np.allclose(r.raw_scores, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
        assert not np.isnan(r.scores).any()
        assert (r.raw_scores[:, [5, 6]] == 0).all() and (r.residual[[5, 6]] == 0).all()
        assert r.class_weight[6] == 0
        live = r.residual[:5]
        assert (live < tol).all() and r.iterations < 40


def test_cg_continuing_would_differ(problem):
    """The early-stop test above is discriminative: more CG steps move a converged column."""
    S, y = problem
    a = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, tol=1e-2, max_iter=40)
    b = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, tol=0.0, max_iter=40)
    assert np.abs(a.raw_scores - b.raw_scores).max() > 1e-6


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_iterate_matches_scipy_zhou(backend, problem, dtype, rtol):
    S, y = problem
    Y = seeds(y, 6)
    ref = scipy_zhou(S, Y, 0.9, 15)
    r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=dtype), y, solver="iterate", alpha=0.9, max_iter=15)
    assert r.iterations == 15
    assert np.abs(r.raw_scores - ref).max() <= rtol * np.abs(ref).max()
    prev = scipy_zhou(S, Y, 0.9, 14)
    expect = np.linalg.norm(ref - prev, axis=0) / np.linalg.norm(Y, axis=0)
    assert np.allclose(r.residual, expect, rtol=1e-3)
    assert r.flips == int((ref.argmax(1) != prev.argmax(1)).sum())


def test_iterate_early_stop(backend, problem):
    S, y = problem
    r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, solver="iterate", alpha=0.5,
                       max_iter=500, tol=1e-8)
    assert r.iterations < 500 and (r.residual < 1e-8).all()
    exact = np.linalg.solve(np.eye(S.shape[0]) - 0.5 * S.toarray(), seeds(y, 6))
    assert np.abs(r.raw_scores - exact).max() < 1e-7 * np.abs(exact).max()


def test_outputs_follow_lp_deepssl(problem):
    S, y = problem
    y = y.copy()
    rng = np.random.default_rng(1)
    flip = rng.random(len(y)) < 0.3
    y[flip] = rng.integers(0, 6, flip.sum())
    r = pysd.propagate(S, y)
    z = np.maximum(r.raw_scores, 0)
    # scores are LP-DeepSSL's probs_l1 (F.normalize(Z, 1) then clipped: p=1 makes the rows L1, not L2;
    # this line expected L2 rows before the issue-10 fix), i.e. the p below
    p = z / z.sum(1, keepdims=True)
    assert np.allclose(r.scores, p, atol=1e-6)
    h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(1)
    w = 1 - h / np.log(6)
    assert np.allclose(r.entropy_weight, w / w.max(), atol=1e-5)
    assert np.array_equal(r.labels, z.argmax(1)) and np.allclose(r.confidence, p.max(1), atol=1e-6)
    counts = np.bincount(r.labels, minlength=6)
    assert np.allclose(r.class_weight, (len(y) / 6) / counts, rtol=1e-6)
    oos = S @ z
    assert np.allclose(r.oos_scores, oos / oos.sum(1, keepdims=True), atol=1e-6)
    bad = np.flatnonzero(r.labels != y)
    assert sorted(r.issues.tolist()) == bad.tolist()
    margin = p[r.issues, r.labels[r.issues]] - p[r.issues, y[r.issues]]
    assert (np.diff(margin) <= 1e-6).all()


@pytest.mark.parametrize("solver", ["cg", "iterate"])
def test_scores_are_lp_deepssl_probs_l1(backend, problem, solver):
    """Issue 10: ``scores`` was documented as LP-DeepSSL's ``probs_l1`` but had L2 rows."""
    S, y = problem
    r = pysd.propagate(S, y, solver=solver, max_iter=10)
    peer = torch.nn.functional.normalize(torch.from_numpy(r.raw_scores.astype(np.float64)), 1).numpy()
    peer[peer < 0] = 0  # LP-DeepSSL: probs_l1 = F.normalize(torch.tensor(Z), 1); probs_l1[probs_l1 < 0] = 0
    assert np.allclose(r.scores, peer, atol=1e-6)
    labelled = r.labels >= 0
    assert np.allclose(r.scores[labelled].sum(1), 1, atol=1e-6)


def test_refine_writes_l1_scores():
    """`pysd refine` stores Propagation.scores: after the L1 fix its rows are the propagated label
    distributions, whose maximum is the reported confidence (its labels and weights come from Z and
    are unchanged by the fix)."""
    from pysd.refine import refine_labels

    x, y = blobs(120, 3, spread=1.0)
    res = refine_labels(x.astype(np.float32), y, k=6)
    kept = res["labels"] >= 0
    assert np.allclose(res["scores"][kept].sum(1), 1, atol=1e-5)
    assert np.allclose(res["scores"].max(1), res["confidence"], atol=1e-6)
    assert np.array_equal(res["scores"].argmax(1)[kept], res["labels"][kept])


def test_backends_agree_and_deterministic(problem):
    S, y = problem
    g = pysd.Graph.from_scipy(S)
    outs = {}
    for name in _backend.usable("propagate"):
        for solver in ("cg", "iterate"):
            fn = _backend.implementation("propagate", name)
            args = (g.indptr, g.indices, g.values)
            yy = torch.from_numpy(seeds(y, 6)).float()
            given = torch.from_numpy(y)
            res = [fn(*args, yy.clone(), given, alpha=0.99, solver=int(solver == "iterate"), max_iter=20, tol=1e-6)
                   for _ in range(2)]
            assert all(torch.equal(a, b) for a, b in zip(res[0][:8], res[1][:8]))
            outs[name, solver] = res[0]
    for (name, solver), out in outs.items():
        ref = outs["torch", solver]
        for a, b in zip(out[:7], ref[:7]):
            assert torch.allclose(a.double(), b.double(), atol=1e-5, rtol=1e-4), (name, solver)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_graphs_single_class(backend, n):
    w = sp.csr_matrix(np.ones((n, n)) - np.eye(n)) if n > 1 else sp.csr_matrix((1, 1))
    d = np.maximum(np.asarray(w.sum(1)).ravel(), 1)
    S = sp.diags(d ** -0.5) @ w @ sp.diags(d ** -0.5)
    y = np.zeros(n, dtype=np.int64)
    for solver in ("cg", "iterate"):
        r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, solver=solver)
        if n == 1:  # isolated: not a seed, zero everything
            assert (r.scores == 0).all() and r.labels[0] == -1 and r.entropy_weight[0] == 0
        else:
            ref = scipy_cg_loop(S, seeds(y, 1), 0.99, 1e-6, 20) if solver == "cg" else scipy_zhou(S, seeds(y, 1), 0.99, 20)
            assert np.allclose(r.raw_scores, ref, rtol=1e-10)
            assert (r.labels == 0).all() and np.allclose(r.entropy_weight, 1) and np.allclose(r.scores, 1)


def test_isolated_nodes_get_zero(backend, problem):
    S, y = problem
    S = S.tolil()
    for i in (3, 10):
        S[i, :] = 0
        S[:, i] = 0
    S = S.tocsr()
    r = pysd.propagate(S, y)
    for i in (3, 10):
        assert (r.scores[i] == 0).all() and (r.oos_scores[i] == 0).all() and (r.raw_scores[i] == 0).all()
        assert r.labels[i] == -1 and r.entropy_weight[i] == 0 and r.confidence[i] == 0
        assert i not in r.issues


def test_soft_seeds_mask_weights(backend, problem):
    S, y = problem
    n = len(y)
    rng = np.random.default_rng(2)
    mask = rng.random(n) < 0.5
    w = rng.random(n)
    q = rng.random((n, 6))
    Y = q * (w * mask)[:, None]
    Y /= Y.sum(0)
    ref = scipy_cg_loop(S, Y, 0.99, 1e-6, 20)
    r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), q, mask=mask, weights=w)
    assert np.allclose(r.raw_scores, ref, atol=1e-10 * np.abs(ref).max())
    # hard labels with mask + weights, and without class-mass normalisation
    ref = scipy_cg_loop(S, seeds(y, 6, mask, w), 0.99, 1e-6, 20)
    r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, mask=mask, weights=w)
    assert np.allclose(r.raw_scores, ref, atol=1e-10 * np.abs(ref).max())
    Y = np.zeros((n, 6))
    Y[np.flatnonzero(mask), y[mask]] = w[mask]
    ref = scipy_cg_loop(S, Y, 0.99, 1e-6, 20)
    r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, mask=mask, weights=w, class_mass_norm=False)
    assert np.allclose(r.raw_scores, ref, atol=1e-10 * np.abs(ref).max())


def test_unlabelled_rows_and_kinds(problem):
    S, y = problem
    y = y.copy()
    y[::3] = -1
    ref = scipy_cg_loop(S, seeds(y, 6), 0.99, 1e-6, 20)
    rt = pysd.propagate(pysd.Graph.from_scipy(S), torch.from_numpy(y))
    rn = pysd.propagate(S, y)
    assert isinstance(rt.scores, torch.Tensor) and isinstance(rn.scores, np.ndarray)
    assert isinstance(rn.issues, np.ndarray) and rn.issues.dtype == np.int64
    assert np.allclose(rt.raw_scores.numpy(), rn.raw_scores) and np.abs(rn.raw_scores - ref).max() < 1e-4 * ref.max()
    rs = pysd.propagate(pysd.Graph.from_scipy(S).to_torch(), y)
    assert np.allclose(rs.raw_scores, rn.raw_scores)
    assert not np.isin(np.flatnonzero(y < 0), rn.issues).any()


def test_label_recovery_40pct_noise():
    x, clean = blobs(2000, 10, d=32, spread=0.6, seed=3)
    rng = np.random.default_rng(4)
    noisy = clean.copy()
    flip = rng.random(len(clean)) < 0.4
    noisy[flip] = rng.integers(0, 10, flip.sum())
    S = sym_graph(x, 10)
    for solver in ("cg", "iterate"):
        r = pysd.propagate(S, noisy, solver=solver)
        assert (r.labels == clean).mean() >= 0.9, solver
        truly = np.flatnonzero(noisy != clean)
        assert np.isin(r.issues[: len(truly) // 2], truly).mean() > 0.9


def test_bad_input(problem):
    S, y = problem
    g = pysd.Graph.from_scipy(S)
    with pytest.raises(ValueError, match="-1"):
        pysd.propagate(g, np.where(y == 0, -2, y))
    with pytest.raises(ValueError, match="num_classes"):
        pysd.propagate(g, y, num_classes=3)
    with pytest.raises(ValueError, match="alpha"):
        pysd.propagate(g, y, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        pysd.propagate(g, y, alpha=0)
    with pytest.raises(ValueError, match="rows"):
        pysd.propagate(g, y[:-1])
    with pytest.raises(ValueError, match="square"):
        pysd.propagate(sp.csr_matrix((3, 4)), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="no seed"):
        pysd.propagate(g, y, mask=np.zeros(len(y), dtype=bool))
    with pytest.raises(ValueError, match="every label is -1"):
        pysd.propagate(g, -np.ones(len(y), dtype=np.int64))
    with pytest.raises(TypeError, match="mask"):
        pysd.propagate(g, y, mask=np.ones(len(y)))
    with pytest.raises(TypeError, match="labels"):
        pysd.propagate(g, y.astype(bool))
    with pytest.raises(ValueError, match="weights"):
        pysd.propagate(g, y, weights=-np.ones(len(y)))
    with pytest.raises(ValueError, match="solver"):
        pysd.propagate(g, y, solver="lsqr")
    with pytest.raises(ValueError, match="max_iter"):
        pysd.propagate(g, y, max_iter=0)
    with pytest.raises(ValueError, match="no label"):
        yy = y.copy()
        yy[0] = -1
        pysd.propagate(g, yy, mask=np.ones(len(y), dtype=bool))
    with pytest.raises(ValueError, match="non-negative"):
        pysd.propagate(g, -np.ones((len(y), 3)))
    with pytest.raises(TypeError, match="labels"):
        pysd.propagate(g, [0, 1])


@given(alpha=st.floats(0.05, 0.95), seed=st.integers(0, 10_000))
def test_iterate_fixed_point(alpha, seed):
    """Converged iterate solves (I - alpha S) Z = Y."""
    x, y = blobs(60, 3, d=4, seed=seed)
    S = sym_graph(x, 4)
    r = pysd.propagate(pysd.Graph.from_scipy(S, dtype=torch.float64), y, solver="iterate", alpha=alpha,
                       max_iter=2000, tol=1e-12)
    Y = seeds(y, 3)
    res = r.raw_scores - alpha * (S @ r.raw_scores) - Y
    assert np.abs(res).max() <= 1e-10 * np.abs(Y).max()


@requires_cuda
@pytest.mark.parametrize("solver", ["cg", "iterate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpp(problem, solver, dtype):
    S, y = problem
    g = pysd.Graph.from_scipy(S, dtype=dtype)
    cpu = pysd.propagate(g, torch.from_numpy(y), solver=solver)
    gpu = pysd.propagate(g.to("cuda"), torch.from_numpy(y).cuda(), solver=solver)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for f in ("raw_scores", "scores", "oos_scores", "confidence", "entropy_weight", "residual"):
        a, b = getattr(cpu, f), getattr(gpu, f).cpu()
        assert torch.allclose(a, b, atol=tol * a.abs().max(), rtol=tol), f
    assert cpu.iterations == gpu.iterations and torch.equal(cpu.labels, gpu.labels.cpu())


def test_absurd_class_counts_are_value_errors():
    """Issue 10: num_classes=10**12 (or a label of 1e12) reached the allocator."""
    g = pysd.Graph.from_scipy(sym_graph(np.random.default_rng(0).normal(size=(30, 4)), 3))
    labels = np.arange(30) % 3
    with pytest.raises(ValueError, match=r"propagate: num_classes=1000000000000 would need .* for four \(30, C\)"):
        pysd.propagate(g, labels, num_classes=10**12)
    labels[4] = 10**12
    with pytest.raises(ValueError, match=r"propagate: labels \(largest label \+ 1\)=1000000000001 would need"):
        pysd.propagate(g, labels)


def test_negative_stride_labels_and_graph_parts():
    g = pysd.Graph.from_scipy(sym_graph(np.random.default_rng(0).normal(size=(30, 4)), 3))
    labels = (np.arange(30) % 3)[::-1]
    np.testing.assert_array_equal(pysd.propagate(g, labels).labels, pysd.propagate(g, labels.copy()).labels)


@pytest.mark.parametrize("solver", ["cg", "iterate"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_reorder_matches_scipy_in_the_callers_order(backend, problem, solver, dtype, rtol):
    S, y = problem
    g = pysd.Graph.from_scipy(S, dtype=dtype)
    r = pysd.propagate(g, y, solver=solver, reorder=True)
    Y = seeds(y, 6)
    ref = scipy_cg_loop(S, Y, 0.99, 1e-6, 20) if solver == "cg" else scipy_zhou(S, Y, 0.99, 20)
    assert np.abs(r.raw_scores - ref).max() <= rtol * np.abs(ref).max()
    plain = pysd.propagate(g, y, solver=solver)
    assert np.array_equal(r.labels, plain.labels) and np.array_equal(r.issues, plain.issues)
    for name in ("scores", "oos_scores", "confidence", "entropy_weight", "class_weight"):
        assert np.allclose(getattr(r, name), getattr(plain, name), rtol=10 * rtol, atol=1e-6), name
    order = g.locality_order().numpy()
    assert sorted(order.tolist()) == list(range(len(y))) and not np.array_equal(order, np.arange(len(y)))
    gp, same = g.reordered()
    assert same is g.locality_order() and g.reordered()[0] is gp  # cached on the graph
    assert abs(gp.to_scipy() - g.to_scipy()[order][:, order]).max() == 0  # P S P^T
    rows = np.split(gp.indices.numpy(), gp.indptr.numpy()[1:-1])
    assert all((np.diff(r_) > 0).all() for r_ in rows)            # indices sorted within each row


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("solver", ["cg", "iterate"])
def test_reorder_with_weights_mask_and_class_mass(backend, problem, soft, solver):
    # the seed matrix is built from permuted per-row inputs: every seed option must survive the order
    S, y = problem
    n = len(y)
    rng = np.random.default_rng(1)
    g = pysd.Graph.from_scipy(S, dtype=torch.float64)
    labels = np.where(rng.random(n) < 0.3, -1, y)
    if soft:
        labels = rng.random((n, 6)) * (labels >= 0)[:, None]
    kw = dict(weights=rng.random(n), mask=(labels.sum(1) > 0 if soft else labels >= 0) & (rng.random(n) < 0.8),
              class_mass_norm=True, solver=solver, alpha=0.9)
    r, plain = pysd.propagate(g, labels, reorder=True, **kw), pysd.propagate(g, labels, **kw)
    assert np.array_equal(r.labels, plain.labels) and np.array_equal(r.issues, plain.issues)
    for name in ("raw_scores", "scores", "oos_scores", "confidence", "entropy_weight", "class_weight"):
        np.testing.assert_allclose(getattr(r, name), getattr(plain, name), rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed", range(4))
def test_locality_order_numbers_each_community_contiguously(seed):
    # six planted communities, nodes shuffled: strong edges inside, sparse weak edges across
    rng = np.random.default_rng(seed)
    n, b = 150, 6
    block = rng.permutation(np.arange(n) % b)
    same = block[:, None] == block[None, :]
    w = (np.where(same & (rng.random((n, n)) < 0.5), rng.uniform(0.5, 1.0, (n, n)), 0.0)
         + np.where(~same & (rng.random((n, n)) < 0.05), rng.uniform(0.0, 0.3, (n, n)), 0.0))
    np.fill_diagonal(w, 0.0)
    g = pysd.Graph.from_scipy(sp.csr_matrix(np.maximum(w, w.T)))
    order = g.locality_order().numpy()
    assert sorted(order.tolist()) == list(range(n))
    assert (np.diff(block[order]) != 0).sum() == b - 1  # each community one run of positions
    assert np.array_equal(pysd.Graph.from_scipy(g.to_scipy()).locality_order().numpy(), order)  # deterministic


def test_locality_order_of_graphs_without_structure():
    from pysd._numba.locality import communities

    for n in (0, 1, 5):  # no edges: every node its own community, the identity order
        g = pysd.Graph.from_scipy(sp.csr_matrix((n, n), dtype=np.float32))
        assert torch.equal(g.locality_order(), torch.arange(n))
    # directed edges: rows 0-3 point at node 4 and join its community; rows 4 and 5 have no edges
    a = sp.csr_matrix((np.ones(4), ([0, 1, 2, 3], [4, 4, 4, 4])), shape=(6, 6))
    assert communities(a.indptr.astype(np.int64), a.indices, a.data, 20, 1).tolist() == [4, 4, 4, 4, 4, 5]
    # two rows reached by one edge each, of weights 1 and 2: the heavier edge's community wins
    b = sp.csr_matrix((np.array([1.0, 2.0]), ([0, 0], [1, 2])), shape=(3, 3))
    assert communities(b.indptr.astype(np.int64), b.indices, b.data, 1, 1).tolist() == [2, 1, 2]
    # a tie goes to the smaller label
    c = sp.csr_matrix((np.array([1.0, 1.0]), ([0, 0], [1, 2])), shape=(3, 3))
    assert communities(c.indptr.astype(np.int64), c.indices, c.data, 1, 1).tolist() == [1, 1, 2]


@pytest.mark.parametrize("solver", [0, 1])
def test_custom_op_opcheck(backend, problem, solver):
    from pysd.ops.propagate import _propagate_op

    S, y = problem
    g = pysd.Graph.from_scipy(S)
    y0 = torch.from_numpy(seeds(y, 6)).float()
    given = torch.as_tensor(y, dtype=torch.int64)
    torch.library.opcheck(_propagate_op, (g.indptr, g.indices, g.values, y0, given, 0.9, solver, 5, 1e-6))


@pytest.mark.parametrize("solver", ["cg", "iterate"])
def test_matches_reference_with_public_signature(backend, problem, solver):
    from pysd._ref.propagate import propagate as ref_propagate

    S, y = problem
    g = pysd.Graph.from_scipy(S, dtype=torch.float64)
    yy = torch.from_numpy(np.where(np.arange(len(y)) % 3 == 0, -1, y))
    w = torch.rand(len(y), dtype=torch.float64)
    r = pysd.propagate(g, yy, weights=w, solver=solver, alpha=0.9, max_iter=30)
    ref = ref_propagate(g, yy, weights=w, solver=solver, alpha=0.9, max_iter=30)
    assert r.iterations == ref["iterations"] and r.flips == ref["flips"]
    assert torch.equal(r.labels, ref["labels"]) and torch.equal(r.issues, ref["issues"])
    for name in ("scores", "confidence", "entropy_weight", "class_weight", "oos_scores", "raw_scores", "residual"):
        torch.testing.assert_close(getattr(r, name), ref[name], rtol=1e-9, atol=1e-12, msg=name)
