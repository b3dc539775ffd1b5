"""pysd.kd_loss on every CPU backend against the float64 torch reference."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import pysd
from pysd._ref import kd_loss as ref_kd

from conftest import CPU_BACKENDS, requires_cuda

FORMATS = ("logits", "probs", "logprobs")
DIVS = ("fkl", "rkl", "jsd")



def make_teacher(shape, fmt, dtype=torch.float64, scale=2.0, zeros=False):
    t = torch.randn(shape, dtype=torch.float64) * scale
    if fmt == "probs":
        t = t.softmax(-1)
        if zeros:  # refined targets: most classes exactly 0
            keep = t >= t.topk(min(2, shape[-1]), -1).values[..., -1:]
            t = torch.where(keep, t, torch.zeros_like(t))
            t = t / t.sum(-1, keepdim=True)
    elif fmt == "logprobs":
        t = t.log_softmax(-1)
    return t.to(dtype)


def reference(student, teacher=None, target=None, *, weight=None, normalizer=None, **kw):
    """Loss and d loss / d student in float64 from the pure-torch reference (formulas + autograd)."""
    s = student.detach().to(torch.float64).requires_grad_()
    t = None if teacher is None else teacher.detach().to(torch.float64)
    w = None if weight is None else weight.detach().to(torch.float64)
    z = None if normalizer is None else normalizer.detach().to(torch.float64)
    loss = ref_kd.kd_loss(s, t, target, weight=w, normalizer=z, **kw)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    return loss.detach(), grad


def run(student, *args, **kwargs):
    x = student.detach().clone().requires_grad_()
    loss = pysd.kd_loss(x, *args, **kwargs)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), x.grad


def assert_close(actual, expected, dtype):
    tol = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-4, 1e-5), torch.bfloat16: (3e-2, 3e-3),
           torch.float16: (1e-2, 1e-3)}[dtype]
    torch.testing.assert_close(actual.to(torch.float64), expected.to(torch.float64), rtol=tol[0], atol=tol[1])


GRID = list(itertools.product(DIVS, FORMATS, [1.0, 4.0, 0.5], ["mean", "sum", "batchmean", "none"]))


@pytest.mark.parametrize("divergence,teacher_format,temperature,reduction", GRID)
def test_grid_matches_reference(backend, divergence, teacher_format, temperature, reduction):
    gen = torch.Generator().manual_seed(hash((divergence, teacher_format, temperature, reduction)) % 2**31)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=gen))]  # noqa: E731
    shape = pick([(6, 7), (2, 3, 5), (9, 1000)])
    c = shape[-1]
    s = torch.randn(shape, dtype=torch.float64, generator=gen) * 3
    t = make_teacher(shape, teacher_format, zeros=pick([False, True]) and divergence != "rkl")
    y = torch.randint(0, c, shape[:-1], generator=gen)
    if pick([True, False]):
        y.view(-1)[::3] = -100
    kw = dict(teacher_format=teacher_format, divergence=divergence, temperature=temperature, reduction=reduction,
              hard_weight=pick([0.0, 0.5]), soft_weight=pick([1.0, 0.7]), label_smoothing=pick([0.0, 0.1]),
              beta=pick([0.5, 0.2]), scale_t2=pick([True, False]),
              weight=pick([None, torch.rand(shape[:-1], dtype=torch.float64, generator=gen)]))
    loss, grad = run(s, t, y, **kw)
    ref_loss, ref_grad = reference(s, t, y, **kw)
    assert_close(loss, ref_loss, torch.float64)
    assert_close(grad, ref_grad, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", list(DIVS))
def test_low_precision_inputs(backend, dtype, divergence):
    s = (torch.randn(5, 301) * 2).to(dtype)
    t = (torch.randn(5, 301) * 2).to(dtype)
    y = torch.randint(0, 301, (5,))
    kw = dict(divergence=divergence, temperature=2.0, hard_weight=0.5)
    loss, grad = run(s, t, y, **kw)
    assert loss.dtype == dtype and grad.dtype == dtype
    ref_loss, ref_grad = reference(s, t, y, **kw)  # the same rounded inputs, in float64
    assert_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype)


@pytest.mark.parametrize("temperature", [2.0, 3.0, 4.0, 5.0])
@pytest.mark.parametrize("teacher_format", ["logits", "logprobs", "probs"])
def test_float32_integer_temperature_with_a_hard_term(backend, teacher_format, temperature):
    """the hard CE's T = 1 softmax is the T-th power of the soft one's exponentials (compile-time for T = 2, 4
    with a logit teacher on the cpp backend, binary powering otherwise); rows wide enough to run several
    vector blocks, and one row far below the power's flush threshold."""
    s = torch.randn(4, 1003, dtype=torch.float64) * 3
    s[1, :500] -= 200.0
    t = make_teacher((4, 1003), teacher_format)
    y = torch.tensor([5, 7, 1002, 0])
    for div in DIVS:
        kw = dict(teacher_format=teacher_format, divergence=div, temperature=temperature, hard_weight=0.5)
        loss, grad = run(s.float(), t.float(), y, **kw)
        ref_loss, ref_grad = reference(s.float(), t.float(), y, **kw)
        assert_close(loss, ref_loss, torch.float32)
        assert_close(grad, ref_grad, torch.float32)


