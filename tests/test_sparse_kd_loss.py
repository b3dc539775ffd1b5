"""pysd.kd_loss with a SparseTeacher on every CPU backend, against a float64 reference written
here from the definitions (teacher atoms built row by row in Python)."""

import itertools
import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import pysd
from pysd.ops import sparse_kd_loss as skd

from conftest import requires_cuda

TAILS = ["renormalize", "bucket", "uniform"]
DIVS = ["fkl", "rkl", "jsd"]
FORMATS = ["logprobs", "probs", "logits"]


def teacher_atoms(ids, vals, fmt, tail, t_gen, temperature, vocab):
    """[(probability, list of student classes)] of one row, from the SparseTeacher docstring."""
    probs = {}
    for i, v in zip(ids.tolist(), vals.tolist()):
        if i < 0:
            continue
        w = v if fmt == "probs" else math.exp(v)  # logits: unnormalized, only ratios matter
        probs[i] = probs.get(i, 0.0) + w
    r = t_gen / temperature
    atoms = [(p ** r if p > 0 else 0.0, [i]) for i, p in probs.items()]
    missing = max(0.0, 1.0 - sum(probs.values())) if fmt != "logits" else 0.0
    rest = [c for c in range(vocab) if c not in probs]
    if tail == "bucket" and rest:
        atoms.append((missing ** r if missing > 0 else 0.0, rest))
    elif tail == "uniform":
        atoms += [((missing / len(rest)) ** r if missing > 0 else 0.0, [c]) for c in rest]
    else:
        atoms += [(0.0, [c]) for c in rest]
    z = sum(a for a, _ in atoms)
    return [(a / z if z > 0 else 0.0, cls) for a, cls in atoms], z > 0


def divergence(atoms, lq, div, beta):
    """D over the atoms; the student's atom masses in log space (logsumexp of log q)."""
    total = lq.new_zeros(())
    for p, cls in atoms:
        lqa = torch.logsumexp(lq[cls], 0)
        qa = lqa.exp()
        p = torch.tensor(p, dtype=torch.float64)
        if div == "fkl":
            total = total + (p * (p.log() - lqa) if p > 0 else 0.0)
        elif div == "rkl":
            total = total + (qa * (lqa - p.log()) if qa > 0 else 0.0)
        else:
            lm = torch.logaddexp(math.log(beta) + p.log(), math.log(1 - beta) + lqa)
            total = total + beta * (p * (p.log() - lm) if p > 0 else 0.0) + \
                ((1 - beta) * qa * (lqa - lm) if qa > 0 else 0.0)
    return total


def reference(s, teacher, y=None, *, divergence_="fkl", beta=0.5, temperature=1.0, scale_t2=True, hard_weight=0.0,
              soft_weight=1.0, label_smoothing=0.0, ignore_index=-100, weight=None, reduction="mean"):
    v = s.shape[-1]
    s2 = s.detach().double().reshape(-1, v).requires_grad_()
    ids = teacher.indices.reshape(-1, teacher.k)
    vals = teacher.values.double().reshape(-1, teacher.k)
    div = divergence_
    if div == "jsd" and beta in (0.0, 1.0):
        div = "fkl" if beta == 0 else "rkl"
    coef = soft_weight * (temperature ** 2 if scale_t2 else 1.0)
    rows = []
    for i in range(s2.shape[0]):
        yi = None if y is None else int(y.reshape(-1)[i])
        if yi is not None and yi == ignore_index:
            rows.append(s2.new_zeros(()))
            continue
        row = s2.new_zeros(())
        if yi is not None and hard_weight:
            lq1 = F.log_softmax(s2[i], -1)
            row = row + hard_weight * ((1 - label_smoothing) * -lq1[yi] + label_smoothing * -lq1.mean())
        atoms, has = teacher_atoms(ids[i], vals[i], teacher.format, teacher.tail, teacher.temperature, temperature, v)
        if has and coef:
            row = row + coef * divergence(atoms, F.log_softmax(s2[i] / temperature, -1), div, beta)
        rows.append(row * (1.0 if weight is None else float(weight.reshape(-1)[i])))
    rows = torch.stack(rows)
    if reduction == "none":
        out = rows.reshape(s.shape[:-1])
        total = out.sum()
    else:
        if reduction == "sum":
            den = 1.0
        elif reduction == "batchmean":
            den = float(rows.shape[0])
        else:
            valid = [1.0 if y is None or int(t) != ignore_index else 0.0 for t in
                     (y.reshape(-1) if y is not None else range(rows.shape[0]))]
            wts = [1.0] * len(valid) if weight is None else weight.reshape(-1).tolist()
            den = sum(a * b for a, b in zip(valid, wts))
        out = rows.sum() / den if den > 0 else rows.sum() * 0
        total = out
    (g,) = torch.autograd.grad(total, s2)
    return out.detach(), g.reshape(s.shape)


