"""pysd.small_loss_mask and pysd.gmm_clean_prob (the GMM against scikit-learn with the same init)."""

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import pysd


def test_small_loss_mask_per_class_counts():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 503)
    loss = rng.random(503).astype(np.float32)
    for ratio in (0.0, 0.29, 0.5, 0.7, 1.0):
        m = pysd.small_loss_mask(loss, y, ratio)
        assert m.dtype == bool
        for c in range(5):
            rows = y == c
            k = int(np.floor(ratio * rows.sum() + 1e-9))
            assert m[rows].sum() == k
            if 0 < k < rows.sum():
                assert loss[rows][m[rows]].max() <= loss[rows][~m[rows]].min()


def test_small_loss_mask_global_and_ties():
    loss = torch.tensor([0.5, 0.1, 0.5, 0.5, 0.9])
    m = pysd.small_loss_mask(loss, None, 0.6, per_class=False)
    assert m.tolist() == [True, True, True, False, False]  # floor(0.6*5)=3, ties by lower index
    m = pysd.small_loss_mask(loss, torch.tensor([0, 0, 0, 0, 1]), 0.5)
    assert m.tolist() == [True, True, False, False, False]


@given(seed=st.integers(0, 1000), r1=st.floats(0, 1), r2=st.floats(0, 1))
def test_small_loss_mask_monotonic(seed, r1, r2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 97)
    loss = rng.integers(0, 5, 97).astype(np.float64)  # many ties
    lo, hi = sorted((r1, r2))
    a, b = pysd.small_loss_mask(loss, y, lo), pysd.small_loss_mask(loss, y, hi)
    assert not (a & ~b).any()


def test_small_loss_mask_bad_input():
    with pytest.raises(ValueError, match="ratio"):
        pysd.small_loss_mask(np.ones(3), np.zeros(3, dtype=int), 1.5)
    with pytest.raises(TypeError, match="losses"):
        pysd.small_loss_mask(np.ones(3, dtype=int), np.zeros(3, dtype=int), 0.5)
    with pytest.raises(ValueError, match="labels"):
        pysd.small_loss_mask(np.ones(3), np.zeros(2, dtype=int), 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        pysd.small_loss_mask(np.ones(3), -np.ones(3, dtype=int), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        pysd.small_loss_mask(np.array([1.0, np.nan]), np.zeros(2, dtype=int), 0.5)
    with pytest.raises(ValueError, match="labels are required"):
        pysd.small_loss_mask(np.ones(3), None, 0.5)


def _kmeans_init(x):
    """The init gmm_clean_prob documents: 1-D 2-means from centres 0 and 1."""
    c = np.array([0.0, 1.0])
    a = None
    while True:
        new = np.abs(x[:, None] - c).argmin(1)
        if a is not None and (new == a).all():
            break
        a = new
        c = np.array([x[a == k].mean() if (a == k).any() else c[k] for k in range(2)])
    resp = np.eye(2)[a]
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    mu = resp.T @ x / nk
    var = (resp * (x[:, None] - mu) ** 2).sum(0) / nk + 5e-4
    return nk / len(x), mu, var


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gmm_clean_prob_matches_sklearn(seed):
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    loss = np.concatenate([rng.gamma(2, 0.1, 700), rng.normal(2.5, 0.5, 300)]).astype(np.float32)
    p = pysd.gmm_clean_prob(loss)
    x = (loss.astype(np.float64) - loss.min()) / (loss.max() - loss.min())
    w, mu, var = _kmeans_init(x)
    gm = GaussianMixture(2, max_iter=10, tol=1e-2, reg_covar=5e-4, weights_init=w, means_init=mu[:, None],
                         precisions_init=(1 / var)[:, None, None]).fit(x[:, None])
    ref = gm.predict_proba(x[:, None])[:, gm.means_.argmin()]
    assert p.dtype == np.float32
    assert np.allclose(p, ref, atol=1e-5)
    assert (p[:700] > 0.5).mean() > 0.95 and (p[700:] < 0.5).mean() > 0.95
    t = pysd.gmm_clean_prob(torch.from_numpy(loss).double())
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), ref, atol=1e-8)


def test_gmm_clean_prob_edge_cases():
    assert (pysd.gmm_clean_prob(np.full(4, 2.0)) == 1).all()
    assert pysd.gmm_clean_prob(np.ones(1)).tolist() == [1.0]
    assert pysd.gmm_clean_prob(np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        pysd.gmm_clean_prob(np.ones((2, 2)))
    with pytest.raises(ValueError, match="inf"):
        pysd.gmm_clean_prob(np.array([1.0, np.inf]))


def test_small_loss_mask_huge_label_values():
    """Issue 10: a label of 1e12 reached bincount (an 8 TB allocation); classes are now the distinct values."""
    losses = np.array([0.5, 0.1, 0.3, 0.2, 0.9, 0.4])
    labels = np.array([10**12, 10**12, 7, 7, 10**12, 7])
    small = np.array([1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(pysd.small_loss_mask(losses, labels, 2 / 3),
                                  pysd.small_loss_mask(losses, small, 2 / 3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(reg_covar=-1.0), r"reg_covar must be a finite number > 0, got -1.0"),
    (dict(reg_covar=0.0), r"reg_covar must be a finite number > 0"),
    (dict(reg_covar=float("nan")), r"reg_covar must be"),
    (dict(max_iter=-1), r"max_iter must be an int >= 0, got -1"),
    (dict(max_iter=2.5), r"max_iter must be an int >= 0"),
    (dict(tol=float("inf")), r"tol must be a finite number >= 0"),
    (dict(tol=-1e-3), r"tol must be a finite number >= 0"),
])
def test_gmm_clean_prob_bad_arguments(kwargs, match):
    losses = np.random.default_rng(0).random(50)
    with pytest.raises(ValueError, match="gmm_clean_prob: " + match):
        pysd.gmm_clean_prob(losses, **kwargs)
