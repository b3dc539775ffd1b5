"""pysd.distributed.fused_linear_kd_loss with the head split over the vocabulary: 1 vs 2 gloo ranks on the
CPU, and the bytes it communicates against the all-gather recipe.

    python -m pytest bench/bench_distributed_vocab.py -s                      # quick: N=256, H=256, V=16384
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_distributed_vocab.py -s    # N=2048, H=1024, V=128256

Each run spawns the ranks once (the 2 cores split evenly over them).  In every rank: first a correctness
check (the loss and this rank's weight gradient against the single-process ``pysd.fused_linear_kd_loss``
on the full head, on the first rows), then forward + backward steps with the teacher as hidden states
(teacher head sharded too) and as a SparseTeacher (k=64, uniform tail), interleaved round by round
(``paired``), timed after a barrier; a step's time is the slowest rank's.  The 1-rank run also times the
single-process op.  Bytes are the payloads of the data collectives each rank issues per step (counted by
wrapping ``torch.distributed``; on 2 ranks a ring all-reduce receives its payload once), the per-row
statistics apart from the ``(N, H)`` all-reduce of the input gradient that any column-parallel head does,
against the all-gather recipe: gathering the student's and the teacher's float32 logits shards,
``2 V (P-1)/P * 4`` bytes received per row and rank.
"""

import os
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from conftest import RESULTS, paired, paired_ratio, spread, spawn_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.environ.get("PYSD_BENCH_FULL") == "1"
N, H, V, K = (2048, 1024, 128256, 64) if FULL else (256, 256, 16384, 64)
REPS, CORES, CHECK_ROWS = (3 if FULL else 5), 2, 64


def _data():
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(N, H, generator=g), torch.randn(N, H, generator=g)
    w, wt = torch.randn(V, H, generator=g) / H ** 0.5, torch.randn(V, H, generator=g) / H ** 0.5
    y = torch.randint(0, V, (N,), generator=g)
    ids = torch.randint(0, V, (N, K), generator=g)
    vals = torch.log_softmax(torch.randn(N, K, generator=g), 1) - 0.5  # 1 - e^-0.5 of the mass in the tail
    return x, h, w, wt, y, ids, vals


class _Counter:
    """Bytes of the tensors this rank hands to all_reduce / all-gathers into a tensor: the per-row
    statistics, and apart from them the ``(N, H)`` input gradient's all-reduce in backward (which a
    column-parallel head has in any recipe)."""

    def __init__(self):
        self.bytes, self.input_grad = 0, 0
        gather = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
        self._orig = (dist.all_reduce, getattr(dist, gather))

        def all_reduce(t, *a, **k):
            if t.shape == (N, H):
                self.input_grad += t.numel() * t.element_size()
            else:
                self.bytes += t.numel() * t.element_size()
            return self._orig[0](t, *a, **k)

        def all_gather(out, t, *a, **k):
            self.bytes += out.numel() * out.element_size()
            return self._orig[1](out, t, *a, **k)

        dist.all_reduce = all_reduce
        setattr(dist, gather, all_gather)


def _check(pysd, data, lo, hi):
    """The distributed loss and weight gradient equal the single-process op on the first rows."""
    x, h, w, wt, y, ids, vals = (t[:CHECK_ROWS] if t.shape[0] == N else t for t in data)
    wp = w[lo:hi].clone().requires_grad_()
    out = pysd.distributed.fused_linear_kd_loss(x, wp, h, y, vocab_start=lo, teacher_weight=wt[lo:hi])
    out.backward()
    wf = w.clone().requires_grad_()
    ref = pysd.fused_linear_kd_loss(x, wf, h, y, teacher_weight=wt)
    ref.backward()
    assert abs(float(out) - float(ref)) <= 1e-4 * abs(float(ref)), (float(out), float(ref))
    torch.testing.assert_close(wp.grad, wf.grad[lo:hi], rtol=1e-4, atol=1e-6)


def _steps(pysd, data, lo, hi, world, counter):
    x, h, w, wt, y, ids, vals = data
    st = pysd.SparseTeacher(ids, vals, "logprobs", "uniform")
    wp, wtp = w[lo:hi].clone().requires_grad_(), wt[lo:hi].clone()
    xr = x.clone().requires_grad_()

    def step(teacher, **kw):
        def run():
            dist.barrier()
            pysd.distributed.fused_linear_kd_loss(xr, wp, teacher, y, vocab_start=lo, **kw).backward()
            dist.barrier()
        return run

    fns = {"hidden": step(h, teacher_weight=wtp), "sparse k=64": step(st)}
    if world == 1:
        fns["single-process"] = lambda: pysd.fused_linear_kd_loss(xr, wp, h, y, teacher_weight=wtp).backward()
    sent = {}
    for name, fn in fns.items():  # warm-up, and the bytes of one step
        before = (counter.bytes, counter.input_grad)
        fn()
        sent[name] = (counter.bytes - before[0], counter.input_grad - before[1])
    return paired(fns, REPS), sent


def _worker(rank, world, port, out):
    sys.path.insert(0, ROOT)
    import pysd

    torch.set_num_threads(max(1, CORES // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    data = _data()
    lo, hi = rank * V // world, (rank + 1) * V // world
    _check(pysd, data, lo, hi)
    counter = _Counter()
    times, sent = _steps(pysd, data, lo, hi, world, counter)
    slowest = {k: torch.tensor(v, dtype=torch.float64) for k, v in times.items()}
    for t in slowest.values():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        out.put(({k: v.tolist() for k, v in slowest.items()}, sent))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2])
def test_vocab_parallel_fused_linear(benchmark, world):
    res = {}
    benchmark.pedantic(lambda: res.update(out=spawn_ranks(_worker, world)), rounds=1, iterations=1)
    times, sent = res["out"]
    group = f"distributed fused_linear_kd_loss N={N} H={H} V={V} fwd+bwd"
    gather_row = 2 * V * 4 * (world - 1) / world
    for name, ts in times.items():
        tag = f"{name} {world} rank{'s' if world > 1 else ''}" if name != "single-process" else "pysd single-process"
        extra = {"spread_s": spread(ts)}
        if name == "hidden" and "single-process" in times:  # the same teacher, interleaved round by round
            extra["paired_vs_single_process"] = paired_ratio(times, "single-process", name)
        if name in sent and name != "single-process" and world > 1:
            stats, grad_x = sent[name]
            extra.update(stats_bytes_per_row=round(stats / N, 1), stats_MB_per_step=round(stats / 1e6, 3),
                         input_grad_MB_per_step=round(grad_x / 1e6, 2), allgather_bytes_per_row=round(gather_row),
                         allgather_MB_per_step=round(gather_row * N / 1e6, 1))
        RESULTS[group][tag] = {"seconds": sorted(ts)[len(ts) // 2], **extra}
        print(f"{group} | {tag}: {spread(ts)} s {extra}")
