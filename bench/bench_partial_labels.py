"""partial_labels: pysd backends vs a plain torch baseline (``topk`` + ``scatter``), same run.

Config: fp32 teacher probabilities, k = 2 (the PLL target of Jeong & Chung); N x C in
{65536 x 10, 8192 x 1000} quick, {262144 x 10, 32768 x 1000} with PYSD_BENCH_FULL=1.
Correctness first (same targets as the baseline on tie-free rows), then interleaved paired runs:
each round times pysd and the baseline back to back, and the summary prints the median of the
per-round ratios (baseline time / pysd time) with its min-max.

    python -m pytest bench/bench_partial_labels.py            # quick
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_partial_labels.py
"""

import os
import statistics
import time

import pytest
import torch

import pysd
from conftest import FULL, record

K = 2
SIZES = [(262144, 10), (32768, 1000)] if FULL else [(65536, 10), (8192, 1000)]
BACKENDS = ["cpp", "numba"]
PAIRS = 15


def make_probs(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * 2).softmax(-1)


def baseline(p):
    """The plain torch recipe: top-k indices, then 1/k at them."""
    return torch.zeros_like(p).scatter_(-1, p.topk(K, dim=-1).indices, 1.0 / K)


def with_backend(name, fn, *args):
    os.environ["PYSD_BACKEND"] = name
    try:
        return fn(*args)
    finally:
        del os.environ["PYSD_BACKEND"]


def paired_ratios(p, backend):
    """Per-round ``baseline time / pysd time``, the two runs of a round back to back (order alternating)."""
    ratios = []
    for r in range(PAIRS):
        times = {}
        for who in (("pysd", "torch") if r % 2 == 0 else ("torch", "pysd")):
            t0 = time.perf_counter()
            if who == "pysd":
                with_backend(backend, pysd.partial_labels, p, K)
            else:
                baseline(p)
            times[who] = time.perf_counter() - t0
        ratios.append(times["torch"] / times["pysd"])
    return ratios


@pytest.mark.parametrize("n,c", SIZES, ids=[f"{n}x{c}" for n, c in SIZES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_labels(benchmark, backend, n, c):
    p = make_probs(n, c)
    out = with_backend(backend, pysd.partial_labels, p, K)  # correctness before timing (also JIT warm-up)
    torch.testing.assert_close(out, baseline(p), rtol=0, atol=0)
    ratios = paired_ratios(p, backend)
    benchmark.pedantic(with_backend, args=(backend, pysd.partial_labels, p, K), rounds=5, warmup_rounds=1)
    med, lo, hi = statistics.median(ratios), min(ratios), max(ratios)
    record(f"partial_labels k={K} {n}x{c} fp32", f"pysd-{backend}", benchmark,
           speedup_vs_torch=f"{med:.2f}x ({lo:.2f}-{hi:.2f}) over {PAIRS} paired rounds")
    print(f"\npartial_labels {n}x{c} pysd-{backend}: {med:.2f}x the torch baseline's speed "
          f"(median of {PAIRS} paired rounds, min {lo:.2f}, max {hi:.2f})")
