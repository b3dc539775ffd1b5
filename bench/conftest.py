"""Benchmark helpers: a results table with ratios against the baselines measured in
the same run, the machine's copy bandwidth, and a JSON dump for `pysd bench`.

Sizes: quick by default; PYSD_BENCH_FULL=1 for the headline sizes of DESIGN.md.
Results go to $PYSD_BENCH_OUT (default .benchmarks/pysd_results.json).
"""

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

FULL = os.environ.get("PYSD_BENCH_FULL", "0") == "1"
RESULTS = defaultdict(dict)  # group -> impl -> {"seconds":..., **extra}
META = {}


def record(group: str, impl: str, benchmark, **extra):
    """Store the best time of a finished pytest-benchmark run under (group, impl)."""
    RESULTS[group][impl] = {"seconds": float(benchmark.stats.stats.min), **extra}


def copy_bandwidth_gbs(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Measured memory copy bandwidth (read + write bytes / time) with torch's copy_."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(reps))
    return 2 * nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.fixture(scope="session")
def copy_gbs():
    if "copy_gbs" not in META:
        META["copy_gbs"] = copy_bandwidth_gbs()
    return META["copy_gbs"]


def _baseline(group_results):
    for name in ("eager", "scipy", "faiss", "sklearn", "lbfgs"):
        for impl in group_results:
            if impl.startswith(name):
                return impl
    return None


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("pysd ratios (same run)")
    if "copy_gbs" in META:
        tr.write_line(f"measured copy bandwidth: {META['copy_gbs']:.1f} GB/s   threads: {torch.get_num_threads()}")
    for group, impls in RESULTS.items():
        tr.write_line(f"\n[{group}]")
        baselines = [b for b in impls if any(b.startswith(p) for p in ("eager", "compile", "liger", "scipy", "faiss",
                                                                           "sklearn", "lbfgs"))]
        header = f"  {'impl':<22}{'time (ms)':>12}" + "".join(f"{'vs ' + b:>22}" for b in baselines)
        tr.write_line(header + "   extra")
        for impl, res in impls.items():
            ratios = "".join(f"{impls[b]['seconds'] / res['seconds']:>21.2f}x" for b in baselines)
            extra = ", ".join(f"{k}={v}" for k, v in res.items() if k != "seconds")
            tr.write_line(f"  {impl:<22}{res['seconds'] * 1e3:>12.2f}{ratios}   {extra}")
    out = Path(os.environ.get("PYSD_BENCH_OUT", ".benchmarks/pysd_results.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {**META, "full": FULL, "threads": torch.get_num_threads()},
                               "results": RESULTS}, indent=2))
    tr.write_line(f"\nresults written to {out}")
