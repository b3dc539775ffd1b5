"""fused_linear_kd_loss fwd+bwd, fp32: pysd against eager (materialised logits + loss) and
Liger-Kernel's LigerFusedLinearJSDLoss (its chunked loss on CPU through torch.compile;
beta=0 is forward KL).  Loss as Liger defines it: 0.5 CE + 0.5 KL(p_teacher || q_student),
T=1, mean over rows.  Teacher as hidden states + head weight, and as a SparseTeacher (k=64;
eager scatters it into a dense row; Liger has no sparse teacher).

Sizes N x H x V: quick 512 x 512 x 32000; PYSD_BENCH_FULL=1: 2048 x 1024 x 128256.
Peak = resident-set growth of one call in a fresh process.

    python -m pytest bench/bench_fused_linear_kd_loss.py -s
"""

import functools
import os

import pytest
import torch
import torch.nn.functional as F

import pysd
from conftest import FULL, paired, peak_rss, record_paired

K = 64
# PYSD_BENCH_LLM_ROWS overrides N of the full size (eager materialises ~6 (N, V) fp32 buffers)
SIZES = [(int(os.environ.get("PYSD_BENCH_LLM_ROWS", 2048)), 1024, 128256)] if FULL else [(512, 512, 32000)]
ROUNDS = 3


def liger_reason():
    """None if Liger's chunked JSD loss can run here, else why not."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss  # noqa: F401
    except Exception as exc:  # not installed (bench extra) or broken
        return f"liger-kernel not importable ({type(exc).__name__}: {exc})"
    return None


@functools.lru_cache(None)
def _liger():
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    return LigerFusedLinearJSDLoss(weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.0, temperature=1.0)


def make_inputs(n, h, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    w = torch.randn(v, h, generator=g) / h ** 0.5 * 2
    ht = torch.randn(n, h, generator=g)
    wt = torch.randn(v, h, generator=g) / h ** 0.5 * 2
    y = torch.randint(0, v, (n,), generator=g)
    return x, w, ht, wt, y


def eager_hidden(x, w, ht, wt, y):
    z = x @ w.T
    with torch.no_grad():
        lt = F.log_softmax(ht @ wt.T, -1)
    kl = F.kl_div(F.log_softmax(z, -1), lt, reduction="batchmean", log_target=True)
    return 0.5 * F.cross_entropy(z, y) + 0.5 * kl


def eager_sparse(x, w, ids, vals, y):
    z = x @ w.T
    p = torch.zeros_like(z).scatter(-1, ids, torch.softmax(vals, -1))
    kl = (torch.xlogy(p, p) - p * F.log_softmax(z, -1)).sum() / z.shape[0]
    return 0.5 * F.cross_entropy(z, y) + 0.5 * kl


OPTS = dict(hard_weight=0.5, soft_weight=0.5, scale_t2=False)


def make_step(impl, n, h, v):
    x, w, ht, wt, y = make_inputs(n, h, v)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    teacher = impl.endswith("sparse")
    st = pysd.topk_teacher(ht @ wt.T, K) if teacher else None
    loss = {
        "eager": lambda: eager_hidden(xs, ws, ht, wt, y),
        "liger": lambda: _liger()(xs, ws, ht, wt, y),
        "pysd-cpp": lambda: pysd.fused_linear_kd_loss(xs, ws, ht, y, teacher_weight=wt, **OPTS),
        "eager-sparse": lambda: eager_sparse(xs, ws, st.indices if st else None, st.values if st else None, y),
        "pysd-cpp-sparse": lambda: pysd.fused_linear_kd_loss(xs, ws, st, y, **OPTS),
    }[impl]

    def step():
        xs.grad = ws.grad = None
        out = loss()
        out.backward()
        return out.detach(), xs.grad, ws.grad

    return step


def _check(steps, ref, names, rtol):
    for name in names:
        loss, gx, gw = steps[name]()
        torch.testing.assert_close(loss, ref[0], rtol=rtol, atol=1e-5)
        torch.testing.assert_close(gx, ref[1], rtol=rtol, atol=1e-5)
        torch.testing.assert_close(gw, ref[2], rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("n,h,v", SIZES, ids=[f"{n}x{h}x{v}" for n, h, v in SIZES])
def test_fused_linear_hidden_teacher(n, h, v):
    why = liger_reason()
    impls = ["eager", "pysd-cpp"] + ([] if why else ["liger"])
    steps = {i: make_step(i, n, h, v) for i in impls}
    _check(steps, steps["eager"](), impls[1:], 2e-4)
    times = paired(steps, ROUNDS)
    peaks = {i: round(peak_rss("bench_fused_linear_kd_loss", i, n, h, v) / 2**20, 1) for i in impls}
    group = f"fused_linear_kd_loss fwd+bwd {n}x{h}x{v} fp32 hidden teacher"
    record_paired(group, times, ["pysd-cpp"], peak_MiB=peaks)
    if why:
        print(f"\nLiger-Kernel not compared: {why}")


@pytest.mark.parametrize("n,h,v", SIZES, ids=[f"{n}x{h}x{v}" for n, h, v in SIZES])
def test_fused_linear_sparse_teacher(n, h, v):
    impls = ["eager-sparse", "pysd-cpp-sparse"]
    steps = {i: make_step(i, n, h, v) for i in impls}
    _check(steps, steps["eager-sparse"](), impls[1:], 2e-4)
    times = paired(steps, ROUNDS)
    peaks = {i: round(peak_rss("bench_fused_linear_kd_loss", i, n, h, v) / 2**20, 1) for i in impls}
    record_paired(f"fused_linear_kd_loss fwd+bwd {n}x{h}x{v} fp32 sparse teacher k={K}", times, ["pysd-cpp-sparse"],
                  peak_MiB=peaks)
