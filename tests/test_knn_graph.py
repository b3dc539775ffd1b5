"""pysd.knn_graph: kNN lists against a brute-force float64 reference (ties included) on every
backend, the graph recipe against a scipy construction, input kinds and bad input."""

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pysd
from pysd.ops.knn_graph import _knn_graph_op

from conftest import requires_cuda


def brute_force(x, k, metric="ip", exclude_self=True):
    """Full (N, N) similarity matrix in float64 numpy, ordered by (-sim, index): the contract."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    if metric == "l2":
        sq = (x * x).sum(1)
        s = 2 * s - (sq[:, None] + sq[None, :])
    n = len(x)
    key = -s
    if exclude_self:
        np.fill_diagonal(key, np.inf)  # sorts last; k <= N - 1 never reaches it
    idx = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), key), axis=-1)[:, :k]
    return idx, np.take_along_axis(s, idx, 1)


def integer_points(n, d, seed, dup=0):
    """Small integers: every product is exact in float32, so ties are exact and many."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=g).float()
    return torch.cat([x, x[:dup]]) if dup else x


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n,k,tile", [(2, 1, None), (3, 2, (1, 2)), (3, 1, None), (41, 5, (8, 12)),
                                      (1100, 7, (96, 160))])
def test_exact_ties_match_brute_force(backend, metric, n, k, tile):
    x = integer_points(n, 4, seed=n, dup=min(n, 30))
    g = pysd.knn_graph(x, k, metric=metric, tile=tile)
    ref_idx, ref_sim = brute_force(x.numpy(), k, metric)
    np.testing.assert_array_equal(g.knn_indices.numpy(), ref_idx)
    np.testing.assert_array_equal(g.knn_similarities.numpy(), ref_sim.astype(np.float32))
    assert g.knn_indices.dtype == torch.int32 and g.knn_similarities.dtype == torch.float32


@pytest.mark.parametrize("exclude_self", [True, False])
def test_self_included_when_asked(backend, exclude_self):
    x = integer_points(60, 3, seed=1, dup=20)
    k = 80 if not exclude_self else 79  # k = N (or N - 1): every row's list is a full ordering
    g = pysd.knn_graph(x, k, metric="l2", exclude_self=exclude_self, tile=(16, 24))
    ref_idx, _ = brute_force(x.numpy(), k, "l2", exclude_self)
    np.testing.assert_array_equal(g.knn_indices.numpy(), ref_idx)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_float64_random_matches_brute_force(backend, metric):
    x = torch.randn(300, 17, dtype=torch.float64)
    g = pysd.knn_graph(x, 6, metric=metric, tile=(64, 40))
    ref_idx, ref_sim = brute_force(x.numpy(), 6, metric)
    np.testing.assert_array_equal(g.knn_indices.numpy(), ref_idx)
    np.testing.assert_allclose(g.knn_similarities.numpy(), ref_sim, rtol=1e-12, atol=1e-12)
    assert g.knn_similarities.dtype == torch.float64 and g.values.dtype == torch.float64


def assert_float32_lists_exact(g, x, k, metric, tol=2e-5):
    """float32 GEMM rounding may swap neighbours whose similarities differ by ~eps, so the
    check is: the k similarities equal the reference's k best, and each returned index really
    has the similarity reported for it."""
    ref_idx, ref_sim = brute_force(x, k, metric)
    idx = g.knn_indices.numpy().astype(np.int64)
    np.testing.assert_allclose(g.knn_similarities.numpy(), ref_sim, atol=tol)
    s64 = np.asarray(x, np.float64)
    if metric == "cosine":
        s64 = s64 / np.linalg.norm(s64, axis=1, keepdims=True)
    true = np.einsum("id,ikd->ik", s64, s64[idx])
    if metric == "l2":
        sq = (s64 * s64).sum(1)
        true = 2 * true - (sq[:, None] + sq[idx])
    np.testing.assert_allclose(g.knn_similarities.numpy(), true, atol=tol)
    assert (idx != np.arange(len(x))[:, None]).all()
    assert all(len(set(row)) == k for row in idx)
    assert (ref_idx == idx).mean() > 0.99


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_float32_spanning_tiles(backend, metric):
    x = torch.randn(1200, 24)
    g = pysd.knn_graph(x, 10, metric=metric, tile=(128, 300))
    assert_float32_lists_exact(g, x.numpy(), 10, metric)


