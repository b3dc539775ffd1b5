"""knn_graph alone and knn_graph + propagate(cg) end to end against scikit-learn, paired in one process.

Data (issue 14): N=30k, d=64, C=20 unit centres, spread 0.6, L2-normalised rows, half the labels hidden, k=10.
Peers: ``NearestNeighbors(n_neighbors=10).kneighbors_graph`` for the graph; ``LabelSpreading(kernel="knn")``
(n_neighbors=10, alpha=0.2, max_iter=30) for the whole pipeline.  Each test runs pysd and its peer interleaved,
6 rounds (3 for the slow end-to-end peer), and prints min/median/max per side, the call-to-call spread and the
ratio round by round.

    python -m pytest -q -s bench/bench_end_to_end.py
"""

import os

import numpy as np
import pytest
import torch

import pysd
from conftest import paired, record_paired, spread

THREADS = 2
N, D, C, K = 30_000, 64, 20, 10
torch.set_num_threads(THREADS)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(C, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    clean = rng.integers(0, C, N)
    x = centres[clean] + 0.6 * 4 / np.sqrt(D) * rng.normal(size=(N, D))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = clean.copy()
    labels[rng.random(N) < 0.5] = -1
    return x, clean, labels


def _report(what, times, target):
    """Prints the paired rounds and stores them for `pysd bench` (table: median, min-max, paired ratio)."""
    record_paired(what, times, ["pysd"])
    ratios = [a / b for a, b in zip(times["pysd"], times["sklearn"])]
    side = {k: f"{spread(v)} s, spread {max(v) / min(v):.2f}x" for k, v in times.items()}
    print(f"\n{what}, {len(ratios)} paired rounds, load {os.getloadavg()[0]:.1f}: pysd {side['pysd']}; "
          f"sklearn {side['sklearn']}; pysd/sklearn {spread(ratios)} ({target})")


def test_knn_graph_vs_sklearn(data):
    from sklearn.neighbors import NearestNeighbors

    x, _, _ = data
    xt = torch.from_numpy(x)
    ours = pysd.knn_graph(xt, K)
    theirs = NearestNeighbors(n_neighbors=K + 1).fit(x).kneighbors(x, return_distance=False)
    agree = np.mean([set(a) == set(b[b != i][:K]) for i, (a, b) in enumerate(zip(ours.knn_indices.numpy(), theirs))])
    assert agree > 0.99  # float32 near-ties at the k-th place may differ
    times = paired({"pysd": lambda: pysd.knn_graph(xt, K),
                    "sklearn": lambda: NearestNeighbors(n_neighbors=K, n_jobs=THREADS).fit(x).kneighbors_graph(x)})
    _report("knn_graph N=30k d=64 k=10", times, "target: spread <= 1.3x, median <= 0.5")


def test_end_to_end_vs_label_spreading(data):
    from sklearn.semi_supervised import LabelSpreading

    x, clean, labels = data
    xt = torch.from_numpy(x)

    def ours():
        return pysd.propagate(pysd.knn_graph(xt, K), labels, solver="cg", max_iter=20)

    def theirs():
        return LabelSpreading(kernel="knn", n_neighbors=K, alpha=0.2, max_iter=30, n_jobs=THREADS).fit(x, labels)

    hidden = labels < 0
    acc_ours = (ours().labels[hidden] == clean[hidden]).mean()
    acc_theirs = (theirs().transduction_[hidden] == clean[hidden]).mean()
    assert acc_ours >= acc_theirs
    times = paired({"pysd": ours, "sklearn": theirs}, reps=3)
    _report(f"knn_graph + propagate(cg) C=20 (accuracy on hidden labels {acc_ours:.3f} vs {acc_theirs:.3f})",
            times, "target <= 0.2 in every round")
