"""pysd.recipes.linear_probe_sd: trained probes satisfy the exact fixed point and match pysd.theory."""

import numpy as np
import pytest
import threadpoolctl
import torch

import pysd
from pysd import theory as th
from pysd.recipes import linear_probe_sd


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # Small dense solves: one BLAS thread avoids oversubscription on a loaded 2-core box.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


def _features_of(gram):
    """Features X (N, p=N) with X X^T = G, as in Case A (X = V diag(sqrt(eig)))."""
    mu, v = np.linalg.eigh(gram)
    return v * np.sqrt(np.clip(mu, 0, None))


def _residual(gram, target, out, lam_e):
    """The fixed point P = softmax(G (T - P) / (N lam_e)), written out independently."""
    z = gram @ (target - out) / (gram.shape[0] * lam_e)
    e = np.exp(z - z.max(1, keepdims=True))
    return np.abs(out - e / e.sum(1, keepdims=True)).max()


@pytest.mark.parametrize("lam,temperature", [(1e-2, 1.0), (1e-1, 1.0), (1e-2, 1.5)])
def test_case_a_training_matches_exact_theory(lam, temperature):
    gram = th.block_gram(3, 20, 0.4, 0.1)
    true, given = th.deterministic_flips(3, 20, 3)
    r = linear_probe_sd(_features_of(gram), given, rounds=2, lam=lam, temperature=temperature, true_labels=true)
    e = th.sd_outputs(gram, given, 3, lam, 2, mode="exact", temperature=temperature, true_labels=true)
    out = r.outputs.numpy()
    for t in range(3):
        assert _residual(gram, r.targets[t].numpy(), out[t], lam * temperature ** 2) <= 1e-7
    assert (r.residuals <= 1e-7).all()
    np.testing.assert_allclose(out, e.outputs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(r.predictions.numpy(), e.predictions)
    np.testing.assert_array_equal(r.accuracy, e.accuracy)
    np.testing.assert_array_equal(r.noisy_accuracy, e.noisy_accuracy)
    assert r.weights.shape == (3, 60, 3) and r.outputs.dtype == torch.float64
    torch.testing.assert_close(r.targets[1:], r.outputs[:-1])


def test_pll_student_with_ce_matches_theory():
    # Random features: no exact ties in the teacher's outputs, so the top-2 sets are unambiguous.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(45, 6)) + np.repeat(np.eye(3, 6) * 2.0, 15, axis=0)
    true = np.repeat(np.arange(3), 15)
    given = np.where(rng.random(45) < 0.3, (true + 1 + rng.integers(0, 2, 45)) % 3, true)
    lam = 0.02
    r = linear_probe_sd(torch.from_numpy(x), torch.from_numpy(given), rounds=1, lam=lam, variant="pll",
                        pll_loss="ce", true_labels=true)
    e = th.sd_outputs(x, given, 3, lam, 1, mode="exact", variant="pll", true_labels=true)
    torch.testing.assert_close(r.targets[1], pysd.partial_labels(r.outputs[0], 2))
    np.testing.assert_array_equal(r.targets[1].numpy(), e.targets[1])
    np.testing.assert_allclose(r.outputs.numpy(), e.outputs, rtol=0, atol=1e-6)
    assert (r.residuals <= 1e-7).all()


def test_pll_student_default_follows_the_paper_code():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    given = rng.integers(0, 4, 40)
    gce = linear_probe_sd(x, given, rounds=1, lam=0.05, variant="pll")
    ce = linear_probe_sd(x, given, rounds=1, lam=0.05, variant="pll", pll_loss="ce", pll_warm_start=False)
    torch.testing.assert_close(gce.targets, ce.targets)
    assert np.isnan(gce.residuals[1]) and gce.residuals[0] <= 1e-7
    assert gce.grad_norms[1] < 1e-8
    assert not torch.allclose(gce.outputs[1], ce.outputs[1], atol=1e-3)
    assert gce.accuracy is None


def test_float32_and_num_classes():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(30, 4))).float()
    given = torch.from_numpy(rng.integers(0, 2, 30))
    r = linear_probe_sd(x, given, rounds=1, lam=0.1, num_classes=5, dtype=torch.float32, grad_tol=1e-6)
    assert r.outputs.shape == (2, 30, 5) and r.outputs.dtype == torch.float32
    e = th.sd_outputs(x.double(), given, 5, 0.1, 1, mode="exact")
    np.testing.assert_allclose(r.outputs.double().numpy(), e.outputs, atol=1e-4)


def test_bad_arguments():
    x = np.random.default_rng(0).normal(size=(10, 3))
    y = np.arange(10) % 3
    with pytest.raises(ValueError, match="variant"):
        linear_probe_sd(x, y, rounds=1, lam=0.1, variant="mix")
    with pytest.raises(ValueError, match="rounds must be 1"):
        linear_probe_sd(x, y, rounds=2, lam=0.1, variant="pll")
    with pytest.raises(ValueError, match="lam"):
        linear_probe_sd(x, y, rounds=1, lam=-1.0)
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe_sd(x, y, rounds=1, lam=0.1, optimizer="sgd")
    with pytest.raises(ValueError, match="noisy_labels must have shape"):
        linear_probe_sd(x, y[:5], rounds=1, lam=0.1)
    with pytest.raises(ValueError, match=r"noisy_labels must lie"):
        linear_probe_sd(x, y, rounds=1, lam=0.1, num_classes=2)
    with pytest.raises(ValueError, match="features must be"):
        linear_probe_sd(x[0], y, rounds=1, lam=0.1)
    with pytest.raises(ValueError, match="rounds"):
        linear_probe_sd(x, y, rounds=-1, lam=0.1)
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe_sd(x, y, rounds=1, lam=0.1, num_classes=1)
    with pytest.raises(ValueError, match="true_labels"):
        linear_probe_sd(x, y, rounds=0, lam=0.1, true_labels=y[:3])


def test_float_labels_and_absurd_classes():
    """Issue 10: float labels 0.5 / 1.5 were truncated to classes 0 / 1 without a word; a label of 1e12
    reached the allocator."""
    x = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(TypeError, match="linear_probe_sd: noisy_labels must hold integer class indices, got"):
        linear_probe_sd(x, np.array([0.5, 1.5] * 4), rounds=1, lam=0.1)
    with pytest.raises(TypeError, match="true_labels must hold integer class indices"):
        linear_probe_sd(x, np.arange(8) % 2, rounds=1, lam=0.1, true_labels=torch.zeros(8))
    labels = np.arange(8) % 2
    labels[3] = 10**12
    with pytest.raises(ValueError, match=r"linear_probe_sd: noisy_labels \(largest label \+ 1\)=1000000000001 "
                                         r"would need"):
        linear_probe_sd(x, labels, rounds=1, lam=0.1)
    with pytest.raises(ValueError, match=r"linear_probe_sd: num_classes=1000000000000 would need"):
        linear_probe_sd(x, np.arange(8) % 2, rounds=1, lam=0.1, num_classes=10**12)
    with pytest.raises(TypeError, match="features must hold real numbers"):
        linear_probe_sd(x.astype(complex), np.arange(8) % 2, rounds=1, lam=0.1)
