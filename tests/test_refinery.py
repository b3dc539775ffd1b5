"""pysd.recipes.LabelRefinery and aml_kd_loss on synthetic clustered data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pysd
from pysd.recipes import LabelRefinery, aml_kd_loss
from pysd.ops.selection import batch_small_loss_mask
from pysd.recipes.refinery import awe_weights


def clustered(n=600, c=5, d=16, noise=0.4, seed=0):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(c, d)) * 3
    y = g.integers(0, c, n)
    x = centres[y] + g.normal(size=(n, d))
    flip = g.random(n) < noise
    noisy = np.where(flip, (y + g.integers(1, c, n)) % c, y)
    teacher_logits = -((x[:, None, :] - centres[None]) ** 2).sum(-1) / 8 + g.normal(size=(n, c)) * 2
    t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return t(x), t(teacher_logits), torch.as_tensor(noisy), torch.as_tensor(y)


def acc(a, b):
    return float((a == b).float().mean())


@pytest.mark.parametrize("faithful", [False, True])
def test_refinery_recovers_labels_through_every_stage(faithful):
    x, t_logits, noisy, clean = clustered()
    ref = LabelRefinery(5, warmup_epochs=2, stage2_epoch=4, k=10, faithful=faithful,
                        noise_rate=0.4 if faithful else None)
    first = ref.initial(x, t_logits, noisy)
    assert first.stage == "initial"
    assert acc(first.labels, clean) > 0.9 > acc(noisy, clean)
    assert 0.3 < first.noise_rate < 0.5  # estimated (or given) noise rate
    g = torch.Generator().manual_seed(1)
    stages = []
    for epoch in range(7):
        hs = x + 0.5 * torch.randn(x.shape, generator=g)
        zs = t_logits + torch.randn(t_logits.shape, generator=g)
        res = ref.step(epoch, hs, zs, x, noisy)
        stages.append(res.stage)
        assert res.labels.shape == noisy.shape and res.weights.shape == noisy.shape
        assert ((res.weights > 0) & (res.weights < 1)).all()
        assert torch.equal(res.changed, res.labels != noisy)
        assert acc(res.labels, clean) > 0.9
        if epoch >= 2:
            assert torch.equal(res.labels[res.clean], noisy[res.clean])  # the easy set keeps its label
            assert 0.45 < res.clean.float().mean() < 0.75
    # stage 2 alternates: even epochs use the student graph, odd epochs the teacher graph (published code)
    assert stages == ["warmup", "warmup", "stage1", "stage1", "stage1", "stage2-teacher", "stage2-student"]


def test_outputs_are_in_dataset_order_when_rows_arrive_shuffled():
    x, t_logits, noisy, _ = clustered(n=300)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    a = LabelRefinery(5, warmup_epochs=0, k=8)
    b = LabelRefinery(5, warmup_epochs=0, k=8)
    ra0 = a.initial(x, t_logits, noisy)
    rb0 = b.initial(x[perm], t_logits[perm], noisy[perm], indices=perm)
    assert torch.equal(ra0.labels, rb0.labels)
    ra = a.step(1, x, t_logits, x, noisy)
    rb = b.step(1, x[perm], t_logits[perm], x[perm], noisy[perm], indices=perm)
    assert torch.equal(ra.labels, rb.labels)
    torch.testing.assert_close(ra.weights, rb.weights)


@pytest.mark.parametrize("selection", ["batch", "class", "gmm"])
def test_selection_rules(selection):
    x, t_logits, noisy, clean = clustered(n=400)
    ref = LabelRefinery(5, warmup_epochs=0, k=8, selection=selection, noise_rate=0.4)
    ref.initial(x, t_logits, noisy)
    res = ref.step(0, x, t_logits, x, noisy)
    kept = res.clean
    # the kept (small-loss) labels are far cleaner than the data set as a whole
    assert acc(noisy[kept], clean[kept]) > 0.85
    if selection != "gmm":
        assert abs(float(kept.float().mean()) - 0.6) < 0.05


def test_batch_small_loss_mask_per_batch():
    losses = torch.tensor([5.0, 1.0, 3.0, 2.0, 9.0, 0.0, 4.0])
    m = batch_small_loss_mask(losses, 0.5, batch_size=4)
    assert m.tolist() == [False, True, False, True, False, True, False]  # 2 of the first 4, 1 of the last 3
    order = torch.tensor([4, 5, 6, 0, 1, 2, 3])  # batches {4, 5, 6, 0} and {1, 2, 3}
    m2 = batch_small_loss_mask(losses, 0.5, batch_size=4, order=order)
    assert m2.tolist() == [False, True, False, False, False, True, True]


def test_awe_weights_are_sigmoid_cosine_to_own_centre():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.1, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    w = awe_weights(f, y, 2)
    mu0, mu1 = f[:2].mean(0), f[2:].mean(0)
    expected = torch.sigmoid(torch.stack([F.cosine_similarity(f[i], (mu0 if y[i] == 0 else mu1), dim=0)
                                          for i in range(4)]))
    torch.testing.assert_close(w, expected)


def test_aml_kd_loss_terms():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=g)
    w = torch.rand(6, generator=g, dtype=torch.float64)
    ce = F.cross_entropy(s, y, reduction="none")
    torch.testing.assert_close(aml_kd_loss(s, y, w), (w * ce).mean())
    torch.testing.assert_close(aml_kd_loss(s, y, w, faithful=True), w.mean() * ce.mean())
    kd = F.kl_div(F.log_softmax(s / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True) * 16
    torch.testing.assert_close(aml_kd_loss(s, y, None, t), ce.mean() + 0.9 * kd)
    mixed = torch.randn(6, 4, generator=g, dtype=torch.float64)
    perm = torch.randperm(6, generator=g)
    lam = 0.3
    kd_m = F.kl_div(F.log_softmax(mixed / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True) * 16
    mix = lam * F.cross_entropy(mixed / 4, y) + (1 - lam) * F.cross_entropy(mixed / 4, y[perm])
    torch.testing.assert_close(aml_kd_loss(s, y, None, t, mixup=(mixed, perm, lam)), ce.mean() + mix + 0.9 * kd_m)


def test_bad_construction_and_calls():
    with pytest.raises(ValueError, match="num_classes"):
        LabelRefinery(1)
    with pytest.raises(ValueError, match="noise_rate"):
        LabelRefinery(5, faithful=True)
    with pytest.raises(ValueError, match="selection"):
        LabelRefinery(5, selection="random")
    ref = LabelRefinery(5)
    x, t_logits, noisy, _ = clustered(n=100)
    with pytest.raises(RuntimeError, match="initial"):
        ref.step(0, x, t_logits, x, noisy)
    with pytest.raises(ValueError, match="teacher_logits"):
        ref.initial(x, t_logits[:, :3], noisy)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ref.initial(bad, t_logits, noisy)
    ref.initial(x, t_logits, noisy)
    with pytest.raises(ValueError, match="noisy_labels"):
        ref.step(0, x, t_logits, x, torch.full((100,), 7))