def test_non_contiguous_features(backend):
    base = integer_points(500, 12, seed=3, dup=10)
    x = base.t().contiguous().t()[:, ::2]  # column-major and strided
    assert not x.is_contiguous()
    g = pysd.knn_graph(x, 5, metric="ip", tile=(64, 100))
    ref_idx, _ = brute_force(x.numpy(), 5, "ip")
    np.testing.assert_array_equal(g.knn_indices.numpy(), ref_idx)


def test_tile_shape_does_not_change_result(backend):
    x = integer_points(700, 5, seed=4, dup=40)
    a = pysd.knn_graph(x, 9, metric="l2", tile=(7, 13))
    b = pysd.knn_graph(x, 9, metric="l2", tile=(700, 700))
    assert torch.equal(a.knn_indices, b.knn_indices)
    assert torch.equal(a.values, b.values) and torch.equal(a.indices, b.indices)


def fused_search(x, k, metric, exclude_self, max_block):
    """The cpp backend's fused CPU search on prepared features, with its block cap."""
    from pysd.ops.knn_graph import prepare_features

    xs, sq = prepare_features(x, metric)
    return pysd._backend.implementation("knn_graph", "cpp")(xs, sq, k, exclude_self, max_block, max_block)


# Blocks of 48 rows (the smallest): n = 48 m + r meets 1 to 7 blocks, odd counts (a bye every round)
# and even ones, a last block of any length and register tiles cut by n at both rows and columns.
@pytest.mark.parametrize("n", [5, 47, 49, 97, 150, 239, 301])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_fused_search_every_block_layout(n, metric, exclude_self):
    pytest.importorskip("pysd._C")
    x = torch.randn(n, 11, dtype=torch.float64)
    k = min(n - exclude_self, 7)
    idx, sims = fused_search(x, k, metric, exclude_self, 48)
    ref_idx, ref_sim = brute_force(x.numpy(), k, metric, exclude_self)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sims.numpy(), ref_sim, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [1, 600])
def test_fused_search_exact_ties_and_wide_rows(d):
    # integer points: every product is exact, so the lists must equal the tie rule exactly; d = 600
    # rows are too wide for a 48-row block to sit in L2, which changes speed, never the result
    pytest.importorskip("pysd._C")
    x = integer_points(170, d, seed=d, dup=40)
    for metric in ("ip", "l2"):
        idx, sims = fused_search(x, 12, metric, True, 48)
        ref_idx, ref_sim = brute_force(x.numpy(), 12, metric)
        np.testing.assert_array_equal(idx.numpy(), ref_idx)
        np.testing.assert_array_equal(sims.numpy(), ref_sim.astype(np.float32))


def test_fused_search_independent_of_threads():
    # the thread count changes the block size and which thread runs which pair
    pytest.importorskip("pysd._C")
    x = integer_points(900, 6, seed=9, dup=100)
    old = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out.append(fused_search(x, 10, "l2", True, 4096))
    finally:
        torch.set_num_threads(old)
    for idx, sims in out[1:]:
        assert torch.equal(idx, out[0][0]) and torch.equal(sims, out[0][1])


