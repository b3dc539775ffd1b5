"""Benchmark helpers: a results table with ratios against the baselines measured in
the same run, the machine's copy bandwidth, and a JSON dump for `pysd bench`.

Every timed benchmark of every bench_*.py lands in the results: under the (group, impl) a test passes to
:func:`record`, or else under the benchmark's group (default: the file's op, e.g. "knn_graph") and the
test's name.  Sizes: quick by default; PYSD_BENCH_FULL=1 for the headline sizes.
Results go to $PYSD_BENCH_OUT (default .benchmarks/pysd_results.json).
"""

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

FULL = os.environ.get("PYSD_BENCH_FULL", "0") == "1"
RESULTS = defaultdict(dict)  # group -> impl -> {"seconds":..., **extra}
META = {}
_RECORDED = set()  # ids of the benchmark fixtures stored through record()


def record(group: str, impl: str, benchmark, **extra):
    """Store the median time of a finished pytest-benchmark run under (group, impl), with its min-max
    spread over the rounds (this machine's timings swing between identical runs)."""
    st = benchmark.stats.stats
    RESULTS[group][impl] = {"seconds": float(st.median), "min_max_ms": f"{st.min * 1e3:.1f}-{st.max * 1e3:.1f}",
                            "rounds": int(st.rounds), **extra}
    _RECORDED.add(id(benchmark))


def paired(fns: dict, reps: int = 6, reset=None) -> dict:
    """Runs the callables of ``fns`` (name -> fn) interleaved, ``reps`` rounds in this process, the order
    alternating per round; returns name -> list of seconds.  Ratios are then taken round by round.

    ``reset`` (untimed, before every call) releases what the previous call left on shared inputs, e.g.
    the gradient of a leaf all impls share: freeing another impl's output is not this impl's cost.  What
    a call returns is released after its clock stops, for the same reason."""
    times = {k: [] for k in fns}
    for i in range(reps):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            if reset is not None:
                reset()
            t0 = time.perf_counter()
            out = fns[k]()
            times[k].append(time.perf_counter() - t0)
            del out
    return times


def spread(values) -> str:
    """``median (min-max)`` of a list of numbers."""
    v = sorted(values)
    return f"{v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2:.3g} ({v[0]:.3g}-{v[-1]:.3g})"


def paired_ratio(times: dict, base: str, impl: str) -> str:
    """``median (min-max)`` over the rounds of ``paired`` of time(base) / time(impl)."""
    return spread([b / i for b, i in zip(times[base], times[impl])])


def record_paired(group: str, times: dict, pysd_impls, **extra_by_impl):
    """Store the results of ``paired``: per impl its median seconds, its min-max, every
    ``extra_by_impl[key][impl]`` and, for the pysd impls, the paired ratio against every baseline."""
    baselines = [n for n in times if n not in pysd_impls]
    for name, ts in times.items():
        res = {"seconds": sorted(ts)[len(ts) // 2], "min_max_ms": f"{min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f}",
               "rounds": len(ts), **{k: v[name] for k, v in extra_by_impl.items() if name in v}}
        if name in pysd_impls:
            res.update({f"paired_vs_{b}": paired_ratio(times, b, name) for b in baselines})
        RESULTS[group][name] = res


def spawn_ranks(worker, world: int):
    """Runs ``worker(rank, world, port, out)`` on ``world`` spawned processes (a free local port for the
    process group) and returns what they put in the queue ``out`` (rank 0 puts one result)."""
    import socket

    import torch.multiprocessing as mp

    out = mp.get_context("spawn").SimpleQueue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, out), nprocs=world, join=True)
    return out.get()


def peak_rss(module: str, impl: str, *args) -> int:
    """Peak extra resident bytes of one ``module.make_step(impl, *args)()`` in a fresh process
    (``bench/peak_memory.py``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(here),
                                                                  os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, os.path.join(here, "peak_memory.py"), module, impl, *map(str, args)],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _collect_every_benchmark(request):
    """After each test: a timed benchmark that did not go through record() (nor wrote RESULTS itself) is
    stored generically."""
    before = sum(len(v) for v in RESULTS.values())
    yield
    bench = request.node.funcargs.get("benchmark") if "benchmark" in request.fixturenames else None
    if bench is None or id(bench) in _RECORDED or getattr(bench, "stats", None) is None:
        return
    if sum(len(v) for v in RESULTS.values()) != before:
        return
    module = Path(str(request.node.fspath)).stem.removeprefix("bench_")
    group = bench.group or module
    impl = request.node.name.removeprefix("test_")
    extra = {k: v for k, v in bench.extra_info.items() if isinstance(v, (int, float, str))}
    RESULTS[group][impl] = {"seconds": float(bench.stats.stats.median), **extra}


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


def machine() -> str:
    """The CPU model, core count, pysd's active ISA clone and the memory of this machine, in one line."""
    import platform

    import pysd

    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    model = models[0] if models else platform.processor() or platform.machine()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, pysd ISA {pysd.info()['build'].get('isa_active', '?')}, {mem:.0f} GiB"


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
    out.write_text(json.dumps({"meta": {**META, "full": FULL, "threads": torch.get_num_threads(), "machine": machine()},
                               "results": RESULTS}, indent=2))
    tr.write_line(f"\nresults written to {out}")
