"""pysd.theory.sd_outputs (closed form / exact Newton) vs per-round L-BFGS training of the linear probe.

The baseline is what the paper's setting asks for without the theory: train the bias-free
linear probe from scratch every round, full batch, with ``torch.optim.LBFGS`` (strong Wolfe,
``tolerance_grad=1e-12``) on soft cross-entropy plus weight decay, float64.

Data: K=4 Gaussian classes in p=256 dimensions (unit-norm features), 30% symmetric label
noise, 10 students.  Correctness is checked before timing: the exact mode must equal the
trained outputs to 1e-6; the linearised closed form must give the same predictions in every
round, and its outputs differ from the trained (nonlinear) ones only by the linearisation
error, which is printed.

Both sides run with the same number of threads, PYSD_BENCH_THREADS (default 1): numpy/scipy's
OpenBLAS through threadpoolctl and torch through ``torch.set_num_threads``.  On a shared 2-core
machine OpenBLAS's spinning worker threads make small multi-threaded factorisations erratic
(10-70x slower under load), which would measure the machine, not the method.

    python -m pytest bench/bench_theory.py                     # quick: N = 1000 / 200
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_theory.py   # headline sizes: N = 2000 / 500
"""

import os
import time

import numpy as np
import pytest
import threadpoolctl
import torch

from conftest import FULL, RESULTS, record
from pysd import theory as th

K, P, ETA, ROUNDS = 4, 256, 0.3, 10
N_LIN = 2000 if FULL else 1000
N_EXACT = 500 if FULL else 200
LAM_LIN = 0.3      # linearisation error ~1e-2, predictions unchanged; smaller lam is more nonlinear
LAM_EXACT = 1e-2
THREADS = int(os.environ.get("PYSD_BENCH_THREADS", "1"))


@pytest.fixture(autouse=True, scope="module")
def _same_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    with threadpoolctl.threadpool_limits(THREADS, user_api="blas"):
        yield
    torch.set_num_threads(before)


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, P))
    true = np.repeat(np.arange(K), n // K)
    x = 0.35 * means[true] + rng.normal(size=(n, P)) / np.sqrt(P)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, true, th.symmetric_noise(true, K, ETA, seed=seed + 1)


def lbfgs_rounds(x, given, lam, rounds):
    """Straightforward per-round training: fresh W = 0, L-BFGS to a tight gradient tolerance."""
    xt = torch.from_numpy(x)
    target = torch.nn.functional.one_hot(torch.from_numpy(given), K).double()
    outputs = []
    for _ in range(rounds + 1):
        w = torch.zeros(x.shape[1], K, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=5000, tolerance_grad=1e-12, tolerance_change=0.0,
                                history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -(target * torch.log_softmax(xt @ w, 1)).sum(1).mean() + 0.5 * lam * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        target = torch.softmax(xt @ w.detach(), 1)
        outputs.append(target)
    return torch.stack(outputs).numpy()


def _time_once(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@pytest.mark.parametrize("mode", ["linearized", "exact"])
def test_sd_outputs_vs_lbfgs(benchmark, mode):
    n, lam = (N_LIN, LAM_LIN) if mode == "linearized" else (N_EXACT, LAM_EXACT)
    x, true, given = make_data(n)
    trained, t_lbfgs = _time_once(lambda: lbfgs_rounds(x, given, lam, ROUNDS))
    ours = th.sd_outputs(x, given, K, lam, ROUNDS, mode=mode, true_labels=true)
    diff = float(np.abs(ours.outputs - trained).max())
    np.testing.assert_array_equal(ours.predictions, trained.argmax(-1))
    if mode == "exact":
        assert diff <= 1e-6, diff
        assert (ours.residuals <= 1e-10).all()
    else:
        assert diff <= 2e-2, diff
    benchmark.pedantic(lambda: th.sd_outputs(x, given, K, lam, ROUNDS, mode=mode), rounds=3, iterations=1,
                       warmup_rounds=1)
    ratio = t_lbfgs / benchmark.stats.stats.min
    benchmark.extra_info.update(n=n, lam=lam, max_abs_diff=diff, lbfgs_seconds=t_lbfgs, speedup=ratio)
    print(f"\n{mode}: N={n} p={P} K={K} rounds={ROUNDS} lam={lam} threads={THREADS}: L-BFGS {t_lbfgs:.3f} s, "
          f"sd_outputs {benchmark.stats.stats.min * 1e3:.1f} ms -> {ratio:.2f}x faster; max |diff| = {diff:.2e}")
    group = f"theory {mode} N={n}"
    RESULTS[group]["lbfgs-torch"] = {"seconds": t_lbfgs}     # one run: minutes at full size
    record(group, f"sd_outputs-{mode}", benchmark, max_abs_diff=f"{diff:.1e}")


def test_block_fast_path(benchmark):
    """The O(K N) block-Gram closed form against the Cholesky path on the same block Gram."""
    n = N_LIN // K
    true, given = th.deterministic_flips(K, n, n // 10)
    g = th.block_gram(K, n, 0.4, 0.1)
    general, t_general = _time_once(lambda: th.sd_outputs(g, given, K, 1e-4, ROUNDS, true_labels=true))
    fast = benchmark(lambda: th.block_sd_outputs(given, K, n, 0.4, 0.1, 1e-4, ROUNDS, true_labels=true))
    np.testing.assert_allclose(fast.outputs, general.outputs, rtol=0, atol=1e-11)
    print(f"\nblock fast path N={K * n}: {benchmark.stats.stats.min * 1e3:.2f} ms vs Cholesky path "
          f"{t_general * 1e3:.0f} ms ({t_general / benchmark.stats.stats.min:.0f}x)")