def run(s, teacher, y=None, **kw):
    x = s.detach().clone().requires_grad_()
    loss = pysd.kd_loss(x, teacher, y, **kw)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), x.grad


def make_sparse(shape, k, fmt, tail, t_gen=1.0, gen=None, pad=False, dup=False, dtype=torch.float64):
    v = shape[-1]
    logits = torch.randn(shape, dtype=torch.float64, generator=gen) * 2
    st_ = pysd.topk_teacher(logits, k, temperature=t_gen, format=fmt if fmt != "logits" else "logits",
                            tail=tail)
    ids, vals = st_.indices.clone(), st_.values.clone()
    if pad and k > 1:
        ids.reshape(-1, k)[0, -1] = -1
    if dup and k > 2:
        ids.reshape(-1, k)[-1, 2] = ids.reshape(-1, k)[-1, 1]
    return pysd.SparseTeacher(ids, vals.to(dtype), fmt, tail, t_gen)


def valid_combos():
    for tail, div, fmt in itertools.product(TAILS, DIVS, FORMATS):
        if fmt == "logits" and tail != "renormalize":
            continue
        if div == "rkl" and tail == "renormalize":
            continue
        yield tail, div, fmt


@pytest.mark.parametrize("tail,div,fmt", list(valid_combos()))
def test_matches_formulas(backend, tail, div, fmt):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{tail}{div}{fmt}".encode()))
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=gen))]  # noqa: E731
    shape = pick([(5, 11), (2, 3, 13), (4, 29)])
    v = shape[-1]
    k = pick([1, 3, 5])
    t = make_sparse(shape, k, fmt, tail, t_gen=pick([1.0, 2.0]), gen=gen, pad=True, dup=True)
    s = torch.randn(shape, dtype=torch.float64, generator=gen) * 3
    y = torch.randint(0, v, shape[:-1], generator=gen)
    y.view(-1)[1] = -100
    kw = dict(divergence_=div, temperature=pick([1.0, 0.5, 3.0]), reduction=pick(["mean", "sum", "batchmean", "none"]),
              hard_weight=pick([0.0, 0.5]), label_smoothing=pick([0.0, 0.1]), beta=pick([0.5, 0.2]),
              scale_t2=pick([True, False]), weight=pick([None, torch.rand(shape[:-1], dtype=torch.float64,
                                                                          generator=gen)]))
    ref_loss, ref_grad = reference(s, t, y, **kw)
    kw["divergence"] = kw.pop("divergence_")
    loss, grad = run(s, t, y, **kw)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("tail", TAILS)
def test_gradcheck(backend, tail):
    t = make_sparse((3, 7), 3, "logprobs", tail, t_gen=2.0)
    y = torch.tensor([1, -100, 4])
    div = "jsd" if tail == "renormalize" else "rkl"
    for d in ("fkl", div):
        fn = lambda x: pysd.kd_loss(x, t, y, divergence=d, temperature=1.5, hard_weight=0.3,  # noqa: E731
                                    label_smoothing=0.1)
        assert torch.autograd.gradcheck(fn, (torch.randn(3, 7, dtype=torch.float64, requires_grad=True),))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), v=st.integers(1, 17), temp=st.sampled_from([1.0, 2.0]), div=st.sampled_from(["fkl", "jsd"]),
       seed=st.integers(0, 2**16))
def test_full_k_renormalize_equals_dense(n, v, temp, div, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, dtype=torch.float64, generator=g) * 2
    lt = torch.randn(n, v, dtype=torch.float64, generator=g).log_softmax(-1)
    perm = torch.stack([torch.randperm(v, generator=g) for _ in range(n)])
    t = pysd.SparseTeacher(perm, lt.gather(1, perm), "logprobs", "renormalize")
    a, ga = run(s, t, divergence=div, temperature=temp)
    b, gb = run(s, lt, teacher_format="logprobs", divergence=div, temperature=temp)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), v=st.integers(3, 17), k=st.integers(1, 3), div=st.sampled_from(["fkl", "jsd"]),
       seed=st.integers(0, 2**16))
