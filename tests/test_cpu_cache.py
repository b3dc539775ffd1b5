"""pysd.cpu_cache: buffers are reused only once no tensor of them remains, the limit holds, and the
ops that draw from the cache return the same results while earlier results are still alive."""

import multiprocessing
import os
import subprocess
import sys
import threading

import pytest
import torch

import pysd
from pysd import cpu_cache

BIG = (1024, 1280)  # float32: 5 MiB, over cpu_cache.MIN_BYTES
GiB = 1 << 30


@pytest.fixture(autouse=True)
def fresh_cache():
    """Every test starts from an empty cache with a 1 GiB limit and leaves the limit it found."""
    before = pysd.cpu_cache_info()["limit_bytes"]
    pysd.set_cpu_cache_limit(GiB)
    pysd.empty_cpu_cache()
    yield
    pysd.set_cpu_cache_limit(before)


def test_a_freed_buffer_is_reused_and_aligned():
    a = cpu_cache.empty(BIG, torch.float32)
    ptr = a.data_ptr()
    assert ptr % cpu_cache.ALIGN == 0 and a.is_contiguous() and a.shape == BIG
    hits = pysd.cpu_cache_info()["hits"]
    del a
    b = cpu_cache.empty(BIG, torch.float32)
    assert b.data_ptr() == ptr
    assert pysd.cpu_cache_info()["hits"] == hits + 1


@pytest.mark.parametrize("hold", ["tensor", "view of a view", "storage", "autograd"])
def test_a_buffer_any_tensor_still_uses_is_never_handed_out(hold):
    a = cpu_cache.empty(BIG, torch.float32).fill_(7.0)
    if hold == "tensor":
        keep = a
    elif hold == "view of a view":
        keep = a[5:].t()[3:]
    elif hold == "storage":
        keep = a.untyped_storage()
    else:  # autograd saves an input of mul for the backward pass
        x = torch.ones(BIG, requires_grad=True)
        keep = (x * a).sum()
    ptr = a.data_ptr()
    del a
    b = cpu_cache.empty(BIG, torch.float32)
    assert b.data_ptr() != ptr
    info = pysd.cpu_cache_info()
    assert info["buffers"] == 2 and info["in_use_bytes"] == info["reserved_bytes"]
    b.fill_(-1.0)
    if hold == "autograd":
        keep.backward()
        assert torch.equal(x.grad, torch.full(BIG, 7.0))
    elif hold != "storage":
        assert bool((keep == 7.0).all())


def test_requests_below_min_bytes_or_off_the_cpu_bypass_the_cache():
    small = cpu_cache.empty((16, 16), torch.float32)
    meta = cpu_cache.empty(BIG, torch.float32, "meta")
    empty = cpu_cache.empty((0, 1 << 30), torch.float32)
    assert meta.device.type == "meta" and empty.shape == (0, 1 << 30) and small.shape == (16, 16)
    assert pysd.cpu_cache_info()["buffers"] == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16, torch.int64])
def test_every_dtype_gets_its_shape_and_can_be_written(dtype):
    t = cpu_cache.empty((3, 1 << 20), dtype)
    assert t.dtype == dtype and t.shape == (3, 1 << 20) and t.is_contiguous()
    t.fill_(3)
    assert int(t[2, -1]) == 3 and int(t[0, 0]) == 3


def test_best_fit_within_twice_the_request():
    a, b = cpu_cache.empty((6 << 20,), torch.uint8), cpu_cache.empty((20 << 20,), torch.uint8)
    pa, pb = a.data_ptr(), b.data_ptr()
    del a, b
    assert cpu_cache.empty((5 << 20,), torch.uint8).data_ptr() == pa  # the smaller buffer that fits
    c = cpu_cache.empty((12 << 20,), torch.uint8)
    assert c.data_ptr() == pb  # 20 MiB serves 12 MiB: less than half wasted
    del c
    d = cpu_cache.empty((9 << 20,), torch.uint8)
    assert d.data_ptr() != pb  # 20 MiB would waste more than half of it


def test_the_limit_caps_reserved_bytes_and_evicts_least_recently_used():
    pysd.set_cpu_cache_limit(3 * (8 << 20) + 3 * cpu_cache.ALIGN)
    bufs = [cpu_cache.empty((8 << 20,), torch.uint8) for _ in range(3)]
    over = cpu_cache.empty((8 << 20,), torch.uint8)  # no room: a plain tensor
    assert pysd.cpu_cache_info()["buffers"] == 3
    oldest, newest = bufs[0].data_ptr(), bufs[2].data_ptr()
    del bufs, over
    big = cpu_cache.empty((12 << 20,), torch.uint8)  # needs two idle buffers' room: the oldest go
    info = pysd.cpu_cache_info()
    assert info["buffers"] == 2 and info["reserved_bytes"] <= info["limit_bytes"]
    assert cpu_cache.empty((8 << 20,), torch.uint8).data_ptr() == newest != oldest
    del big


