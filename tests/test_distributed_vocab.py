"""pysd.distributed's vocabulary-parallel ops (kd_loss, fused_linear_kd_loss, topk_teacher) on 2 and 3
gloo ranks on the CPU: loss and gradients equal the single-process ops on the full vocabulary, computed in
float64 (and float32 once), for uneven shards (one of a single class, ranks not in vocabulary order), rows
whose top-k ids all lie on another rank, ignored rows, N = 0, every divergence and tail policy.  One
spawned group per world size runs every case (spawning costs far more than a case)."""

import itertools

import pytest
import torch

import pysd
from test_distributed import spawn

N, H, HT = 9, 6, 5


def _data(v, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    d = dict(x=r(N, H), w=r(v, H) / 2, b=r(v) / 2, h=r(N, HT), wt=r(v, HT) / 2, bt=r(v) / 2,
             y=torch.randint(0, v, (N,), generator=g), rw=torch.rand(N, generator=g, dtype=dtype) + 0.5)
    d["y"][[2, 5]] = -100
    d["t"] = d["h"] @ d["wt"].T + d["bt"]
    d["s"] = d["x"] @ d["w"].T + d["b"]
    return d


def _sparse(t, tail):
    """Top-3 of ``t`` with row 0's ids all on the first classes (the other shards hold none of them), a
    padded entry and a duplicate."""
    st = pysd.topk_teacher(t, 3, format="logits" if tail == "renormalize" else "logprobs", tail=tail)
    ids, vals = st.indices.clone(), st.values.clone()
    ids[0] = torch.tensor([0, 1, 2])
    ids[1, 2] = -1
    ids[3, 2] = ids[3, 0]
    return pysd.SparseTeacher(ids, vals, st.format, tail, 1.0)


TEACHERS = ("dense", "probs", "hidden", "renormalize", "bucket", "uniform", "none")
DIVERGENCES = (dict(divergence="fkl"), dict(divergence="rkl"), dict(divergence="jsd", beta=0.3))
OPTIONS = (dict(), dict(temperature=2.0, label_smoothing=0.1, use_weight=True),
           dict(reduction="sum", temperature=0.7, hard_weight=0.0), dict(reduction="none", soft_weight=0.5),
           dict(reduction="batchmean", label_smoothing=0.2), dict(normalizer=True, teacher_format="logprobs"))


def _backward(loss):
    """Backward with a different upstream gradient per row for reduction="none"."""
    up = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape) if loss.dim() else 1.0
    (loss * up).sum().backward()


def _close(a, b, tol, what):
    a, b = a.detach().double(), b.detach().double()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) / scale if b.numel() else 0.0
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def _case_kwargs(d, kind, div, opt):
    kw = dict(div)
    kw.update({k: v for k, v in opt.items() if k not in ("use_weight", "normalizer")})
    if kind != "dense":
        kw.pop("teacher_format", None)
    if kind == "probs":
        kw["teacher_format"] = "probs"
    if opt.get("use_weight"):
        kw["weight"] = d["rw"]
    if opt.get("normalizer"):
        kw["normalizer"] = torch.tensor(4.5, dtype=torch.float64)
    return kw


def _teachers(d, kind, lo, hi, kw):
    """(single-process teacher, this rank's teacher, fused extras full, fused extras shard)."""
    if kind == "probs":  # probabilities over the full vocabulary, sharded; a zero (rkl: infinite there)
        p = torch.softmax(d["t"], -1)
        p[..., 1] = 0.0 if kw.get("divergence") != "rkl" else p[..., 1]
        p = p / p.sum(-1, keepdim=True)
        return p, p[..., lo:hi], {}, {}
    if kind in ("dense", "hidden"):
        full = dict(teacher_weight=d["wt"], teacher_bias=d["bt"]) if kind == "hidden" else {}
        part = dict(teacher_weight=d["wt"][lo:hi], teacher_bias=d["bt"][lo:hi]) if kind == "hidden" else {}
        return d["t"], d["t"][..., lo:hi], full, part
    if kind == "none":
        return None, None, {}, {}
    st = _sparse(d["t"], kind)
    return st, st, {}, {}