def test_bucket_with_all_mass_in_topk_equals_renormalize(n, v, k, div, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, dtype=torch.float64, generator=g) * 2
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    p = torch.rand(n, k, dtype=torch.float64, generator=g) + 0.1
    p = p / p.sum(-1, keepdim=True)
    # stored at the loss temperature: re-tempering would lift a rounding-level missing mass
    a = run(s, pysd.SparseTeacher(ids, p, "probs", "bucket", 1.5), divergence=div, temperature=1.5)
    b = run(s, pysd.SparseTeacher(ids, p, "probs", "renormalize", 1.5), divergence=div, temperature=1.5)
    torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-12)


def test_padding_and_duplicates_equal_merged_teacher(backend):
    s = torch.randn(2, 9, dtype=torch.float64)
    merged = pysd.SparseTeacher(torch.tensor([[4, 1], [0, 8]]), torch.tensor([[0.5, 0.2], [0.3, 0.6]]).double(),
                                "probs", "bucket")
    split = pysd.SparseTeacher(torch.tensor([[4, -1, 1, 4], [0, 8, -1, -1]], dtype=torch.int32),
                               torch.tensor([[0.25, 0.9, 0.2, 0.25], [0.3, 0.6, 0.0, 0.0]]).double(), "probs", "bucket")
    for div in DIVS:
        a, b = run(s, merged, divergence=div), run(s, split, divergence=div)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


def test_rows_without_teacher_and_all_ignored(backend):
    s = torch.randn(3, 6, dtype=torch.float64)
    t = pysd.SparseTeacher(torch.full((3, 2), -1), torch.zeros(3, 2, dtype=torch.float64), "logprobs")
    loss, grad = run(s, t)
    assert loss.item() == 0.0 and not grad.any()  # no entries: no soft term under renormalize
    t2 = make_sparse((3, 6), 2, "logprobs", "bucket")
    loss, grad = run(s, t2, torch.full((3,), -100))
    assert loss.item() == 0.0 and not grad.any()
    loss, grad = run(s[:0], pysd.SparseTeacher(t2.indices[:0], t2.values[:0]))
    assert loss.item() == 0.0 and grad.shape == (0, 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype):
    t = make_sparse((4, 301), 8, "logprobs", "uniform", dtype=torch.float32)
    s = (torch.randn(4, 301) * 2).to(dtype)
    y = torch.randint(0, 301, (4,))
    loss, grad = run(s, t, y, divergence="jsd", temperature=2.0, hard_weight=0.5)
    assert loss.dtype == dtype and grad.dtype == dtype
    ref_loss, ref_grad = reference(s, t, y, divergence_="jsd", temperature=2.0, hard_weight=0.5)
    tol = dict(rtol=2e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-3)
    torch.testing.assert_close(loss.double(), ref_loss, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)


def test_extreme_logits(backend):
    s = torch.tensor([[1e4, -1e4, 0.0, 3.0, -3.0]], dtype=torch.float64)
    t = pysd.SparseTeacher(torch.tensor([[1, 3]]), torch.tensor([[-0.1, -5.0]], dtype=torch.float64), "logprobs",
                           "uniform")
    for div in DIVS:
        loss, grad = run(s, t, divergence=div)
        ref_loss, ref_grad = reference(s, t, divergence_=div)
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(grad, ref_grad)


def test_errors():
    s = torch.randn(2, 5)
    t = pysd.SparseTeacher(torch.tensor([[0, 1], [2, 3]]), torch.randn(2, 2).log_softmax(-1))
    with pytest.raises(ValueError, match="rkl"):
        pysd.kd_loss(s, t, divergence="rkl")
    with pytest.raises(ValueError, match="logits"):
        pysd.SparseTeacher(t.indices, t.values, "logits", "bucket")
    with pytest.raises(ValueError, match="outside"):
        pysd.kd_loss(s, pysd.SparseTeacher(torch.tensor([[0, 5], [1, 2]]), t.values))
    with pytest.raises(ValueError, match="rows"):
        pysd.kd_loss(torch.randn(3, 5), t)
    with pytest.raises(TypeError, match="indices"):
        pysd.SparseTeacher(t.indices.float(), t.values)
    with pytest.raises(ValueError, match="negative"):
        pysd.kd_loss(s, pysd.SparseTeacher(t.indices, -t.values.exp(), "probs"))


