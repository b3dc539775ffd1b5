"""kd_loss fwd+bwd: pysd backends vs PyTorch eager and torch.compile (same run).

Config (the design targets): fp32, T=4, hard_weight=0.5, fkl, N x C in {4096 x 1000, 1024 x 32000}.
Quick mode runs 4096 x 1000 and 256 x 32000; PYSD_BENCH_FULL=1 runs the headline sizes.
Reports time, ratios, effective bandwidth 3*N*C*4 B / time against the measured copy
bandwidth, and peak extra memory in units of one (N, C) fp32 buffer.

    python -m pytest bench/bench_kd_loss.py            # quick
    PYSD_BENCH_FULL=1 python -m pytest bench/bench_kd_loss.py
"""

import functools
import os

import pytest
import torch
import torch.nn.functional as F

import pysd
from conftest import FULL, paired, peak_rss, record, record_paired, spread

T = 4.0
HARD = 0.5
SIZES = [(4096, 1000), (1024, 32000)] if FULL else [(4096, 1000), (256, 32000)]
IMPLS = ["eager", "compile", "pysd-cpp", "pysd-numba"]


def make_inputs(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * 3, torch.randn(n, c, generator=g) * 3,
            torch.randint(0, c, (n,), generator=g))


def eager_loss(s, t, y):
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True)
    return HARD * F.cross_entropy(s, y) + kl * T * T


def pysd_loss(backend, s, t, y):
    os.environ["PYSD_BACKEND"] = backend
    try:
        return pysd.kd_loss(s, t, y, temperature=T, hard_weight=HARD, reduction="batchmean")
    finally:
        del os.environ["PYSD_BACKEND"]


@functools.lru_cache(None)
def _compiled():
    return torch.compile(eager_loss)


def step_fn(impl):
    loss = {"eager": eager_loss, "compile": lambda s, t, y: _compiled()(s, t, y),
            "pysd-cpp": functools.partial(pysd_loss, "cpp"),
            "pysd-numba": functools.partial(pysd_loss, "numba")}[impl]

    def step(x, t, y):
        x.grad = None
        loss(x, t, y).backward()
        return x.grad

    return step


def make_step(impl, n, c):
    """A zero-argument fwd+bwd step on fresh inputs (for ``peak_memory.py``)."""
    s, t, y = make_inputs(n, c)
    x, step = s.clone().requires_grad_(), step_fn(impl)
    return lambda: step(x, t, y)


def peak_extra_buffers(impl, n, c):
    return round(peak_rss("bench_kd_loss", impl, n, c) / (n * c * 4), 2)


@pytest.mark.parametrize("n,c", SIZES, ids=[f"{n}x{c}" for n, c in SIZES])
@pytest.mark.parametrize("impl", IMPLS)
def test_kd_loss_fwd_bwd(benchmark, copy_gbs, impl, n, c):
    s, t, y = make_inputs(n, c)
    step = step_fn(impl)
    x = s.clone().requires_grad_()
    ref_x = s.clone().requires_grad_()
    eager_loss(ref_x, t, y).backward()
    grad = step(x, t, y)  # correctness before timing (also warms up JIT / compile)
    torch.testing.assert_close(grad, ref_x.grad, rtol=1e-4, atol=1e-7)
    benchmark.pedantic(step, args=(x, t, y), rounds=5 if n * c > 4e6 else 10, warmup_rounds=1)
    secs = benchmark.stats.stats.min
    gbs = 3 * n * c * 4 / secs / 1e9
    record(f"kd_loss fwd+bwd {n}x{c} fp32 T=4 hard=0.5", impl, benchmark,
           eff_GBps=round(gbs, 1), pct_copy_bw=round(100 * gbs / copy_gbs, 1),
           # a fresh interpreter per measurement: quick mode measures the first size only (same ratio)
           peak_extra_NxC=peak_extra_buffers(impl, n, c) if FULL or (n, c) == SIZES[0] else "full mode")


@pytest.mark.parametrize("n,c", SIZES, ids=[f"{n}x{c}" for n, c in SIZES])
def test_backends_vs_eager_paired(n, c):
    """Both CPU backends and eager interleaved, 6 rounds in this process: ratios round by round
    (targets: numba >= 2x eager at every size, cpp >= 10x eager at 1024 x 32000)."""
    s, t, y = make_inputs(n, c)
    steps = {k: step_fn(k) for k in ("eager", "pysd-cpp", "pysd-numba")}
    xs = {k: s.clone().requires_grad_() for k in steps}
    ref = steps["eager"](xs["eager"], t, y).clone()
    for k in ("pysd-cpp", "pysd-numba"):
        torch.testing.assert_close(steps[k](xs[k], t, y), ref, rtol=1e-4, atol=1e-7)
    times = paired({k: functools.partial(fn, xs[k], t, y) for k, fn in steps.items()})
    record_paired(f"kd_loss fwd+bwd {n}x{c} fp32 T=4 hard=0.5, paired", times, ["pysd-cpp", "pysd-numba"])
    print(f"\nkd_loss {n}x{c} fwd+bwd, 6 paired rounds, load {os.getloadavg()[0]:.1f}: "
          + ", ".join(f"{k} ms {spread([v * 1e3 for v in ts])}" for k, ts in times.items()) + "; speed-up over eager: "
          + ", ".join(f"{k} {spread([e / p for e, p in zip(times['eager'], times[k])])}" for k in steps if k != "eager"))