def _check_kd(d, kind, kw, lo, hi, group, tol):
    t_full, t_part, _, _ = _teachers(d, kind, lo, hi, kw)
    s = d["s"].clone().requires_grad_()
    ref = pysd.kd_loss(s, t_full, d["y"], **kw)
    _backward(ref)
    part = d["s"][..., lo:hi].clone().requires_grad_()
    out = pysd.distributed.kd_loss(part, t_part, d["y"], process_group=group, vocab_start=lo, **kw)
    _backward(out)
    _close(out, ref, tol, f"kd_loss {kind} {kw} loss")
    _close(part.grad, s.grad[..., lo:hi], tol, f"kd_loss {kind} {kw} grad")


def _check_fused(d, kind, kw, lo, hi, group, tol, chunk=None, reduce_input_grad=True):
    if kind == "none":
        return
    t_full, t_part, ext_full, ext_part = _teachers(d, kind, lo, hi, kw)
    if kind == "hidden":
        t_full = t_part = d["h"]
    kw = dict(kw, logit_softcap=5.0) if kind == "hidden" else kw
    x, w, b = (d[k].clone().requires_grad_() for k in "xwb")
    ref = pysd.fused_linear_kd_loss(x, w, t_full, d["y"], student_bias=b, **ext_full, **kw)
    _backward(ref)
    xp = d["x"].clone().requires_grad_()
    wp, bp = (d[k][lo:hi].clone().requires_grad_() for k in "wb")
    out = pysd.distributed.fused_linear_kd_loss(xp, wp, t_part, d["y"], process_group=group, vocab_start=lo,
                                                student_bias=bp, chunk_size=chunk,
                                                reduce_input_grad=reduce_input_grad, **ext_part, **kw)
    _backward(out)
    what = f"fused {kind} {kw} chunk={chunk}"
    _close(out, ref, tol, what + " loss")
    _close(wp.grad, w.grad[lo:hi], tol, what + " grad weight")
    _close(bp.grad, b.grad[lo:hi], tol, what + " grad bias")
    gx = xp.grad
    if not reduce_input_grad:  # each rank's partial: their sum is the gradient
        torch.distributed.all_reduce(gx)
    _close(gx, x.grad, tol, what + " grad input")


def _layout(rank, sizes, order):
    """This rank's [lo, hi): the shards in ``order`` (rank order[i] holds the i-th range)."""
    at = 0
    for r in order:
        if r == rank:
            return at, at + sizes[r]
        at += sizes[r]


def _cases(rank, world, sizes, order):
    v = sum(sizes)
    lo, hi = _layout(rank, sizes, order)
    d = _data(v)
    for i, (kind, div) in enumerate(itertools.product(TEACHERS, DIVERGENCES)):
        opt = OPTIONS[i % len(OPTIONS)]
        kw = _case_kwargs(d, kind, div, opt)
        if kind == "none" and kw.get("hard_weight") == 0.0:  # no term left: refused, as in one process
            with pytest.raises(ValueError, match="no loss term"):
                pysd.distributed.kd_loss(d["s"][..., lo:hi], None, d["y"], vocab_start=lo, **kw)
            continue
        if kind == "renormalize" and div["divergence"] == "rkl":
            with pytest.raises(ValueError, match="infinite"):
                pysd.distributed.kd_loss(d["s"][..., lo:hi], _sparse(d["t"], kind), d["y"], vocab_start=lo, **kw)
            continue
        _check_kd(d, kind, kw, lo, hi, None, 1e-12)
        _check_fused(d, kind, kw, lo, hi, None, 1e-12, chunk=(4, 2) if kind in ("bucket", "uniform") else 4,
                     reduce_input_grad=i % 2 == 0)
    for kind in ("dense", "uniform"):  # float32, default chunks
        d32 = _data(v, torch.float32)
        kw = _case_kwargs(d32, kind, DIVERGENCES[2], OPTIONS[1])
        _check_kd(d32, kind, kw, lo, hi, None, 1e-5)
        _check_fused(d32, kind, kw, lo, hi, None, 1e-5)
    _edge_rows(d, lo, hi)
    _accumulate(d, lo, hi)
    _topk(rank, world, sizes, order)
    _errors(rank, d, lo, hi)


