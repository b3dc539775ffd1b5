"""pysd.distributed on this machine: 1 vs 2 gloo ranks on the CPU.

    python -m pytest bench/bench_distributed.py -s                      # quick: N=20k, d=64, k=10, C=20
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_distributed.py -s    # N=100k, d=128, k=10, C=100

Each run spawns the ranks once (threads split evenly over the 2 cores) and times, inside the ranks and
after a barrier, the sharded kNN graph and 20 CG iterations of the sharded propagation (the slowest
rank's time).  Bytes are those all ranks receive per propagation iteration through the halo exchange,
against an all-gather of the (N, C) float32 scores.  The pytest-benchmark time includes starting the
ranks; the table below reports the in-rank times, and the single-process ops on the 1-rank run.
"""

import os
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from conftest import RESULTS, spawn_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.environ.get("PYSD_BENCH_FULL") == "1"
N, D, K, C = (100_000, 128, 10, 100) if FULL else (5_000, 64, 10, 20)
ITERS, CORES = 20, 2


def _data():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=1)
    y = torch.randint(0, C, (N,), generator=g)
    x = centres[y] + 0.6 * 4 / D ** 0.5 * torch.randn(N, D, generator=g)
    y = torch.where(torch.rand(N, generator=g) < 0.5, y, -1)
    return x, y


def _worker(rank, world, port, out):
    sys.path.insert(0, ROOT)
    import pysd
    from pysd.distributed.propagate import _ShardOperator

    torch.set_num_threads(max(1, CORES // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    x, y = _data()
    lo, hi = rank * N // world, (rank + 1) * N // world
    dist.barrier()
    t0 = time.perf_counter()
    graph = pysd.distributed.knn_graph(x[lo:hi], K)
    t1 = time.perf_counter()
    pysd.distributed.propagate(graph, y[lo:hi], num_classes=C, max_iter=ITERS, tol=0.0)
    t2 = time.perf_counter()
    offsets = torch.tensor([0] + [(r + 1) * N // world - r * N // world for r in range(world)]).cumsum(0)
    halo = _ShardOperator(graph, offsets, None).halo
    stats = torch.tensor([t1 - t0, t2 - t1, 0.0, 0.0], dtype=torch.float64)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    sent = torch.tensor([halo.bytes_per_gather(C * 4), (N - (hi - lo)) * C * 4], dtype=torch.float64)
    dist.all_reduce(sent)
    single = (0.0, 0.0)
    if world == 1:
        t0 = time.perf_counter()
        whole = pysd.knn_graph(x, K)
        t1 = time.perf_counter()
        pysd.propagate(whole, y, num_classes=C, max_iter=ITERS, tol=0.0)
        single = (t1 - t0, time.perf_counter() - t1)
    if rank == 0:
        out.put((float(stats[0]), float(stats[1]), int(sent[0]), int(sent[1]), single))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2])
def test_sharded_graph_and_propagation(benchmark, world):
    res = {}
    benchmark.pedantic(lambda: res.update(out=spawn_ranks(_worker, world)), rounds=1, iterations=1)
    graph_s, prop_s, halo_b, gather_b, single = res["out"]
    tag = f"{world} rank{'s' if world > 1 else ''}"
    extra = dict(halo_MB_per_iter=round(halo_b / 1e6, 2), allgather_MB_per_iter=round(gather_b / 1e6, 2))
    RESULTS[f"distributed knn_graph N={N} d={D} k={K}"][tag] = {"seconds": graph_s}
    RESULTS[f"distributed propagate cg {ITERS} it N={N} C={C}"][tag] = {"seconds": prop_s, **extra}
    if world == 1:
        RESULTS[f"distributed knn_graph N={N} d={D} k={K}"]["pysd.knn_graph"] = {"seconds": single[0]}
        RESULTS[f"distributed propagate cg {ITERS} it N={N} C={C}"]["pysd.propagate"] = {"seconds": single[1]}