@pytest.mark.parametrize("c", [1, 3, 1000, 32001])
def test_odd_class_counts(backend, c):
    s = torch.randn(3, c) * 4
    t = torch.randn(3, c) * 4
    y = torch.randint(0, c, (3,))
    for div in DIVS:
        kw = dict(divergence=div, temperature=3.0, hard_weight=0.5, label_smoothing=0.1)
        loss, grad = run(s, t, y, **kw)
        ref_loss, ref_grad = reference(s, t, y, **kw)
        assert_close(loss, ref_loss, torch.float32)
        assert_close(grad, ref_grad, torch.float32)


def test_non_contiguous_rows(backend):
    wide = torch.randn(6, 40, dtype=torch.float64)
    s = wide[:, 3:20]               # row stride 40, unit column stride: no copy needed
    t = torch.randn(17, 6, dtype=torch.float64).t()  # column-major: copied
    y = torch.randint(0, 17, (6,))
    for div in DIVS:
        x = s.detach().clone()
        loss, grad = run(s, t, y, divergence=div, temperature=2.0, hard_weight=0.3)
        ref_loss, ref_grad = reference(x, t.contiguous(), y, divergence=div, temperature=2.0, hard_weight=0.3)
        assert_close(loss, ref_loss, torch.float64)
        assert_close(grad, ref_grad, torch.float64)
    # strided student that still requires grad: the gradient lands in the original layout
    leaf = wide.clone().requires_grad_()
    pysd.kd_loss(leaf[:, 3:20], t, y, hard_weight=1.0).backward()
    _, ref_grad = reference(wide[:, 3:20], t, y, hard_weight=1.0)
    assert_close(leaf.grad[:, 3:20], ref_grad, torch.float64)
    assert leaf.grad[:, :3].abs().max() == 0 and leaf.grad[:, 20:].abs().max() == 0


@pytest.mark.parametrize("divergence", list(DIVS))
def test_extreme_logits_and_tiny_temperature(backend, divergence):
    s = torch.randn(4, 50, dtype=torch.float64) * 1e4
    t = torch.randn(4, 50, dtype=torch.float64) * 1e4
    y = torch.randint(0, 50, (4,))
    for temperature in (0.05, 1.0, 10.0):
        kw = dict(divergence=divergence, temperature=temperature, hard_weight=0.5)
        loss, grad = run(s, t, y, **kw)
        ref_loss, ref_grad = reference(s, t, y, **kw)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-9)
        # float32: log-ratios of order 1e5 leave ~1e-7 * 1e5 absolute error in rkl/jsd terms
        loss, grad = run(s.float(), t.float(), y, **kw)
        ref_loss, ref_grad = reference(s.float(), t.float(), y, **kw)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-3)