def test_lowering_the_limit_releases_idle_buffers_and_zero_turns_the_cache_off():
    keep = cpu_cache.empty(BIG, torch.float32)
    cpu_cache.empty(BIG, torch.float32)  # idle at once
    assert pysd.cpu_cache_info()["buffers"] == 2
    pysd.set_cpu_cache_limit(0)
    assert pysd.cpu_cache_info()["buffers"] == 1  # the one in use stays until it is freed
    del keep
    assert pysd.cpu_cache_info()["reserved_bytes"] == 0
    cpu_cache.empty(BIG, torch.float32)
    assert pysd.cpu_cache_info()["buffers"] == 0


def test_empty_cpu_cache_releases_only_idle_buffers():
    keep = cpu_cache.empty(BIG, torch.float32)
    freed = cpu_cache.empty((2048, 1280), torch.float32).nbytes
    released = pysd.empty_cpu_cache()
    assert freed <= released <= freed + cpu_cache.ALIGN
    assert pysd.cpu_cache_info()["buffers"] == 1
    del keep


@pytest.mark.parametrize("bad,err", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)])
def test_bad_limits_name_the_argument(bad, err):
    with pytest.raises(err, match="nbytes"):
        pysd.set_cpu_cache_limit(bad)


@pytest.mark.parametrize("value,ok", [("0", True), ("123456789", True), ("-5", False), ("4GB", False)])
def test_the_environment_variable_sets_the_default_limit(value, ok):
    code = "import pysd; print(pysd.cpu_cache_info()['limit_bytes'])"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, cpu_cache.ENV_VAR: value},
                         capture_output=True, text=True)
    if ok:
        assert run.returncode == 0 and int(run.stdout) == int(value)
    else:
        assert run.returncode != 0 and cpu_cache.ENV_VAR in run.stderr


def test_threads_never_share_a_live_buffer():
    errors = []

    def work(tag):
        for _ in range(40):
            t = cpu_cache.empty(BIG, torch.float32).fill_(tag)
            if not bool((t == tag).all()):
                errors.append(tag)
            del t  # else the rebinding holds two per thread

    threads = [threading.Thread(target=work, args=(float(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pysd.cpu_cache_info()["buffers"] <= 4


def _allocate_and_exit():
    t = cpu_cache.empty(BIG, torch.float32)
    t[0, 0] = 1.0  # one element: no OpenMP region in the forked child
    os._exit(0 if float(t[0, 0]) == 1.0 else 1)


def test_a_forked_child_allocates_though_a_parent_thread_held_the_lock():
    ctx = multiprocessing.get_context("fork")
    with cpu_cache._lock:  # as another thread of the parent could at the moment of fork
        child = ctx.Process(target=_allocate_and_exit)
        child.start()
    child.join(60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0


@pytest.mark.parametrize("sparse", [False, True], ids=["dense teacher", "sparse teacher"])
def test_a_pending_backward_keeps_its_gradient_through_later_calls(backend, sparse):
    """Two kd_loss forwards before either backward: the second must not take the first's gradient
    buffer (at this size both come from the cache)."""
    n, c = 300, 4096
    g = torch.Generator().manual_seed(1)
    s1, s2 = (torch.randn(n, c, generator=g).requires_grad_() for _ in range(2))
    t1, t2 = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    teach = (lambda t: pysd.topk_teacher(t, 8)) if sparse else (lambda t: t)
    loss1 = pysd.kd_loss(s1, teach(t1), reduction="batchmean")
    loss2 = pysd.kd_loss(s2, teach(t2), reduction="batchmean")
    loss2.backward()
    loss1.backward()
    for s, t in ((s1, t1), (s2, t2)):
        # forward KL at T = 1: d/ds = (softmax(s) - p) / N, with p the teacher (its top 8 renormalised)
        t = t.double()
        if sparse:
            top = t.topk(8, dim=-1)
            p = torch.zeros_like(t).scatter(-1, top.indices, torch.softmax(top.values, -1))
        else:
            p = torch.softmax(t, -1)
        expected = (torch.softmax(s.detach().double(), -1) - p) / n
        torch.testing.assert_close(s.grad, expected.float(), rtol=1e-4, atol=1e-8)


def test_propagation_results_stay_intact_through_a_second_solve(backend):
    n, c = 20000, 64  # (N, C) float32: 5 MiB per output
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 8, generator=g)
    graph = pysd.knn_graph(x, k=5)
    y1 = torch.randint(0, c, (n,), generator=g)
    y2 = torch.randint(0, c, (n,), generator=g)
    first = pysd.propagate(graph, y1, num_classes=c, solver="iterate", max_iter=5)
    kept = first.scores.clone()
    second = pysd.propagate(graph, y2, num_classes=c, solver="iterate", max_iter=5)
    assert torch.equal(first.scores, kept)
    assert not torch.equal(second.scores, kept)
