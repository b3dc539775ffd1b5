"""Label propagation benchmark (cg and iterate against their scipy peers).

    python -m pytest bench/bench_propagate.py -s                      # quick: N=5k
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_propagate.py -s    # headline: N=100k, d=128, k=10, C=100
    PYSD_BENCH_SKIP_SKLEARN=1 ...                                     # leave out LabelSpreading (~1 min at 100k)

One graph (faiss IndexFlatIP exact kNN, k+1 with self dropped, max(s,0)^3, W+W^T, D^-1/2 W D^-1/2) shared by
every method.  Correctness is checked before timing; each timing is the median of 3 runs after one warm-up
(sklearn end to end: 1 run).  Ratios against the baselines of the same run are printed at the end.
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
from scipy.sparse.linalg import cg as scipy_cg  # noqa: E402

import pysd  # noqa: E402

faiss = pytest.importorskip("faiss")
FULL = os.environ.get("PYSD_BENCH_FULL") == "1"
N, D, K, C = (100_000 if FULL else 5_000), 128, 10, 100
ALPHA, ITERS = 0.99, 20
torch.set_num_threads(2)
faiss.omp_set_num_threads(2)
TIMES = {}
NOTES = {}


def make_data(n, d, c, spread=0.6, noise=0.2, seed=0):
    """Data generator: unit class centres, x = c_y + spread*4/sqrt(d)*eps, L2-normalised, symmetric noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    x = centres[y] + spread * 4 / np.sqrt(d) * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    noisy = y.copy()
    flip = rng.random(n) < noise
    noisy[flip] = rng.integers(0, c, flip.sum())
    return x, y, noisy


def faiss_graph(x, k):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1)
    n = len(x)
    w = sp.csr_matrix((np.maximum(sims[:, 1:], 0).ravel() ** 3, (np.repeat(np.arange(n), k), idx[:, 1:].ravel())),
                      shape=(n, n))
    w = (w + w.T).tocsr()
    w.setdiag(0)
    w.eliminate_zeros()
    deg = np.asarray(w.sum(1)).ravel()
    deg[deg == 0] = 1
    dm = sp.diags((deg ** -0.5).astype(np.float32))
    return (dm @ w @ dm).tocsr().astype(np.float32)


def seeds(labels, c):
    y = np.zeros((len(labels), c), dtype=np.float32)
    counts = np.bincount(labels, minlength=c)
    y[np.arange(len(labels)), labels] = 1.0 / counts[labels]
    return y


def scipy_zhou(S, Y):
    z = Y.copy()
    for _ in range(ITERS):
        z = ALPHA * (S @ z) + Y
    return z


def scipy_cg_loop(S, Y):
    a = (sp.identity(S.shape[0], dtype=np.float32, format="csr") - ALPHA * S).tocsr()
    return np.stack([scipy_cg(a, Y[:, c], rtol=1e-6, maxiter=ITERS)[0] for c in range(Y.shape[1])], 1)


@pytest.fixture(scope="module")
def data():
    x, clean, noisy = make_data(N, D, C)
    t = time.perf_counter()
    S = faiss_graph(x, K)
    NOTES["graph_s"] = time.perf_counter() - t
    return dict(x=x, clean=clean, noisy=noisy, S=S, g=pysd.Graph.from_scipy(S), Y=seeds(noisy, C))


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\n== bench_propagate: N={N} d={D} k={K} C={C} alpha={ALPHA} iters={ITERS}, 2 threads, "
          f"backend={pysd._backend.select('propagate', 'cpu')[0]}")
    print(f"   graph (faiss IndexFlatIP + scipy): {NOTES.get('graph_s', float('nan')):.2f} s")
    for name, t in TIMES.items():
        print(f"   {name:<34s} {t * 1e3:10.1f} ms")
    for ours, base, target in (("pysd iterate", "scipy Zhou loop", 0.25), ("pysd cg", "scipy per-class cg", 0.12),
                               ("pysd e2e (faiss graph + cg)", "sklearn LabelSpreading knn e2e", 0.2)):
        if ours in TIMES and base in TIMES:
            print(f"   {ours} / {base}: {TIMES[ours] / TIMES[base]:.3f}x (target <= {target}x)")
    for k, v in NOTES.items():
        if k != "graph_s":
            print(f"   {k}: {v}")
    print(f"   peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          f"pysd cg work buffers: 4 x N x C x 4 B = {4 * N * C * 4 / 2**20:.0f} MB")


def timed(benchmark, name, fn, rounds=3):
    out = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)
    TIMES[name] = benchmark.stats.stats.median
    return out


def test_scipy_zhou(benchmark, data):
    timed(benchmark, "scipy Zhou loop", lambda: scipy_zhou(data["S"], data["Y"]))


def test_pysd_iterate(benchmark, data):
    ref = scipy_zhou(data["S"], data["Y"])
    r = pysd.propagate(data["g"], data["noisy"], solver="iterate", alpha=ALPHA, max_iter=ITERS)
    err = np.abs(r.raw_scores - ref).max() / np.abs(ref).max()
    assert err < 1e-4
    NOTES["iterate: max rel. diff vs scipy / argmax agreement"] = f"{err:.1e} / {(r.labels == ref.argmax(1)).mean():.4f}"
    NOTES["iterate: label accuracy vs clean"] = f"{(r.labels == data['clean']).mean():.4f}"
    timed(benchmark, "pysd iterate", lambda: pysd.propagate(data["g"], data["noisy"], solver="iterate",
                                                            alpha=ALPHA, max_iter=ITERS))


