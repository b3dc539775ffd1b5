"""Exact kNN graph: pysd.knn_graph against faiss-cpu IndexFlatIP search + a scipy CSR build.

Protocol: 2 threads everywhere, the data
generator ("hard": spread 0.6, C=100 unit centres, L2-normalised rows, seed 0), d=128, k=10
(search k+1, self dropped).  Neighbour sets are checked against faiss before anything is
timed; each contender gets one warm-up and 3 timed rounds (median); the summary prints the
ratios measured in this run, recall / agreement and the peak extra RSS of one call.

    python -m pytest bench/bench_knn_graph.py -s                 # quick: N=5k
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_knn_graph.py -s   # headline: N=100k
    PYSD_BENCH_N=50000 ...                                         # any N
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

import pysd  # noqa: E402
from pysd.ops.knn_graph import _knn_graph_op, tile_shape  # noqa: E402

faiss = pytest.importorskip("faiss")

THREADS = 2
# quick mode (the default, and `pysd bench`) stays within a two-minute budget for the whole suite on 2 cores
N = 100_000 if os.environ.get("PYSD_BENCH_FULL") == "1" else int(os.environ.get("PYSD_BENCH_N", 5_000))
D, K, C, SPREAD, GAMMA = 128, 10, 100, 0.6, 3.0
ROUNDS = 3
RESULTS = {}

torch.set_num_threads(THREADS)
faiss.omp_set_num_threads(THREADS)


def make_data(n=N, d=D, c=C, spread=SPREAD, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    x = centres[y] + spread * 4 / np.sqrt(d) * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def faiss_search(x):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    dist, lab = index.search(x, K + 1)
    return dist[:, 1:], lab[:, 1:]  # LP-DeepSSL: the first hit is taken to be self


def scipy_graph(dist, lab):
    """LP-DeepSSL / AML-KD: W = max(s,0)^3 on the kNN edges, W + W^T, zero diagonal, D^-1/2 W D^-1/2."""
    n = lab.shape[0]
    w = np.maximum(dist, 0) ** GAMMA
    W = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), K), lab.ravel())), shape=(n, n))
    W = W + W.T
    W.setdiag(0)
    W.eliminate_zeros()
    deg = np.asarray(W.sum(1)).ravel()
    deg[deg == 0] = 1
    dinv = sp.diags(1 / np.sqrt(deg))
    return dinv @ W @ dinv


def faiss_pipeline(x):
    return scipy_graph(*faiss_search(x))


def peak_rss_delta(fn, *args):
    """Peak resident-set growth (bytes) while fn runs, sampled every 2 ms from /proc/self/statm."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    base, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    try:
        fn(*args)
    finally:
        done.set()
        t.join()
    return max(peak[0], rss()) - base


CONTENDERS = {
    "faiss search": lambda x, xt: faiss_search(x),
    "faiss + scipy graph": lambda x, xt: faiss_pipeline(x),
    "pysd kNN lists": lambda x, xt: _knn_graph_op(xt, None, K, True, *tile_shape(None, "cpu")),
    "pysd knn_graph": lambda x, xt: pysd.knn_graph(xt, K),
}


def first_call_rss_mb(name):
    """Peak extra RSS of one call in a fresh interpreter, where no allocator cache hides it; a
    call on 256 rows first loads the libraries' code and thread pools, which are not data."""
    code = (f"import sys; sys.path[:0] = [{os.path.dirname(os.path.dirname(__file__))!r}, "
            f"{os.path.dirname(__file__)!r}]; import bench_knn_graph as b; x = b.make_data(); "
            f"xt = b.torch.from_numpy(x); fn = b.CONTENDERS[{name!r}]; fn(x[:256], xt[:256]); "
            f"print(b.peak_rss_delta(fn, x, xt))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 2**20


@pytest.fixture(scope="module")
def data():
    x = make_data()
    xt = torch.from_numpy(x)
    ref_dist, ref_lab = faiss_search(x)  # also the warm-up of faiss
    ours = pysd.knn_graph(xt, K)          # and of ours
    idx = ours.knn_indices.numpy()
    same = [set(a) == set(b) for a, b in zip(idx, ref_lab)]
    recall = sum(len(set(a) & set(b)) for a, b in zip(idx, ref_lab)) / ref_lab.size
    # a row may differ only by a float32 near-tie at the k-th place
    for i in np.flatnonzero(~np.asarray(same))[:1000]:
        assert abs(ours.knn_similarities[i, -1].item() - ref_dist[i, -1]) < 1e-5, i
    np.testing.assert_allclose(ours.knn_similarities.numpy(), ref_dist, atol=1e-5)
    RESULTS["recall"] = recall
    RESULTS["agreement"] = float(np.mean(same))
    ref_graph = scipy_graph(ref_dist, ref_lab)
    RESULTS["graph_max_abs_diff"] = float(abs(ours.to_scipy() - ref_graph).max())
    return x, xt


def timed(benchmark, name, data):
    benchmark.pedantic(CONTENDERS[name], args=data, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    RESULTS[name] = statistics.median(benchmark.stats.stats.data)
    RESULTS[name + ":rss_mb"] = first_call_rss_mb(name)


def test_faiss_flat_ip_search(benchmark, data):
    timed(benchmark, "faiss search", data)


def test_faiss_search_plus_scipy_graph(benchmark, data):
    timed(benchmark, "faiss + scipy graph", data)


def test_pysd_knn_exact(benchmark, data):
    timed(benchmark, "pysd kNN lists", data)


def test_pysd_knn_graph(benchmark, data):
    timed(benchmark, "pysd knn_graph", data)


def test_summary(data):
    if "pysd knn_graph" not in RESULTS or "faiss + scipy graph" not in RESULTS:
        pytest.skip("run the whole file (with timing enabled) for the summary")
    from threadpoolctl import threadpool_info

    print(f"\n\n=== knn_graph benchmark: N={N}, d={D}, k={K}, {THREADS} threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, faiss {faiss.__version__}")
    print("thread pools:", [(p["internal_api"], p["num_threads"]) for p in threadpool_info()])
    print(f"neighbour sets vs faiss IndexFlatIP: recall {RESULTS['recall']:.6f}, identical rows "
          f"{RESULTS['agreement']:.6f}; graph max |diff| vs faiss+scipy {RESULTS['graph_max_abs_diff']:.2e}")
    print(f"{'contender':<22}{'median s':>10}{'peak +RSS MB (first call)':>27}")
    for name in ("faiss search", "faiss + scipy graph", "pysd kNN lists", "pysd knn_graph"):
        print(f"{name:<22}{RESULTS[name]:>10.3f}{RESULTS[name + ':rss_mb']:>27.1f}")
    print(f"ratio kNN lists / faiss search:          {RESULTS['pysd kNN lists'] / RESULTS['faiss search']:.3f}")
    print(f"ratio knn_graph / (faiss + scipy graph): "
          f"{RESULTS['pysd knn_graph'] / RESULTS['faiss + scipy graph']:.3f}   (target <= 1.0, stretch 0.7)")
