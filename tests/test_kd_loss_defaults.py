"""kd_loss's hard_weight default: labels passed with a teacher are never silently dropped.

``hard_weight=None`` means 0.5 with a teacher and a target, 1.0 with a target alone, 0 without a target;
an explicit 0 keeps the target for ``ignore_index`` only.  Checked against a float64 reference written from
the formula (not from pysd).
"""

import pytest
import torch

import pysd


def reference(s, t, y, hard, T=1.0, ignore_index=-100):
    """mean over non-ignored rows of hard * CE(s, y) + T^2 KL(softmax(t/T) || softmax(s/T))."""
    s, keep = s.double(), torch.ones(len(s), dtype=torch.bool) if y is None else y != ignore_index
    rows = torch.zeros(len(s), dtype=torch.float64)
    if y is not None and hard:
        yy = torch.where(keep, y, 0)
        rows += hard * -(torch.log_softmax(s, 1).gather(1, yy[:, None])[:, 0])
    if t is not None:
        p = torch.softmax(t.double() / T, 1)
        rows += T * T * (p * (torch.log(p) - torch.log_softmax(s / T, 1))).sum(1)
    return rows[keep].sum() / keep.sum()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    y = torch.randint(0, 5, (7,), generator=g)
    y[3] = -100
    return s, t, y


def test_target_with_teacher_counts_half(batch):
    s, t, y = batch
    torch.testing.assert_close(pysd.kd_loss(s, t, y, temperature=2.0).double(), reference(s, t, y, 0.5, 2.0))
    assert not torch.isclose(pysd.kd_loss(s, t, y), pysd.kd_loss(s, t, y, hard_weight=0.0))


def test_target_alone_is_cross_entropy(batch):
    s, _, y = batch
    torch.testing.assert_close(pysd.kd_loss(s, None, y).double(), reference(s, None, y, 1.0))
    ce = torch.nn.functional.cross_entropy(s.double(), y)
    torch.testing.assert_close(pysd.kd_loss(s, None, y).double(), ce)


def test_teacher_alone_is_the_soft_term(batch):
    s, t, _ = batch
    torch.testing.assert_close(pysd.kd_loss(s, t).double(), reference(s, t, None, 0.0))


def test_explicit_zero_keeps_target_for_ignore_index_only(batch):
    s, t, y = batch
    torch.testing.assert_close(pysd.kd_loss(s, t, y, hard_weight=0.0).double(), reference(s, t, y, 0.0))
    assert not torch.isclose(pysd.kd_loss(s, t, y, hard_weight=0.0), pysd.kd_loss(s, t))  # row 3 dropped


def test_explicit_weights_are_kept(batch):
    s, t, y = batch
    torch.testing.assert_close(pysd.kd_loss(s, t, y, hard_weight=0.2).double(), reference(s, t, y, 0.2))


def test_no_term_left_is_an_error(batch):
    s, _, y = batch
    with pytest.raises(ValueError, match="hard_weight"):
        pysd.kd_loss(s, None, y, hard_weight=0.0)


def test_module_form_has_the_same_default(batch):
    s, t, y = batch
    torch.testing.assert_close(pysd.nn.DistillationLoss()(s, t, y), pysd.kd_loss(s, t, y))
