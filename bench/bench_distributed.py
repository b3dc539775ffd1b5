"""pysd.distributed on this machine: 1 vs 2 gloo ranks on the CPU.

    python -m pytest bench/bench_distributed.py -s                      # quick: N=20k, d=64, k=10, C=20
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_distributed.py -s    # N=100k, d=128, k=10, C=100

Each run spawns the ranks once (threads split evenly over the 2 cores).  Inside the ranks: the sharded
kNN graph (timed once), then per solver (cg, iterate; 20 iterations, tol=0) a correctness check against
the single-process op and REPS timed propagations after a barrier (the slowest rank's time).  On one rank
the distributed op and ``pysd.propagate`` run interleaved (``paired``) and the table gets the ratio pair
by pair.  Traffic per iteration is counted, not estimated: the all-reduce calls and their bytes (per rank)
and the halo bytes all ranks receive, from the difference of a 10- and a 20-iteration run, against an
all-gather of the (N, C) float32 scores.  The pytest-benchmark time includes starting the ranks.
"""

import os
import statistics
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from conftest import RESULTS, paired, record_paired, spawn_ranks, spread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.environ.get("PYSD_BENCH_FULL") == "1"
N, D, K, C = (100_000, 128, 10, 100) if FULL else (20_000, 64, 10, 20)
ITERS, CORES, REPS = 20, 2, 6


def _data():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=1)
    y = torch.randint(0, C, (N,), generator=g)
    x = centres[y] + 0.6 * 4 / D ** 0.5 * torch.randn(N, D, generator=g)
    y = torch.where(torch.rand(N, generator=g) < 0.5, y, -1)
    return x, y


def _check(part, whole, lo, hi):
    """The sharded result equals the single-process rows (to the rounding of another summation order)."""
    assert part.iterations == whole.iterations
    torch.testing.assert_close(part.raw_scores, whole.raw_scores[lo:hi], rtol=1e-4, atol=1e-6)
    assert float((part.labels != whole.labels[lo:hi]).float().mean()) < 1e-3


def _traffic(run):
    """Per iteration: all-reduce calls and bytes of this rank, halo bytes it receives (from the difference
    of a ITERS // 2 and an ITERS iteration run, so the set-up collectives cancel)."""
    from pysd.distributed import _comm

    real_reduce, real_exchange, log = dist.all_reduce, _comm.exchange, []

    def all_reduce(t, *args, **kwargs):
        log.append(("reduce", t.numel() * t.element_size()))
        return real_reduce(t, *args, **kwargs)

    def exchange(group, sends, recvs, tag=0):
        log.append(("halo", sum(t.numel() * t.element_size() for t in recvs if t is not None)))
        return real_exchange(group, sends, recvs, tag)

    totals = []
    dist.all_reduce, _comm.exchange = all_reduce, exchange
    try:
        for iters in (ITERS // 2, ITERS):
            del log[:]
            run(iters)
            totals.append([sum(1 for k, _ in log if k == "reduce"), sum(b for k, b in log if k == "reduce"),
                           sum(b for k, b in log if k == "halo")])
    finally:
        dist.all_reduce, _comm.exchange = real_reduce, real_exchange
    return [(b - a) / (ITERS - ITERS // 2) for a, b in zip(*totals)]


def _slowest(times):
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _solver(solver, graph, whole, y, lo, hi, world):
    """(times of the distributed op, times of pysd.propagate or None, traffic per iteration) for one solver."""
    import pysd

    def part(iters=ITERS):
        return pysd.distributed.propagate(graph, y[lo:hi], num_classes=C, max_iter=iters, tol=0.0, solver=solver)

    def single():
        return pysd.propagate(whole, y, num_classes=C, max_iter=ITERS, tol=0.0, solver=solver)

    _check(part(), single(), lo, hi)
    calls, reduce_bytes, halo_bytes = _traffic(part)
    halo_bytes = _sum(halo_bytes)  # all ranks
    if world == 1:
        times = paired({"distributed": part, "single": single}, REPS)
        return times["distributed"], times["single"], (calls, reduce_bytes, halo_bytes)
    times = []
    for _ in range(REPS):
        dist.barrier()
        t0 = time.perf_counter()
        part()
        times.append(time.perf_counter() - t0)
    return _slowest(times), None, (calls, reduce_bytes, halo_bytes)


def _sum(value):
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def _worker(rank, world, port, out):
    sys.path.insert(0, ROOT)
    import pysd

    torch.set_num_threads(max(1, CORES // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    x, y = _data()
    lo, hi = rank * N // world, (rank + 1) * N // world
    dist.barrier()
    t0 = time.perf_counter()
    graph = pysd.distributed.knn_graph(x[lo:hi], K)
    graph_s = _slowest([time.perf_counter() - t0])[0]
    t0 = time.perf_counter()
    whole = pysd.knn_graph(x, K)  # the single-process reference (and, on one rank, its time)
    single_graph_s = time.perf_counter() - t0
    results = {s: _solver(s, graph, whole, y, lo, hi, world) for s in ("cg", "iterate")}
    if rank == 0:
        out.put((graph_s, single_graph_s, results))
    dist.barrier()
    dist.destroy_process_group()


def _entry(times, **extra):
    """A results row as ``record`` writes it: the median, the min-max spread and the number of rounds."""
    return {"seconds": statistics.median(times), "min_max_ms": f"{min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}",
            "rounds": len(times), **extra}


@pytest.mark.parametrize("world", [1, 2])
def test_sharded_graph_and_propagation(benchmark, world):
    res = {}
    benchmark.pedantic(lambda: res.update(out=spawn_ranks(_worker, world)), rounds=1, iterations=1)
    graph_s, single_graph_s, results = res["out"]
    tag = f"{world} rank{'s' if world > 1 else ''}"
    group = f"distributed knn_graph N={N} d={D} k={K}"
    RESULTS[group][tag] = {"seconds": graph_s}
    if world == 1:
        RESULTS[group]["pysd.knn_graph"] = {"seconds": single_graph_s}
    for solver, (part, single, (calls, reduce_bytes, halo_bytes)) in results.items():
        group = f"distributed propagate {solver} {ITERS} it N={N} C={C}"
        traffic = dict(allreduce_per_iter=calls, allreduce_B_per_iter=int(reduce_bytes),
                       halo_MB_per_iter=round(halo_bytes / 1e6, 3),
                       allgather_MB_per_iter=round((world - 1) * N * C * 4 / 1e6, 2))
        print(f"\n[{group}] {tag}: {spread([t * 1e3 for t in part])} ms; per iteration {calls:g} all-reduces "
              f"({reduce_bytes:g} B), halo {halo_bytes / 1e6:.3f} MB")
        if single is None:
            RESULTS[group][tag] = _entry(part, **traffic)
            continue
        ratio = spread([a / b for a, b in zip(part, single)])
        record_paired(group, {tag: part, "pysd.propagate": single}, (tag,),
                      **{k: {tag: v} for k, v in traffic.items()}, time_vs_single={tag: ratio})
        print(f"  pysd.propagate: {spread([t * 1e3 for t in single])} ms; distributed / single, pair by "
              f"pair: {ratio}")
