"""pysd.distributed on 2 and 3 gloo ranks on the CPU, spawned with torch.multiprocessing: every result
equals the single-process op on the concatenated rows."""

import faulthandler
import os
import socket
import sys
import traceback
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pysd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, errors):
    sys.path.insert(0, ROOT)  # the worktree's pysd, not an installed one
    faulthandler.enable()  # a native crash leaves its Python stack in the captured stderr
    torch.set_num_threads(1)
    torch.manual_seed(0)  # identical model initialisation on every rank
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        fn(rank, world, *args)
        # no rank tears its connections down while a peer may still be finishing a transfer
        dist.barrier()
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()


def spawn(fn, world, *args, attempts=3):
    """Runs ``fn(rank, world, *args)`` on ``world`` gloo ranks; fails with the ranks' tracebacks.

    A rank that raises fails the test.  A run in which a rank was *killed by a signal* is started again
    (up to ``attempts`` runs): on this 2-core CI box a freshly spawned child now and then
    aborts in start-up ("terminate called without an active exception", before pysd._C is even loaded),
    which says nothing about pysd; the faulthandler output of such a run stays in the captured stderr.
    """
    ctx = mp.get_context("spawn")
    for attempt in range(attempts):
        errors = ctx.SimpleQueue()
        crashed = None
        try:
            mp.spawn(_worker, args=(world, _free_port(), fn, args, errors), nprocs=world, join=True)
        except mp.ProcessRaisedException:
            pass
        except mp.ProcessExitedException as exc:
            crashed = exc
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        if crashed is not None and attempt + 1 < attempts:
            continue  # the peers' errors of a crashed run are its echo (lost connections), not findings
        assert not failures, "\n".join(f"rank {r}:\n{tb}" for r, tb in sorted(failures))
        assert crashed is None, f"a rank was killed by a signal in {attempts} runs in a row: {crashed}"
        return