def _edge_rows(d, lo, hi):
    """N = 0 and every row ignored: loss 0 (empty mean), zero gradients, as the single-process ops."""
    e = {k: (t[:0] if t.dim() and t.shape[0] == N else t) for k, t in d.items()}
    for kind in ("dense", "hidden"):
        _check_kd(e, kind, {}, lo, hi, None, 1e-12)
        _check_fused(e, kind, {}, lo, hi, None, 1e-12)
    per_row = ("x", "h", "y", "s", "t", "rw")  # leading dims (3, 3) instead of (9,)
    batched = {k: (t.reshape(3, 3, *t.shape[1:]) if k in per_row else t) for k, t in d.items()}
    _check_kd(batched, "dense", dict(reduction="none", weight=batched["rw"]), lo, hi, None, 1e-12)
    _check_fused(batched, "hidden", dict(reduction="none", divergence="jsd"), lo, hi, None, 1e-12)
    ign = dict(d, y=torch.full((N,), -100))
    _check_kd(ign, "bucket", dict(divergence="jsd"), lo, hi, None, 1e-12)
    _check_fused(ign, "hidden", dict(divergence="rkl"), lo, hi, None, 1e-12)


def _accumulate(d, lo, hi):
    """Two backward passes through one graph accumulate twice the single-process gradients (the saved
    gradients are not reduced in place)."""
    xp, wp = d["x"].clone().requires_grad_(), d["w"][lo:hi].clone().requires_grad_()
    out = pysd.distributed.fused_linear_kd_loss(xp, wp, d["t"][..., lo:hi], d["y"], vocab_start=lo)
    out.backward(retain_graph=True)
    out.backward()
    x, w = d["x"].clone().requires_grad_(), d["w"].clone().requires_grad_()
    pysd.fused_linear_kd_loss(x, w, d["t"], d["y"]).backward()
    _close(xp.grad, 2 * x.grad, 1e-12, "accumulated grad input")
    _close(wp.grad, 2 * w.grad[lo:hi], 1e-12, "accumulated grad weight")


def _topk(rank, world, sizes, order):
    v = sum(sizes)
    lo, hi = _layout(rank, sizes, order)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(-3, 3, (N, v), generator=g).double()  # many ties
    for k, fmt, temp in ((3, "logprobs", 1.0), (v, "probs", 2.0), (max(sizes) + 1, "logits", 0.5)):
        ref = pysd.topk_teacher(t, k, temperature=temp, format=fmt)
        out = pysd.distributed.topk_teacher(t[..., lo:hi], k, vocab_start=lo, temperature=temp, format=fmt)
        assert torch.equal(out.indices, ref.indices), (k, fmt)
        _close(out.values, ref.values, 1e-12, f"topk {k} {fmt}")
    out = pysd.distributed.topk_teacher(t[:0, lo:hi], 2, vocab_start=lo)
    assert out.indices.shape == (0, 2)


def _errors(rank, d, lo, hi):
    """A bad input on one rank, or options that differ, raise ValueError on every rank (no hang); the
    group stays usable afterwards."""
    part = d["s"][..., lo:hi]
    bad_on_one = [
        (dict(temperature=-1.0 if rank == 1 else 1.0), "temperature"),
        (dict(divergence="rkl" if rank == 0 else "fkl"), "differs"),
        (dict(vocab_start=lo + (rank == 1)), "tile"),
    ]
    with pytest.raises(ValueError, match="differs"):  # another number of rows on one rank
        pysd.distributed.kd_loss(part[:N - rank], None, d["y"][:N - rank], vocab_start=lo)
    for kw, match in bad_on_one:
        kw = dict(dict(vocab_start=lo), **kw)
        with pytest.raises(ValueError, match=match):
            pysd.distributed.kd_loss(part, d["t"][..., lo:hi], d["y"], **kw)
    st = _sparse(d["t"], "bucket")
    if rank == 1:
        st.indices[4, 0] = 10**6
    with pytest.raises(ValueError, match="outside"):
        pysd.distributed.kd_loss(part, st, d["y"], vocab_start=lo)
    y = d["y"].clone()
    if rank == 0:
        y[0] = 10**6
    with pytest.raises(ValueError, match="target"):
        pysd.distributed.fused_linear_kd_loss(d["x"], d["w"][lo:hi], d["t"][..., lo:hi], y, vocab_start=lo)
    with pytest.raises(ValueError):
        pysd.distributed.topk_teacher(d["t"][..., lo:hi], 2 if rank else 0, vocab_start=lo)
    _check_kd(d, "dense", {}, lo, hi, None, 1e-12)


def test_vocab_parallel_two_ranks():
    spawn(_cases, 2, [5, 8], [0, 1])


def test_vocab_parallel_three_ranks_uneven_out_of_order():
    spawn(_cases, 3, [6, 1, 4], [2, 0, 1])