def cross_reference(x, rows, cols, k, metric, exclude_self):
    """Lists of the global rows ``rows`` against the global columns ``cols`` only, float64, by (-sim, id)."""
    x = np.asarray(x, dtype=np.float64)
    s = x[rows] @ x[cols].T
    if metric == "l2":
        sq = (x * x).sum(1)
        s = 2 * s - (sq[rows][:, None] + sq[cols][None, :])
    key = -s
    if exclude_self:
        key[np.asarray(rows)[:, None] == np.asarray(cols)[None, :]] = np.inf
    ids = np.broadcast_to(np.asarray(cols), key.shape)
    order = np.lexsort((ids, key), axis=-1)[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(s, order, 1)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_fused_search_by_global_ids(metric, exclude_self):
    # as the ring of pysd.distributed: the rows 40..139 of 260 points, their own self-join with ids from 40,
    # then the other two column shards (0..39, 140..259) merged into the same lists
    pytest.importorskip("pysd._C")
    from pysd._cpp.knn_graph import search
    from pysd._ref.knn_graph import empty_lists
    from pysd.ops.knn_graph import prepare_features

    x = integer_points(260, 5, seed=11).double() + 0.001 * torch.randn(260, 5, dtype=torch.float64)
    xs, sq = prepare_features(x, metric)
    ext = pysd._backend._load("_C")
    rows, row_sq = xs[40:140], None if sq is None else sq[40:140]
    sims, idx = empty_lists(rows, 6)
    search(ext, rows, row_sq, 40, exclude_self, 48, sims, idx)
    for c0, c1 in [(0, 40), (140, 260)]:
        search(ext, rows, row_sq, 40, exclude_self, 48, sims, idx, xs[c0:c1], None if sq is None else sq[c0:c1], c0)
    ref_idx, ref_sim = brute_force(x.numpy(), 6, metric, exclude_self)
    np.testing.assert_array_equal(idx.numpy(), ref_idx[40:140])
    np.testing.assert_allclose(sims.numpy(), ref_sim[40:140], rtol=1e-12, atol=1e-12)

    # a column shard that overlaps the rows: self is an equal global id
    sims, idx = empty_lists(rows, 6)
    search(ext, rows, row_sq, 40, exclude_self, 48, sims, idx, xs[100:260], None if sq is None else sq[100:260], 100)
    ref_idx, ref_sim = cross_reference(x.numpy(), range(40, 140), range(100, 260), 6, metric, exclude_self)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sims.numpy(), ref_sim, rtol=1e-12, atol=1e-12)


def test_cuda_merge_refuses_a_transposed_pass():
    # the CUDA tile merge feeds rows only (the argument is checked before the extension is touched)
    from pysd._cpp.knn_graph import merge
    from pysd._ref.knn_graph import empty_lists

    x = torch.randn(8, 3)
    sims, idx = empty_lists(x, 2)
    with pytest.raises(ValueError, match="col_from must be j1 = 8"):
        merge(None, x @ x.t(), 0, 8, 0, 8, 0, None, True, sims, idx)


def test_backends_agree_on_float32():
    x = torch.randn(900, 32)
    out = {}
    for name in pysd._backend.usable("knn_graph", "cpu"):
        fn = pysd._backend.implementation("knn_graph", name)
        out[name] = fn(x, None, 8, True, 100, 256)
    ref_idx, ref_sim = out.pop("torch")
    for name, (idx, sims) in out.items():
        torch.testing.assert_close(sims, ref_sim, rtol=0, atol=1e-5, msg=name)
        assert (idx == ref_idx).float().mean() > 0.99, name


def test_matches_faiss_flat_ip():
    faiss = pytest.importorskip("faiss")
    x = torch.randn(2000, 32)
    x = x / x.norm(dim=1, keepdim=True)
    k = 10
    g = pysd.knn_graph(x, k, metric="ip", tile=(256, 512))
    index = faiss.IndexFlatIP(32)
    index.add(x.numpy())
    dist, lab = index.search(x.numpy(), k + 2)
    ours = g.knn_indices.numpy()
    for i in range(len(x)):
        theirs = [j for j in lab[i] if j != i][:k]
        if set(theirs) != set(ours[i]):
            # only a near-tie at the k-th place may differ (float32 rounding differs between GEMMs)
            d = [s for j, s in zip(lab[i], dist[i]) if j != i]
            assert abs(d[k - 1] - d[k]) < 1e-5, i
    np.testing.assert_allclose(g.knn_similarities.numpy(), np.array(
        [[s for j, s in zip(lab[i], dist[i]) if j != i][:k] for i in range(len(x))]), atol=1e-5)