def test_empty_and_all_ignored(backend):
    s = torch.randn(0, 5, requires_grad=True)
    for red in ("mean", "sum", "batchmean"):
        loss = pysd.kd_loss(s, torch.randn(0, 5), torch.zeros(0, dtype=torch.long), reduction=red)
        assert loss.shape == () and loss.item() == 0.0
    assert pysd.kd_loss(s, torch.randn(0, 5), reduction="none").shape == (0,)
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.full((4,), -100)
    loss = pysd.kd_loss(x, torch.randn(4, 5), y, hard_weight=1.0)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().max() == 0.0
    w = torch.zeros(4)
    x.grad = None
    loss = pysd.kd_loss(x, torch.randn(4, 5), torch.zeros(4, dtype=torch.long), weight=w, hard_weight=1.0)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(x.grad).any()


def test_pure_ce_and_pure_soft_match_torch(backend):
    s = torch.randn(8, 11, dtype=torch.float64)
    y = torch.randint(0, 11, (8,))
    y[2] = -100
    loss, grad = run(s, None, y, label_smoothing=0.2)
    x = s.clone().requires_grad_()
    ref = F.cross_entropy(x, y, label_smoothing=0.2, ignore_index=-100)
    ref.backward()
    assert_close(loss, ref.detach(), torch.float64)
    assert_close(grad, x.grad, torch.float64)
    t = torch.randn(8, 11, dtype=torch.float64)
    loss, grad = run(s, t, temperature=3.0, reduction="batchmean")
    x = s.clone().requires_grad_()
    ref = F.kl_div(F.log_softmax(x / 3, -1), F.log_softmax(t / 3, -1), reduction="batchmean", log_target=True) * 9
    ref.backward()
    assert_close(loss, ref.detach(), torch.float64)
    assert_close(grad, x.grad, torch.float64)


def test_normalizer_replaces_mean_denominator(backend):
    s = torch.randn(6, 9, dtype=torch.float64)
    t = torch.randn(6, 9, dtype=torch.float64)
    y = torch.randint(0, 9, (6,))
    y[0] = -100
    norm = torch.tensor(17.0, dtype=torch.float64)
    loss, grad = run(s, t, y, hard_weight=0.5, normalizer=norm)
    ref_loss, ref_grad = reference(s, t, y, hard_weight=0.5, reduction="sum")
    assert_close(loss, ref_loss / 17.0, torch.float64)
    assert_close(grad, ref_grad / 17.0, torch.float64)


def test_upstream_gradient_scaling(backend):
    s = torch.randn(5, 7, dtype=torch.float64)
    t = torch.randn(5, 7, dtype=torch.float64)
    x = s.clone().requires_grad_()
    (3.0 * pysd.kd_loss(x, t, temperature=2.0)).backward()
    _, ref_grad = reference(s, t, temperature=2.0)
    assert_close(x.grad, 3.0 * ref_grad, torch.float64)
    x.grad = None
    g = torch.rand(5, dtype=torch.float64)
    (pysd.kd_loss(x, t, reduction="none") * g).sum().backward()
    _, ref_rows = reference(s, t, reduction="none")
    xr = s.clone().requires_grad_()
    rows = reference(xr, t, reduction="none")[0]
    assert rows.shape == (5,)
    per_row = torch.stack([reference(s[i:i + 1], t[i:i + 1], reduction="sum")[1][0] for i in range(5)])
    assert_close(x.grad, per_row * g[:, None], torch.float64)


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("divergence,teacher_format", [("fkl", "logits"), ("rkl", "logprobs"), ("jsd", "probs"),
                                                        ("fkl", "probs")])
def test_gradcheck(monkeypatch, name, divergence, teacher_format):
    monkeypatch.setenv("PYSD_BACKEND", name)
    s = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = make_teacher((4, 6), teacher_format)
    y = torch.tensor([0, 5, -100, 2])
    w = torch.rand(4, dtype=torch.float64)
    for reduction in ("mean", "none"):
        fn = lambda x: pysd.kd_loss(x, t, y, teacher_format=teacher_format, divergence=divergence,  # noqa: E731
                                    temperature=1.7, hard_weight=0.4, label_smoothing=0.1, weight=w,
                                    reduction=reduction)
        assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-7)


