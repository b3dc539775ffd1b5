"""topk_teacher (one pass: log-sum-exp + streaming top-k) against torch.topk + log_softmax.

Sizes: N x V, k=64 — quick 512 x 32000; PYSD_BENCH_FULL=1: 4096 x 128256.

    python -m pytest bench/bench_topk_teacher.py -s
"""

import pytest
import torch

import pysd
from conftest import FULL, paired, peak_rss, record_paired

K = 64
SIZES = [(4096, 128256)] if FULL else [(512, 32000)]
ROUNDS = 5


def eager(x):
    vals, ids = torch.topk(x, K, dim=-1)
    return ids, vals - torch.logsumexp(x, -1, keepdim=True)


def make_step(impl, n, v):
    x = torch.randn(n, v, generator=torch.Generator().manual_seed(0)) * 3
    if impl == "eager":
        return lambda: eager(x)
    return lambda: (lambda st: (st.indices, st.values))(pysd.topk_teacher(x, K))


@pytest.mark.parametrize("n,v", SIZES, ids=[f"{n}x{v}" for n, v in SIZES])
def test_topk_teacher(n, v):
    steps = {i: make_step(i, n, v) for i in ("eager", "pysd-cpp")}
    (ia, va), (ib, vb) = steps["eager"](), steps["pysd-cpp"]()
    x = torch.randn(n, v, generator=torch.Generator().manual_seed(0)) * 3  # make_step's logits
    # the same selected values (torch.topk orders exact ties arbitrarily; pysd by lower id)
    assert torch.equal(x.gather(-1, ia), x.gather(-1, ib))
    torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-5)
    times = paired(steps, ROUNDS)
    peaks = {i: round(peak_rss("bench_topk_teacher", i, n, v) / 2**20, 1) for i in steps}
    record_paired(f"topk_teacher {n}x{v} k={K} fp32", times, ["pysd-cpp"], peak_MiB=peaks)