# --------------------------------------------------------------------------- graph recipe


def scipy_graph(idx, sims, n, metric, power, symmetrize, normalize):
    """The AML-KD / LP-DeepSSL construction written with scipy.sparse."""
    rows = np.repeat(np.arange(n), idx.shape[1])
    s = sims.reshape(-1).astype(np.float64)
    if metric == "l2":
        d2 = np.maximum(-sims, 0)
        w = np.exp(-power * d2.reshape(-1) / d2[:, -1].mean())
    else:
        w = np.maximum(s, 0) ** power
    W = sp.csr_matrix((w, (rows, idx.reshape(-1))), shape=(n, n))
    W.setdiag(0)
    if symmetrize == "sum":
        W = W + W.T
    elif symmetrize == "max":
        W = W.maximum(W.T)
    W = sp.csr_matrix(W)
    W.eliminate_zeros()
    if normalize is not None:
        deg = np.asarray(W.sum(1)).ravel()
        deg[deg == 0] = 1
        if normalize == "sym":
            D = sp.diags(1 / np.sqrt(deg))
            W = D @ W @ D
        else:
            W = sp.diags(1 / deg) @ W
    W = sp.csr_matrix(W)
    W.sort_indices()
    return W


@pytest.mark.parametrize("symmetrize", ["sum", "max", "none"])
@pytest.mark.parametrize("normalize", ["sym", "rw", None])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_graph_equals_scipy_recipe(symmetrize, normalize, metric):
    n, k = 250, 7
    x = torch.randn(n, 8, dtype=torch.float64)
    x[:40] = -x[:40].abs()  # some negative cosine neighbours → zero weights are dropped
    g = pysd.knn_graph(x, k, metric=metric, power=3.0, symmetrize=symmetrize, normalize=normalize,
                       exclude_self=False)
    ref = scipy_graph(g.knn_indices.numpy(), g.knn_similarities.numpy(), n, metric, 3.0, symmetrize, normalize)
    ours = g.to_scipy()
    np.testing.assert_array_equal(ours.indptr, ref.indptr)
    np.testing.assert_array_equal(ours.indices, ref.indices)
    np.testing.assert_allclose(ours.data, ref.data, rtol=1e-12)
    assert ours.diagonal().sum() == 0
    if symmetrize != "none" and normalize != "rw":
        assert abs(ours - ours.T).max() < 1e-15


def test_graph_float32_recipe_and_isolated_rows():
    # Rows whose every neighbour has negative similarity are isolated: no edges, no NaN.
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.01], [-1.0, -0.01], [0.0, 1.0]])
    g = pysd.knn_graph(x, 1, metric="cosine", symmetrize="none", normalize="sym")
    ref = scipy_graph(g.knn_indices.numpy(), g.knn_similarities.numpy(), 4, "cosine", 3.0, "none", "sym")
    np.testing.assert_allclose(g.to_scipy().toarray(), ref.toarray(), rtol=1e-6)
    assert torch.isfinite(g.values).all() and g.values.dtype == torch.float32
    assert g.indptr[1] - g.indptr[0] == 0  # row 0's only neighbour (row 3) has similarity 0


def test_power_zero_is_connectivity():
    x = torch.randn(100, 6)
    g = pysd.knn_graph(x, 4, power=0.0, symmetrize="max", normalize=None)
    assert torch.all(g.values == 1.0)


# --------------------------------------------------------------------------- inputs


def test_numpy_input_returns_graph():
    x = np.random.default_rng(0).normal(size=(80, 5))
    x.flags.writeable = False
    g = pysd.knn_graph(x, 3)
    assert isinstance(g, pysd.Graph)
    assert isinstance(g.values, torch.Tensor) and g.values.dtype == torch.float64
    assert g.knn_indices.shape == (80, 3) and g.num_nodes == 80
    np.testing.assert_array_equal(g.knn_indices.numpy(), brute_force(x, 3, "cosine")[0])