def test_double_backward_is_an_error(backend):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = pysd.kd_loss(x, torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_no_grad_forward_matches(backend):
    s = torch.randn(5, 13)
    t = torch.randn(5, 13)
    with torch.no_grad():
        loss = pysd.kd_loss(s.requires_grad_(), t, divergence="jsd")
    assert_close(loss, reference(s, t, divergence="jsd")[0], torch.float32)


# ----------------------------------------------------------------------------- properties

logit_rows = st.integers(1, 6).flatmap(
    lambda n: st.integers(1, 40).flatmap(
        lambda c: st.tuples(st.just((n, c)), st.integers(0, 2**31 - 1), st.floats(0.1, 20.0))))


@given(case=logit_rows, divergence=st.sampled_from(list(DIVS)))
def test_identical_distributions_give_zero(case, divergence):
    (n, c), seed, temperature = case
    s = torch.randn((n, c), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 5
    for fmt, t in (("logits", s), ("logprobs", s.log_softmax(-1)), ("probs", (s / temperature).softmax(-1))):
        x = s.clone().requires_grad_()
        loss = pysd.kd_loss(x, t.clone(), teacher_format=fmt, divergence=divergence, temperature=temperature)
        loss.backward()
        assert abs(loss.item()) < 1e-9
        assert x.grad.abs().max().item() < 1e-9


@given(case=logit_rows, hard=st.sampled_from([0.0, 0.5]), divergence=st.sampled_from(list(DIVS)),
       beta=st.floats(0.0, 1.0))
def test_loss_is_non_negative(case, hard, divergence, beta):
    (n, c), seed, temperature = case
    g = torch.Generator().manual_seed(seed)
    s = torch.randn((n, c), generator=g, dtype=torch.float64) * 4
    t = torch.randn((n, c), generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, c, (n,), generator=g)
    rows = pysd.kd_loss(s, t, y, divergence=divergence, beta=beta, temperature=temperature, hard_weight=hard,
                        reduction="none")
    assert (rows >= -1e-12).all()


@given(case=logit_rows)
def test_beta_endpoints_are_fkl_and_rkl(case):
    (n, c), seed, temperature = case
    g = torch.Generator().manual_seed(seed)
    s = torch.randn((n, c), generator=g, dtype=torch.float64)
    t = torch.randn((n, c), generator=g, dtype=torch.float64)
    for beta, div in ((0.0, "fkl"), (1.0, "rkl")):
        a = pysd.kd_loss(s, t, divergence="jsd", beta=beta, temperature=temperature, reduction="none")
        b = pysd.kd_loss(s, t, divergence=div, temperature=temperature, reduction="none")
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the symmetric JSD is bounded by log 2 (without the T^2 factor)
    mid = pysd.kd_loss(s, t, divergence="jsd", beta=0.5, temperature=temperature, scale_t2=False, reduction="none")
    assert (mid <= math.log(2) + 1e-12).all()


@given(case=logit_rows, scale=st.floats(0.25, 4.0), divergence=st.sampled_from(list(DIVS)))
def test_temperature_scaling_invariances(case, scale, divergence):
    (n, c), seed, temperature = case
    g = torch.Generator().manual_seed(seed)
    s = torch.randn((n, c), generator=g, dtype=torch.float64) * 3
    t = torch.randn((n, c), generator=g, dtype=torch.float64) * 3
    kw = dict(divergence=divergence, reduction="none")
    scaled = pysd.kd_loss(s, t, temperature=temperature, **kw)
    unscaled = pysd.kd_loss(s, t, temperature=temperature, scale_t2=False, **kw)
    torch.testing.assert_close(scaled, unscaled * temperature ** 2, rtol=1e-10, atol=1e-12)
    # softmax(s/T) depends on s/T only: scaling logits and T together leaves the unscaled loss unchanged
    same = pysd.kd_loss(s * scale, t * scale, temperature=temperature * scale, scale_t2=False, **kw)
    torch.testing.assert_close(same, unscaled, rtol=1e-9, atol=1e-12)
    # with the T^2 factor, the gradient w.r.t. the logits scales like the logits: d L(as, at, aT) / d(as) = a dL/ds
    x = s.clone().requires_grad_()
    pysd.kd_loss(x, t, temperature=temperature, divergence=divergence, reduction="sum").backward()
    x2 = (s * scale).clone().requires_grad_()
    pysd.kd_loss(x2, t * scale, temperature=temperature * scale, divergence=divergence, reduction="sum").backward()
    torch.testing.assert_close(x2.grad / scale, x.grad, rtol=1e-8, atol=1e-11)


# ----------------------------------------------------------------------------- module, compile, errors


def test_module_wrapper(backend):
    mod = pysd.nn.DistillationLoss(temperature=2.0, hard_weight=0.5, divergence="jsd")
    s = torch.randn(4, 9, dtype=torch.float64)
    t = torch.randn(4, 9, dtype=torch.float64)
    y = torch.randint(0, 9, (4,))
    assert_close(mod(s, t, y), pysd.kd_loss(s, t, y, temperature=2.0, hard_weight=0.5, divergence="jsd"),
                 torch.float64)
    assert "temperature=2.0" in repr(mod)


def test_torch_compile_fullgraph():
    s = torch.randn(6, 33)
    t = torch.randn(6, 33)
    y = torch.randint(0, 33, (6,))

    def step(x, t, y):
        return pysd.kd_loss(x, t, y, temperature=2.0, hard_weight=0.5) * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x1 = s.clone().requires_grad_()
    x2 = s.clone().requires_grad_()
    step(x1, t, y).backward()
    compiled(x2, t, y).backward()
    torch.testing.assert_close(x2.grad, x1.grad)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(beta=1.5), ValueError, "beta"),
    (dict(divergence="kl"), ValueError, "divergence"),
    (dict(teacher_format="logit"), ValueError, "teacher_format"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (dict(hard_weight=-1.0), ValueError, "hard_weight"),
    (dict(weight=-torch.ones(3)), ValueError, "weight"),
    (dict(weight=torch.ones(4)), ValueError, "weight"),
    (dict(normalizer=torch.tensor(2.0), reduction="sum"), ValueError, "normalizer"),
])
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pysd.kd_loss(torch.randn(3, 5), torch.randn(3, 5), torch.zeros(3, dtype=torch.long), **kwargs)


