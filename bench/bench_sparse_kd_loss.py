"""kd_loss with a sparse top-k teacher, fwd+bwd: pysd against the peers' eager recipe (scatter
the top-k into a dense teacher, log_softmax, KL, backward) and torch.compile of it.

Sizes: N x V, k=64 — quick 512 x 32000; PYSD_BENCH_FULL=1: 4096 x 128256 (DESIGN.md).
Interleaved rounds; median paired ratio (min-max); peak RSS growth of one call in a fresh process.
The impls share one student leaf (2 GiB at the full size), so its gradient from the previous impl is
released before the clock starts: a step times its own loss and gradient, not another impl's free.

    python -m pytest bench/bench_sparse_kd_loss.py -s
"""

import functools
import os

import pytest
import torch
import torch.nn.functional as F

import pysd
from conftest import FULL, paired, peak_rss, record_paired

K = 64
# PYSD_BENCH_LLM_ROWS overrides N of the full size (the eager recipe needs ~8 (N, V) fp32 buffers)
SIZES = [(int(os.environ.get("PYSD_BENCH_LLM_ROWS", 4096)), 128256)] if FULL else [(512, 32000)]
ROUNDS = 3 if FULL else 5


@functools.lru_cache(None)
def make_inputs(n, v, seed=0):
    """The student leaf and the sparse teacher, shared by every impl: at 4096 x 128256 an (N, V) fp32
    tensor is 2 GiB, and a copy per impl (with its gradient) would not leave room for the eager peer."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, v, generator=g) * 2).requires_grad_()
    st = pysd.topk_teacher(torch.randn(n, v, generator=g) * 2, K)
    return s, st


def eager_loss(s, ids, vals):
    """The peers' recipe: the renormalized top-k scattered into a dense teacher row, KL(p || q)."""
    p = torch.zeros_like(s).scatter(-1, ids, torch.softmax(vals, -1))
    return (torch.xlogy(p, p) - p * F.log_softmax(s, -1)).sum() / s.shape[0]


@functools.lru_cache(None)
def _compiled():
    return torch.compile(eager_loss)


def make_step(impl, n, v):
    x, st = make_inputs(n, v)
    loss = {"eager": lambda: eager_loss(x, st.indices, st.values),
            "compile": lambda: _compiled()(x, st.indices, st.values),
            "pysd-cpp": lambda: pysd.kd_loss(x, st, reduction="batchmean")}[impl]

    def step():
        x.grad = None
        loss().backward()
        return x.grad

    return step


@pytest.mark.parametrize("n,v", SIZES, ids=[f"{n}x{v}" for n, v in SIZES])
def test_sparse_kd_loss(n, v):
    impls = ["eager", "compile", "pysd-cpp"]
    steps = {i: make_step(i, n, v) for i in impls}
    ref = steps["eager"]().clone()
    for i in impls[1:]:  # correctness before timing (also compiles)
        torch.testing.assert_close(steps[i](), ref, rtol=1e-4, atol=1e-7)
    del ref
    x = make_inputs(n, v)[0]
    times = paired(steps, ROUNDS, reset=lambda: setattr(x, "grad", None))
    peaks = {i: round(peak_rss("bench_sparse_kd_loss", i, n, v) / 2**20, 1) for i in impls}
    record_paired(f"sparse kd_loss fwd+bwd {n}x{v} k={K} fkl fp32", times, ["pysd-cpp"], peak_MiB=peaks)