def test_dlpack_and_integer_input():
    class Capsule:  # a foreign array that only speaks DLPack
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kw):
            return self.t.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    x = integer_points(50, 3, seed=5)
    g = pysd.knn_graph(Capsule(x), 4, metric="l2")
    g_int = pysd.knn_graph(x.to(torch.int64), 4, metric="l2")
    assert torch.equal(g.knn_indices, g_int.knn_indices) and g_int.values.dtype == torch.float32


def test_custom_op_opcheck():
    x = torch.randn(40, 6)
    torch.library.opcheck(_knn_graph_op, (x, None, 3, True, 8, 16))


@pytest.mark.parametrize("call,exc,match", [
    (lambda x: pysd.knn_graph(x, 0), ValueError, r"k must be in \[1, N - 1 = 9"),
    (lambda x: pysd.knn_graph(x, 10), ValueError, r"got k=10"),
    (lambda x: pysd.knn_graph(x, 11, exclude_self=False), ValueError, r"k must be in \[1, N = 10\]"),
    (lambda x: pysd.knn_graph(x, 2.5), TypeError, r"k must be an int"),
    (lambda x: pysd.knn_graph(x, 3, metric="dot"), ValueError, r"metric must be one of"),
    (lambda x: pysd.knn_graph(x, 3, symmetrize="mean"), ValueError, r"symmetrize must be one of"),
    (lambda x: pysd.knn_graph(x, 3, normalize="row"), ValueError, r"normalize must be one of"),
    (lambda x: pysd.knn_graph(x, 3, method="hnsw"), ValueError, r"method must be one of"),
    (lambda x: pysd.knn_graph(x, 3, power=-1), ValueError, r"power must be a finite number >= 0"),
    (lambda x: pysd.knn_graph(x, 3, power=float("nan")), ValueError, r"power must be"),
    (lambda x: pysd.knn_graph(x, 3, tile=(0, 4)), ValueError, r"tile must be"),
    (lambda x: pysd.knn_graph(x, 3, exclude_self=1), TypeError, r"exclude_self must be a bool"),
    (lambda x: pysd.knn_graph(x[0], 3), ValueError, r"features must be 2-D \(N, d\), got shape \(4,\)"),
    (lambda x: pysd.knn_graph(x[None], 3), ValueError, r"features must be 2-D"),
    (lambda x: pysd.knn_graph(x[:, :0], 3), ValueError, r"at least one row and one column"),
    (lambda x: pysd.knn_graph(x > 0, 3), TypeError, r"real numbers, got torch.bool"),
    (lambda x: pysd.knn_graph(x.tolist(), 3), TypeError, r"torch.Tensor, a numpy array or a DLPack array"),
])
def test_bad_input(call, exc, match):
    x = torch.randn(10, 4)
    with pytest.raises(exc, match=match):
        call(x)


def test_non_finite_rows_are_named():
    x = torch.randn(20, 3)
    x[4, 1] = float("nan")
    x[11, 0] = float("inf")
    with pytest.raises(ValueError, match=r"finite; NaN or inf in rows \[4, 11\] \(2 rows\)"):
        pysd.knn_graph(x, 3)
    x = torch.randn(20, 3)
    x[:7, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"rows \[0, 1, 2, 3, 4, \.\.\.\] \(7 rows\)"):
        pysd.knn_graph(x, 3, metric="l2")