def test_bad_tensors():
    s = torch.randn(3, 5)
    with pytest.raises(ValueError, match="teacher must have the student's shape"):
        pysd.kd_loss(s, torch.randn(3, 6))
    with pytest.raises(TypeError, match="teacher dtype"):
        pysd.kd_loss(s, torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="detach"):
        pysd.kd_loss(s, torch.randn(3, 5, requires_grad=True))
    with pytest.raises(ValueError, match="outside"):
        pysd.kd_loss(s, target=torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="outside"):
        pysd.kd_loss(s, target=torch.tensor([0, -1, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        pysd.kd_loss(s, target=torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="target must have shape"):
        pysd.kd_loss(s, target=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="negative"):
        pysd.kd_loss(s, -torch.rand(3, 5), teacher_format="probs")
    with pytest.raises(TypeError, match="student_logits must be"):
        pysd.kd_loss(torch.ones(3, 5, dtype=torch.long), target=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="give a teacher"):
        pysd.kd_loss(s)
    with pytest.raises(ValueError, match="at least one class"):
        pysd.kd_loss(torch.randn(3, 0), torch.randn(3, 0))


def test_nan_logits_propagate(backend):
    s = torch.randn(3, 6)
    s[1, 2] = float("nan")
    rows = pysd.kd_loss(s, torch.randn(3, 6), reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()


@pytest.mark.parametrize("value", [float("nan"), -1.0, float("inf"), -1e-30])
def test_bad_normalizer_raises(value):
    """Issue 10: a NaN or negative normalizer returned loss 0 with zero gradient (training silently stopped)."""
    s = torch.randn(4, 5, requires_grad=True)
    with pytest.raises(ValueError, match="kd_loss: normalizer must be finite and > 0"):
        pysd.kd_loss(s, torch.randn(4, 5), normalizer=torch.tensor(value))


def test_normalizer_that_cannot_be_read_gives_nan_not_zero(monkeypatch):
    """A GPU normalizer (or any, under torch.compile) is not read on the host: a bad value must show as NaN."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the path that skips host reads
    s = torch.randn(4, 5, requires_grad=True)
    for value in (float("nan"), -2.0, float("inf")):
        loss = pysd.kd_loss(s, torch.randn(4, 5), normalizer=torch.tensor(value))
        loss.backward()
        assert torch.isnan(loss) and torch.isnan(s.grad).all()
        s.grad = None
    zero = pysd.kd_loss(s, torch.randn(4, 5), normalizer=torch.tensor(0.0))  # the empty mean stays 0
    zero.backward()
    assert float(zero.detach()) == 0 and (s.grad == 0).all()


def test_check_finite_names_the_argument(monkeypatch):
    s, t, w = torch.randn(4, 5), torch.randn(4, 5), torch.rand(4)
    for name in ("student_logits", "teacher", "weight"):
        args = dict(student_logits=s.clone(), teacher=t.clone(), weight=w.clone())
        args[name].view(-1)[1] = float("inf") if name == "teacher" else float("nan")
        with pytest.raises(ValueError, match=f"kd_loss: {name} has 1 NaN or inf entry"):
            pysd.kd_loss(args.pop("student_logits"), args.pop("teacher"), weight=args["weight"], check_finite=True)
    bad = s.clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(pysd.kd_loss(bad, t))  # off by default: NaN propagates as in PyTorch
    monkeypatch.setenv("PYSD_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="student_logits has 1 NaN or inf"):
        pysd.kd_loss(bad, t)
    with pytest.raises(ValueError, match="student_logits has 1 NaN or inf"):
        pysd.nn.DistillationLoss()(bad, t)
    assert torch.isnan(pysd.kd_loss(bad, t, check_finite=False))
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        pysd.kd_loss(s, t, check_finite="yes")


def test_ignore_index_outside_int64_is_a_value_error():
    with pytest.raises(ValueError, match="kd_loss: ignore_index must fit in int64"):
        pysd.kd_loss(torch.randn(3, 5), target=torch.zeros(3, dtype=torch.long), ignore_index=2**70)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("divergence,teacher_format", [("fkl", "logits"), ("rkl", "logprobs"), ("jsd", "probs")])
def test_cuda_matches_reference(monkeypatch, dtype, divergence, teacher_format):
    monkeypatch.setenv("PYSD_BACKEND", "cuda")
    s = (torch.randn(37, 5001) * 3).to(dtype)
    t = make_teacher((37, 5001), teacher_format, dtype)
    y = torch.randint(0, 5001, (37,))
    y[3] = -100
    kw = dict(teacher_format=teacher_format, divergence=divergence, temperature=2.0, hard_weight=0.5,
              label_smoothing=0.1)
    loss, grad = run(s.cuda(), t.cuda(), y.cuda(), **kw)
    ref_loss, ref_grad = reference(s, t, y, **kw)
    assert_close(loss.cpu(), ref_loss, dtype)
    assert_close(grad.cpu(), ref_grad, dtype)


@pytest.mark.parametrize("hard,reduction", [(0.0, "mean"), (0.5, "none")])
def test_custom_op_opcheck(backend, hard, reduction):
    from pysd.ops.kd_loss import _kd_loss_op

    s = torch.randn(5, 7, requires_grad=True)
    t = torch.randn(5, 7)
    y = torch.tensor([0, 3, -100, 6, 1])
    scale = torch.tensor(0.25, dtype=torch.float64)
    red = {"mean": 1, "none": 0}[reduction]
    torch.library.opcheck(_kd_loss_op, (s, t, y, None, scale, 0, 0, 0.5, 2.0, 4.0, hard, 0.0, -100, red, True))