def test_opcheck_and_compile():
    t = make_sparse((4, 9), 3, "logprobs", "bucket", dtype=torch.float32)
    s = torch.randn(4, 9, requires_grad=True)
    plan = skd.sparse_kd_plan(t, 9, None, dtype=torch.float32)
    o = plan.options
    args = (s, plan.ids, plan.vals, None, None, plan.grad_scale, o["format"], o["tail"], o["retemper"],
            o["divergence"], o["beta"], o["temperature"], o["soft_coef"], o["hard_weight"], o["label_smoothing"],
            o["ignore_index"], 1, True)
    # the aot_dispatch checks are left out: backward's eager shortcut reads the upstream gradient
    # (as kd_loss's); torch.compile itself is exercised below
    torch.library.opcheck(torch.ops.pysd.sparse_kd_loss.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))

    def step(x, ids, vals, y):
        return pysd.kd_loss(x, pysd.SparseTeacher(ids, vals, "logprobs", "bucket"), y, hard_weight=0.5)

    y = torch.randint(0, 9, (4,))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x1, x2 = s.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    step(x1, t.indices, t.values, y).backward()
    compiled(x2, t.indices, t.values, y).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("tail,div", [("renormalize", "jsd"), ("bucket", "rkl"), ("uniform", "jsd"),
                                      ("uniform", "rkl"), ("uniform", "fkl")])
def test_piecewise_equals_fused(tail, div):
    """stats over pieces (some merged with merge_stats), finalize, apply per piece == the fused kernel."""
    n, v = 5, 37
    t = make_sparse((n, v), 4, "logprobs", tail, t_gen=2.0, pad=True, dup=True)
    s = torch.randn(n, v, dtype=torch.float64) * 3
    y = torch.randint(0, v, (n,))
    y[2] = -100
    kw = dict(divergence=div, temperature=1.5, hard_weight=0.4, label_smoothing=0.1, reduction="sum")
    loss, grad = run(s, t, y, **kw)
    plan = skd.sparse_kd_plan(t, v, y, dtype=torch.float64, **kw)
    cuts = [(0, 10), (10, 11), (11, 30), (30, 37)]
    stats, gathered = plan.new_stats()
    other, other_g = plan.new_stats()
    for i, (a, b) in enumerate(cuts):
        skd.sparse_kd_stats(plan, s[:, a:b], a, stats if i % 2 else other, gathered if i % 2 else other_g)
    stats = skd.merge_stats(stats, other, 1.5)
    gathered = gathered + other_g
    if plan.needs_jsd_tail:
        for a, b in cuts:
            skd.sparse_kd_jsd_tail(plan, s[:, a:b], a, stats)
    rows, coef, delta = skd.sparse_kd_finalize(plan, stats, gathered)
    torch.testing.assert_close(rows.sum() * plan.grad_scale, loss)
    g = torch.cat([skd.sparse_kd_apply(plan, s[:, a:b], a, coef, delta) for a, b in cuts], 1)
    torch.testing.assert_close(g, grad)


def test_piecewise_label_smoothing_over_a_piece_of_minus_inf_logits():
    """label smoothing puts mass on every class, so a class whose logit is -inf makes the loss inf:
    a piece holding only such classes must say so as the fused kernel does (its sum of logits is -inf)."""
    n, v = 3, 20
    t = make_sparse((n, v), 4, "logprobs", "renormalize")
    ids = t.indices.clone()
    ids[ids >= 10] = -1  # the teacher puts mass on finite classes only
    t = pysd.SparseTeacher(ids, t.values, "logprobs", "renormalize")
    s = torch.randn(n, v, dtype=torch.float64) * 3
    s[:, 10:] = -math.inf
    y = torch.randint(0, 10, (n,))
    for eps in (0.0, 0.1):
        kw = dict(hard_weight=0.4, label_smoothing=eps, reduction="none")
        loss, _ = run(s, t, y, **kw)
        plan = skd.sparse_kd_plan(t, v, y, dtype=torch.float64, **kw)
        stats, gathered = plan.new_stats()
        for a, b in [(0, 10), (10, 20)]:
            skd.sparse_kd_stats(plan, s[:, a:b], a, stats, gathered)
        rows, _, _ = skd.sparse_kd_finalize(plan, stats, gathered)
        assert bool(torch.isinf(loss).all()) == (eps > 0)
        torch.testing.assert_close(rows, loss)


@requires_cuda
@pytest.mark.cuda
def test_cuda_matches_cpu():
    t = make_sparse((6, 1001), 16, "logprobs", "uniform", dtype=torch.float32)
    s = torch.randn(6, 1001) * 2
    y = torch.randint(0, 1001, (6,))
    for div in DIVS:
        a = run(s, t, y, divergence=div, temperature=2.0, hard_weight=0.5)
        b = run(s.cuda(), t.to("cuda"), y.cuda(), divergence=div, temperature=2.0, hard_weight=0.5)
        torch.testing.assert_close(b[0].cpu(), a[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b[1].cpu(), a[1], rtol=1e-4, atol=1e-6)
