"""pysd.fused_linear_kd_loss equals kd_loss(x @ W.T + b, ...) for every teacher form and option,
and never holds an (N, V) tensor."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pysd


def materialised(x, w, b, teacher, y, *, teacher_weight=None, teacher_bias=None, logit_softcap=None, chunk_size=None,
                 **kw):
    """The same loss through full logits (float64 autograd for the head)."""
    z = x @ w.T + (0 if b is None else b)
    if logit_softcap:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    if teacher_weight is not None:
        t = teacher @ teacher_weight.T + (0 if teacher_bias is None else teacher_bias)
        if logit_softcap:
            t = logit_softcap * torch.tanh(t / logit_softcap)
        v, vt = w.shape[0], t.shape[-1]
        t = t[..., :v] if vt >= v else torch.cat([t, t.new_full((*t.shape[:-1], v - vt), -torch.inf)], -1)
        teacher = t.detach()
    return pysd.kd_loss(z, teacher, y, **kw)


def both(x, w, b, teacher, y, **kw):
    out = []
    for fn in (pysd.fused_linear_kd_loss, materialised):
        args = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        if fn is pysd.fused_linear_kd_loss:
            loss = fn(args[0], args[1], teacher, y, student_bias=args[2], **kw)
        else:
            loss = fn(args[0], args[1], args[2], teacher, y, **kw)
        (loss.sum() if loss.dim() else loss).backward()
        out.append((loss.detach(), [a.grad for a in args if a is not None]))
    (la, ga), (lb, gb) = out
    torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-10)
    for a, c in zip(ga, gb):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-10)


def inputs(n, h, v, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, dtype=torch.float64, generator=g)
    w = torch.randn(v, h, dtype=torch.float64, generator=g) / h ** 0.5 * 3
    b = torch.randn(v, dtype=torch.float64, generator=g)
    y = torch.randint(0, v, (n,), generator=g)
    if n > 2:
        y[1] = -100
    return g, x, w, b, y


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["dense", "sparse", "hidden"]), n=st.integers(1, 7), v=st.integers(1, 19),
       div=st.sampled_from(["fkl", "rkl", "jsd"]), reduction=st.sampled_from(["mean", "sum", "batchmean", "none"]),
       rows=st.integers(1, 8), cols=st.integers(1, 20), cap=st.sampled_from([None, 2.0]),
       hard=st.sampled_from([0.0, 0.5]), temp=st.sampled_from([1.0, 2.0]), bias=st.booleans(), seed=st.integers(0, 999))
def test_equals_materialised(kind, n, v, div, reduction, rows, cols, cap, hard, temp, bias, seed):
    g, x, w, b, y = inputs(n, 5, v, seed)
    kw = dict(divergence=div, reduction=reduction, hard_weight=hard, temperature=temp, logit_softcap=cap,
              label_smoothing=0.1, weight=torch.rand(n, dtype=torch.float64, generator=g))
    if kind == "sparse":
        tail = "renormalize" if div == "jsd" else "uniform"
        teacher = pysd.topk_teacher(torch.randn(n, v, dtype=torch.float64, generator=g), min(3, v), tail=tail)
        kw["chunk_size"] = (rows, cols)
    elif kind == "dense":
        teacher = torch.randn(n, v, dtype=torch.float64, generator=g)
        kw["chunk_size"] = rows
    else:
        teacher = torch.randn(n, 4, dtype=torch.float64, generator=g)
        # a smaller teacher vocabulary gives classes of teacher probability 0: rkl is infinite there
        lo = 0 if div == "rkl" or v == 1 else -1
        vt = v + int(torch.randint(lo, 3, (1,), generator=g))
        kw.update(teacher_weight=torch.randn(vt, 4, dtype=torch.float64, generator=g), chunk_size=rows)
    both(x, w, b if bias else None, teacher, y, **kw)


@pytest.mark.parametrize("n", [1, 339, 340, 341, 1024, 2048, 5000])
def test_default_chunks_fill_the_budget_in_equal_parts(n):
    """chunk_size=None: the fewest chunks whose buffers fit DEFAULT_BUDGET, split evenly (no small last GEMM)."""
    from pysd.ops.fused_linear_kd_loss import DEFAULT_BUDGET, _chunk_plan

    v = vt = 128256
    per_row = v * 12 + vt * 4
    rows, cols = _chunk_plan(None, n, v, vt, 4)
    chunks = -(-n // rows)
    assert cols == v and rows * per_row <= DEFAULT_BUDGET
    assert chunks == -(-n // (DEFAULT_BUDGET // per_row))  # as few chunks as the budget allows
    assert n - (chunks - 1) * rows >= rows - chunks + 1  # the last chunk is (nearly) as large as the others


def test_all_rows_ignored_and_no_target():
    _, x, w, b, y = inputs(4, 3, 6, 0)
    t = torch.randn(4, 6, dtype=torch.float64)
    xx, ww, bb = (a.clone().requires_grad_() for a in (x, w, b))
    loss = pysd.fused_linear_kd_loss(xx, ww, t, torch.full((4,), -100), student_bias=bb, hard_weight=0.5)
    loss.backward()
    assert loss.item() == 0.0 and not xx.grad.any() and not ww.grad.any() and not bb.grad.any()
    both(x, w, b, t, None, chunk_size=3)


@pytest.mark.parametrize("kind", ["dense", "sparse", "hidden"])
def test_gradcheck(backend, kind):
    _, x, w, b, y = inputs(4, 3, 7, 1)
    if kind == "sparse":
        t, extra = pysd.topk_teacher(torch.randn(4, 7, dtype=torch.float64), 3, tail="bucket"), dict(chunk_size=(3, 4))
    elif kind == "dense":
        t, extra = torch.randn(4, 7, dtype=torch.float64), dict(chunk_size=3)
    else:
        t, extra = torch.randn(4, 2, dtype=torch.float64), dict(teacher_weight=torch.randn(8, 2, dtype=torch.float64))
    fn = lambda x_, w_, b_: pysd.fused_linear_kd_loss(x_, w_, t, y, student_bias=b_, hard_weight=0.5,  # noqa: E731
                                                      divergence="jsd", logit_softcap=3.0, **extra)
    assert torch.autograd.gradcheck(fn, tuple(a.clone().requires_grad_() for a in (x, w, b)))


def test_bf16_and_module_and_accumulation():
    _, x, w, b, y = inputs(6, 8, 33, 2)
    t = pysd.topk_teacher(torch.randn(6, 33), 4)
    xb, wb = x.to(torch.bfloat16).requires_grad_(), w.to(torch.bfloat16).requires_grad_()
    module = pysd.nn.FusedLinearDistillationLoss(hard_weight=0.5, temperature=2.0, chunk_size=4)
    module(xb, wb, t, y).backward()
    module(xb, wb, t, y).backward()  # gradient accumulation adds
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    xr, wr = xb.detach().double().requires_grad_(), wb.detach().double().requires_grad_()
    ref = pysd.kd_loss(xr @ wr.T, t.to(dtype=torch.float64), y, hard_weight=0.5, temperature=2.0)
    (2 * ref).backward()
    torch.testing.assert_close(xb.grad.double(), xr.grad, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(wb.grad.double(), wr.grad, rtol=3e-2, atol=3e-2)


def test_compile_fullgraph_and_normalizer():
    _, x, w, b, y = inputs(5, 4, 9, 3)
    x, w = x.float(), w.float()
    t = torch.randn(5, 9)

    def step(x_, w_, t_, y_, norm):
        return pysd.fused_linear_kd_loss(x_, w_, t_, y_, hard_weight=0.5, normalizer=norm)

    norm = torch.tensor(7.0)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    a = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    c = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    step(*a, t, y, norm).backward()
    compiled(*c, t, y, norm).backward()
    torch.testing.assert_close(a[0].grad, c[0].grad)
    ref = pysd.kd_loss(x @ w.T, t, y, hard_weight=0.5, normalizer=norm)
    torch.testing.assert_close(step(x, w, t, y, norm), ref)


def test_errors():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    t = torch.randn(3, 5)
    with pytest.raises(ValueError, match="weight"):
        pysd.fused_linear_kd_loss(x, torch.randn(5, 3), t)
    with pytest.raises(ValueError, match="SparseTeacher"):
        pysd.fused_linear_kd_loss(x, w, t, chunk_size=(2, 2))
    with pytest.raises(ValueError, match="chunk_size"):
        pysd.fused_linear_kd_loss(x, w, t, chunk_size=0)
    with pytest.raises(ValueError, match="logit_softcap"):
        pysd.fused_linear_kd_loss(x, w, t, logit_softcap=-1.0)
    with pytest.raises(ValueError, match="teacher"):
        pysd.fused_linear_kd_loss(x, w, torch.randn(2, 5))


PEAK_SCRIPT = textwrap.dedent("""
    import gc, sys, torch, pysd
    def kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    n, h, v = 2048, 64, 32768
    torch.manual_seed(0)
    x = torch.randn(n, h, requires_grad=True)
    w = (torch.randn(v, h) / 8).requires_grad_()
    t = pysd.SparseTeacher(torch.randint(0, v, (n, 16)), torch.randn(n, 16).log_softmax(-1) - 1.0, tail="bucket")
    y = torch.randint(0, v, (n,))
    # warm up on the same path (several chunks, the CE term): first-use allocations of the BLAS and
    # allocator (~65 MiB here) are not the op's peak
    small = pysd.fused_linear_kd_loss(x[:256], w, t[:256], y[:256], hard_weight=0.5, chunk_size=128)
    small.backward()
    x.grad = w.grad = None
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    base = kb("VmRSS")
    pysd.fused_linear_kd_loss(x, w, t, y, hard_weight=0.5, chunk_size=128).backward()
    print((kb("VmHWM") - base) * 1024)
""")


def test_peak_memory_below_one_logits_tensor():
    """Resident-set growth of fwd+bwd at N x V = 2048 x 32768 stays below one (N, V) fp32 tensor (256 MiB),
    which the eager recipe needs several of.  The op itself needs the gradients of x and W (0.5 + 8 MiB)
    and a few 128 x V chunks (16 MiB each); measured 56-162 MiB here, the spread being glibc/torch
    allocator pages that are freed but not yet returned to the system."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, env=env, check=True)
    grew = int(out.stdout.strip().splitlines()[-1])
    one_logits = 2048 * 32768 * 4
    assert grew < one_logits, f"peak RSS grew by {grew / 2**20:.0f} MiB"