def test_zero_rows_with_cosine_are_named():
    x = torch.randn(20, 3)
    x[[2, 9]] = 0
    with pytest.raises(ValueError, match=r"metric='cosine' needs non-zero rows; zero norm in rows \[2, 9\]"):
        pysd.knn_graph(x, 3)
    assert pysd.knn_graph(x, 3, metric="l2").num_nodes == 20  # fine for the other metrics


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_overflowing_similarities_raise(metric):
    """Issue 10: metric='ip' on finite features of 1e30 returned a graph full of NaN."""
    x = torch.randn(30, 4) * 1e30
    with pytest.raises(ValueError, match=rf"knn_graph: features are too large for metric='{metric}'"):
        pysd.knn_graph(x, 3, metric=metric)
    g = pysd.knn_graph(x.double(), 3, metric=metric)  # float64 holds them
    assert torch.isfinite(g.values).all() and torch.isfinite(g.knn_similarities).all()
    cos = pysd.knn_graph(x, 3)  # cosine never overflows: rows are rescaled before normalising
    ref = pysd.knn_graph(x / 1e30, 3)
    assert torch.equal(cos.knn_indices, ref.knn_indices) and torch.isfinite(cos.values).all()


def test_numpy_strings_name_features():
    with pytest.raises(TypeError, match=r"knn_graph: features must hold numbers, got a numpy array of dtype <U"):
        pysd.knn_graph(np.array([["a", "b"], ["c", "d"], ["e", "f"]]), 1)
    with pytest.raises(TypeError, match=r"knn_graph: features must hold numbers.*object"):
        pysd.knn_graph(np.array([[1, None], [2, 3]], dtype=object), 1)


def test_negative_stride_and_read_only_numpy_views_are_accepted():
    x = np.random.default_rng(0).normal(size=(40, 6))
    g = pysd.knn_graph(x[::-1], 4)
    ref = pysd.knn_graph(np.ascontiguousarray(x[::-1]), 4)
    assert np.array_equal(g.knn_indices, ref.knn_indices)
    ro = x[:, ::-2]
    ro.flags.writeable = False
    assert np.array_equal(pysd.knn_graph(ro, 4).knn_indices, pysd.knn_graph(ro.copy(), 4).knn_indices)
    # and the same view through propagate (which accepted it before) and the selection ops
    labels = np.arange(40)[::-1] % 3
    assert pysd.propagate(g, labels).labels.shape == (40,)
    assert pysd.small_loss_mask(x[::-1, 0].copy()[::-1], labels, 0.5).shape == (40,)


# --------------------------------------------------------------------------- approximate search


def test_faiss_method_recall():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 32, generator=g)
    x = centres.repeat_interleave(200, 0) + 0.3 * torch.randn(4000, 32, generator=g)
    exact = pysd.knn_graph(x, 10)
    approx = pysd.knn_graph(x, 10, method="faiss")
    assert approx.knn_indices.shape == (4000, 10) and approx.knn_indices.dtype == torch.int32
    assert (approx.knn_indices != torch.arange(4000)[:, None]).all()
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact.knn_indices, approx.knn_indices))
    assert hits / exact.knn_indices.numel() > 0.9
    assert (approx.knn_similarities[:, :-1] >= approx.knn_similarities[:, 1:]).all()


def test_faiss_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"method='faiss' needs the faiss package"):
        pysd.knn_graph(torch.randn(50, 4), 3, method="faiss")


# --------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_cuda_matches_cpp(monkeypatch, metric):
    x = integer_points(3000, 6, seed=6, dup=100)
    monkeypatch.setenv("PYSD_BACKEND", "cpp")
    cpu = pysd.knn_graph(x, 12, metric=metric, tile=(256, 1000))
    monkeypatch.setenv("PYSD_BACKEND", "cuda")
    for tile in [(256, 1000), None]:
        gpu = pysd.knn_graph(x.cuda(), 12, metric=metric, tile=tile)
        assert gpu.values.is_cuda
        assert torch.equal(gpu.knn_indices.cpu(), cpu.knn_indices)
        assert torch.equal(gpu.knn_similarities.cpu(), cpu.knn_similarities)
        assert torch.equal(gpu.indptr.cpu(), cpu.indptr) and torch.equal(gpu.indices.cpu(), cpu.indices)
        torch.testing.assert_close(gpu.values.cpu(), cpu.values)