def _split(n, world, sizes=None):
    sizes = sizes or [n // world + (r < n % world) for r in range(world)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(starts[r]), int(starts[r + 1])) for r in range(world)]


def _features(n=240, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, d, generator=g) * 3
    return centres[torch.arange(n) % 4] + torch.randn(n, d, generator=g)


def _labels(n=240, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    noisy = torch.rand(n, generator=g) < 0.2
    y = torch.where(noisy, torch.randint(0, 4, (n,), generator=g), y)
    return torch.where(torch.rand(n, generator=g) < 0.5, y, -1)


# --------------------------------------------------------------------------- workers


def _graph_worker(rank, world, cases):
    x = _features()
    for sizes, options in cases:
        # the fused search (cpp: a self-join of the local block, then cross searches) and the torch merge
        # the numba / torch backends fall back to
        os.environ["PYSD_BACKEND"] = options.pop("backend", "cpp")
        whole = pysd.knn_graph(x, 8, **options)
        lo, hi = _split(x.shape[0], world, sizes)[rank]
        part = pysd.distributed.knn_graph(x[lo:hi], 8, **options)
        assert (part.row_start, part.num_rows, part.num_nodes) == (lo, hi - lo, x.shape[0])
        assert torch.equal(part.knn_indices, whole.knn_indices[lo:hi])
        # l2 similarities carry cancellation error of order eps |x|^2 (|x|^2 ~ 200 here)
        torch.testing.assert_close(part.knn_similarities, whole.knn_similarities[lo:hi], rtol=1e-5, atol=1e-3)
        ref = whole.to_scipy()[lo:hi]
        got = part.to_scipy()
        assert np.array_equal(got.indptr, ref.indptr) and np.array_equal(got.indices, ref.indices)
        np.testing.assert_allclose(got.data, ref.data, rtol=1e-4, atol=1e-6)


def _propagate_worker(rank, world, cases):
    from pysd._cpp import propagate as steps

    stepped, calls = steps.stepped, []
    steps.stepped = lambda *a, **k: calls.append(1) or stepped(*a, **k)  # which solve ran
    x, y = _features(), _labels()
    graph32 = pysd.knn_graph(x, 8)
    for sizes, solver, options in cases:
        options = dict(options)
        backend = os.environ["PYSD_BACKEND"] = options.pop("backend", "cpp")
        graph = graph32.to(dtype=options.pop("dtype", torch.float32))
        kwargs = {"solver": solver, "max_iter": 30, "tol": 1e-5, **options}
        whole = pysd.propagate(graph, y, **kwargs)
        lo, hi = _split(x.shape[0], world, sizes)[rank]
        shard = pysd.distributed.ShardedGraph.from_graph(graph, lo, hi)
        del calls[:]
        part = pysd.distributed.propagate(shard, y[lo:hi], **kwargs)
        assert len(calls) == (backend == "cpp")
        assert part.raw_scores.dtype == graph.dtype
        assert part.iterations == whole.iterations and part.flips == whole.flips
        if world == 1 and backend == "cpp":  # the same kernels in the same block order as the fused call
            for name in ("raw_scores", "scores", "oos_scores", "labels", "confidence", "entropy_weight", "residual",
                         "class_weight", "issues"):
                assert torch.equal(getattr(part, name), getattr(whole, name)), name
        for name in ("raw_scores", "scores", "oos_scores", "confidence", "entropy_weight"):
            torch.testing.assert_close(getattr(part, name), getattr(whole, name)[lo:hi], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(part.residual, whole.residual, rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(part.class_weight, whole.class_weight)
        assert torch.equal(part.labels, whole.labels[lo:hi])
        mine = whole.issues[(whole.issues >= lo) & (whole.issues < hi)]
        assert sorted(part.issues.tolist()) == sorted(mine.tolist())


def _pipeline_worker(rank, world):
    """Sharded graph straight into sharded propagation, with a rank holding no rows."""
    x, y = _features(), _labels()
    whole = pysd.propagate(pysd.knn_graph(x, 8, metric="l2", symmetrize="max"), y, solver="iterate", max_iter=15)
    lo, hi = _split(x.shape[0], world, [150, 0, 90])[rank]
    part = pysd.distributed.propagate(pysd.distributed.knn_graph(x[lo:hi], 8, metric="l2", symmetrize="max"),
                                      y[lo:hi], solver="iterate", max_iter=15)
    torch.testing.assert_close(part.scores, whole.scores[lo:hi], rtol=1e-4, atol=1e-5)
    assert part.iterations == whole.iterations


def _loss_worker(rank, world):
    """DDP (which averages gradients) with normalizer global / world equals one process over all rows."""
    g = torch.Generator().manual_seed(0)
    n, d, c = 60, 5, 7
    x, teacher = torch.randn(n, d, generator=g), torch.randn(n, c, generator=g)
    target = torch.randint(0, c, (n,), generator=g)
    target[torch.rand(n, generator=g) < 0.3] = -100
    target[:20] = -100  # rank 0's rows are mostly ignored: the ranks' counts differ a lot
    weight = torch.rand(n, generator=g)
    lin = torch.nn.Linear(d, c)
    kw = dict(hard_weight=0.5, temperature=2.0)
    ref = torch.nn.Linear(d, c)
    ref.load_state_dict(lin.state_dict())
    pysd.kd_loss(ref(x), teacher, target, weight=weight, **kw).backward()
    ddp = torch.nn.parallel.DistributedDataParallel(lin)
    lo, hi = _split(n, world)[rank]
    norm = pysd.distributed.global_normalizer(target[lo:hi], weight=weight[lo:hi]) / world
    torch.testing.assert_close(norm * world, (weight * (target != -100)).sum().double())
    pysd.kd_loss(ddp(x[lo:hi]), teacher[lo:hi], target[lo:hi], weight=weight[lo:hi], normalizer=norm,
                 **kw).backward()
    for a, b in zip(lin.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    count = pysd.distributed.global_normalizer(target[lo:hi])
    assert count.dtype == torch.float64 and float(count) == float((target != -100).sum())


def _mismatch_worker(rank, world):
    x = _features(60)[rank * 20:(rank + 1) * 20]
    with pytest.raises(ValueError, match="configuration differs across ranks"):
        pysd.distributed.knn_graph(x, 5 + rank)
    bad = x.clone()
    if rank == 1:
        bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="rank 1: knn_graph: features must be finite"):
        pysd.distributed.knn_graph(bad, 5)
    graph = pysd.distributed.knn_graph(x, 5)
    y = _labels(60)[rank * 20:(rank + 1) * 20]
    with pytest.raises(ValueError, match="configuration differs across ranks"):
        pysd.distributed.propagate(graph, y, num_classes=4, alpha=0.9 if rank else 0.99)
    # every rank raised at the same point: the group is still in step
    t = torch.ones(1)
    dist.all_reduce(t)
    assert float(t) == world


# --------------------------------------------------------------------------- tests
# One spawn per test (starting the ranks costs seconds); each runs several cases.


@pytest.mark.parametrize("world,cases", [
    (2, [(None, {}), ([0, 240], dict(metric="ip", power=1.0, normalize=None))]),
    (3, [([100, 0, 140], dict(metric="ip", power=1.0, symmetrize="max", normalize="rw")),
         ([7, 200, 33], dict(metric="l2", symmetrize="none", exclude_self=False, tile=(16, 24))),
         ([60, 60, 120], dict(backend="torch", tile=(32, 40))),
         ([0, 200, 40], dict(backend="numba", metric="l2", normalize="rw", tile=(16, 24)))]),
])
def test_knn_graph_matches_single_process(world, cases):
    spawn(_graph_worker, world, cases)


F64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("world,cases", [
    (1, [(None, "cg", {}), (None, "iterate", F64), (None, "cg", dict(tol=0.0, **F64)),
         (None, "iterate", dict(backend="torch"))]),
    (2, [(None, "cg", {}), ([31, 209], "iterate", {}), ([0, 240], "cg", F64), ([240, 0], "iterate", F64),
         ([120, 120], "cg", dict(backend="torch", **F64))]),
    (3, [([50, 0, 190], "cg", dict(class_mass_norm=False)), (None, "iterate", dict(num_classes=5)),
         ([7, 201, 32], "cg", dict(tol=0.0, **F64)), ([100, 140, 0], "iterate", dict(alpha=0.9, **F64)),
         ([0, 0, 240], "cg", dict(backend="numba"))]),
])
def test_propagate_matches_single_process(world, cases):
    """The C++ steps (default) and the reference solvers (numba / torch backends) over 1-3 ranks, uneven
    shards, ranks without rows, float32 and float64; on one rank the steps equal the fused call bit for bit."""
    spawn(_propagate_worker, world, cases)


def test_graph_into_propagate_with_an_empty_rank():
    spawn(_pipeline_worker, 3)


def test_ddp_gradients_with_global_normalizer():
    spawn(_loss_worker, 3)


def test_mismatch_raises_on_every_rank():
    spawn(_mismatch_worker, 3)


def _one_bad_rank_worker(rank, world):
    """Issue 10: a bad input on one rank only must raise ValueError on every rank (with that rank's message),
    never leave the others waiting in a collective; after each failure the group is still in step."""
    last = world - 1
    bad = rank == last

    def expect(match, call):
        with pytest.raises(ValueError, match=rf"pysd\.distributed\.\w+: rank {last}: {match}"):
            call()
        t = torch.ones(1)
        dist.all_reduce(t)  # every rank raised at the same point
        assert float(t) == world

    # global_normalizer: a float target (TypeError there) and a weight of the wrong length
    target = torch.tensor([0, 1, -100, 2])
    expect("global_normalizer: target must be an integer tensor",
           lambda: pysd.distributed.global_normalizer(target.float() if bad else target))
    expect("global_normalizer: weight has 3 elements",
           lambda: pysd.distributed.global_normalizer(target, weight=torch.ones(3 if bad else 4)))
    # knn_graph: strings, overflowing inner products
    n = 10
    x = _features(n * world)[rank * n:(rank + 1) * n]
    expect("knn_graph: features must hold numbers",
           lambda: pysd.distributed.knn_graph(np.array([["a"] * 16] * n) if bad else x, 3))
    expect("knn_graph: features are too large for metric='ip'",
           lambda: pysd.distributed.knn_graph(x * 1e30 if bad else x, 3, metric="ip"))
    # propagate: a malformed shard, a huge label, an error of another type (a meta-device weight)
    graph = pysd.distributed.knn_graph(x, 3)
    y = _labels(n * world)[rank * n:(rank + 1) * n].clone()
    y[0] = 1
    cols = graph.indices.clone()
    cols[0] = n * world + 5
    broken = pysd.distributed.ShardedGraph(graph.indptr, cols, graph.values, graph.row_start, graph.num_nodes)
    expect(r"propagate: local_graph: indices must be column ids in \[0, num_nodes=",
           lambda: pysd.distributed.propagate(broken if bad else graph, y))
    huge = y.clone()
    huge[1] = 10**12
    expect(r"propagate: labels \(largest label \+ 1\)=1000000000001 would need",
           lambda: pysd.distributed.propagate(graph, huge if bad else y))
    meta = torch.ones(n, device="meta")
    expect("propagate: NotImplementedError",
           lambda: pysd.distributed.propagate(graph, y, weights=meta if bad else None))
    ok = pysd.distributed.propagate(graph, y)  # and the valid call still works afterwards
    assert ok.labels.shape == (n,)


@pytest.mark.parametrize("world", [2, 3])
def test_bad_input_on_one_rank_raises_on_every_rank(world):
    spawn(_one_bad_rank_worker, world)