def test_scipy_cg_loop(benchmark, data):
    timed(benchmark, "scipy per-class cg", lambda: scipy_cg_loop(data["S"], data["Y"]))


def test_pysd_cg(benchmark, data):
    ref = scipy_cg_loop(data["S"], data["Y"])
    r = pysd.propagate(data["g"], data["noisy"], solver="cg", alpha=ALPHA, max_iter=ITERS)
    err = np.abs(r.raw_scores - ref).max() / np.abs(ref).max()
    assert err < 1e-3
    NOTES["cg: max rel. diff vs scipy (fp32 both) / argmax agreement"] = (
        f"{err:.1e} / {(r.labels == np.maximum(ref, 0).argmax(1)).mean():.4f}")
    NOTES["cg: label accuracy vs clean / noisy labels"] = (
        f"{(r.labels == data['clean']).mean():.4f} / {(data['noisy'] == data['clean']).mean():.4f}")
    timed(benchmark, "pysd cg", lambda: pysd.propagate(data["g"], data["noisy"], solver="cg", alpha=ALPHA,
                                                       max_iter=ITERS))


def test_sklearn_labelspreading_e2e(benchmark, data):
    from sklearn.semi_supervised import LabelSpreading

    if os.environ.get("PYSD_BENCH_SKIP_SKLEARN") == "1":
        pytest.skip("PYSD_BENCH_SKIP_SKLEARN=1")
    model = LabelSpreading(kernel="knn", n_neighbors=K, alpha=0.9, max_iter=30, n_jobs=2)
    fitted = timed(benchmark, "sklearn LabelSpreading knn e2e", lambda: model.fit(data["x"], data["noisy"]), rounds=1)
    NOTES["sklearn LabelSpreading(alpha=0.9) label accuracy"] = f"{(fitted.transduction_ == data['clean']).mean():.4f}"


def test_pysd_end_to_end(benchmark, data):
    def run():
        return pysd.propagate(faiss_graph(data["x"], K), data["noisy"], solver="cg", alpha=ALPHA, max_iter=ITERS)

    r = timed(benchmark, "pysd e2e (faiss graph + cg)", run, rounds=1)
    NOTES["pysd e2e label accuracy"] = f"{(r.labels == data['clean']).mean():.4f}"


def reordered(g):
    """Builds the graph's cached locality order and reordered CSR, timing the first build."""
    t = time.perf_counter()
    g.reordered()
    NOTES.setdefault("reorder: first call (community order + permuted CSR), s", f"{time.perf_counter() - t:.2f}")


def test_iterate_paired(data):
    """iterate plain, iterate with reorder=True (graph order cached) and the scipy Zhou loop, interleaved,
    3 rounds, stored for `pysd bench`."""
    from conftest import paired, record_paired

    g, labels = data["g"], data["noisy"]
    reordered(g)
    times = paired({"pysd iterate": lambda: pysd.propagate(g, labels, solver="iterate", alpha=ALPHA, max_iter=ITERS),
                    "pysd iterate reorder": lambda: pysd.propagate(g, labels, solver="iterate", alpha=ALPHA,
                                                                   max_iter=ITERS, reorder=True),
                    "scipy Zhou loop": lambda: scipy_zhou(data["S"], data["Y"])}, reps=3)
    record_paired(f"propagate iterate {ITERS} it N={N} C={C}, paired", times,
                  ["pysd iterate", "pysd iterate reorder"])


def test_reorder_paired(data):
    """cg plain, cg with reorder=True (graph order cached) and the per-class scipy cg, interleaved, 3 rounds."""
    from conftest import paired, record_paired, spread

    g, labels = data["g"], data["noisy"]
    reordered(g)
    ref = scipy_cg_loop(data["S"], data["Y"])
    r = pysd.propagate(g, labels, solver="cg", alpha=ALPHA, max_iter=ITERS, reorder=True)
    assert np.abs(r.raw_scores - ref).max() / np.abs(ref).max() < 1e-3
    times = paired({"plain": lambda: pysd.propagate(g, labels, solver="cg", alpha=ALPHA, max_iter=ITERS),
                    "reorder": lambda: pysd.propagate(g, labels, solver="cg", alpha=ALPHA, max_iter=ITERS,
                                                      reorder=True),
                    "scipy": lambda: scipy_cg_loop(data["S"], data["Y"])}, reps=3)
    record_paired(f"propagate cg {ITERS} it N={N} C={C}, paired", {
        "pysd cg": times["plain"], "pysd cg reorder": times["reorder"], "scipy per-class cg": times["scipy"]},
        ["pysd cg", "pysd cg reorder"])
    for k in ("plain", "reorder"):
        NOTES[f"cg {k} / scipy per-class cg, paired rounds"] = spread(
            [a / b for a, b in zip(times[k], times["scipy"])])
    NOTES["cg reorder / plain, paired rounds"] = spread([a / b for a, b in zip(times["reorder"], times["plain"])])
    NOTES["load average during the paired rounds"] = f"{os.getloadavg()[0]:.1f}"
