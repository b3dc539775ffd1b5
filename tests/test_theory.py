"""pysd.theory against the validation cases of Jeong & Chung (arXiv 2402.10482) and independent formulas.

Expected numbers come from the spec's tables; formulas used as references are written
out here (direct linear solves, eigendecompositions), not taken from the code under test.
"""

import numpy as np
import pytest
import threadpoolctl
import torch

import pysd
from pysd import theory as th

@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # The exact-mode Newton solves are small dense factorisations: on a loaded 2-core box
    # OpenBLAS threads oversubscribe and run several times slower than one thread.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield
C, D = 0.4, 0.1


def _case(K, n, f):
    true, given = th.deterministic_flips(K, n, f)
    return th.block_gram(K, n, C, D), true, given


def _onehot(labels, K):
    return np.eye(K)[labels]


# ----------------------------------------------------------------------------- Case A


CASE_A = th.block_gram(3, 20, C, D), *th.deterministic_flips(3, 20, 3)


@pytest.mark.parametrize("lam,expected", [(1e-3, 0.0176), (1e-2, 0.0263), (1e-1, 0.0053)])
def test_case_a_linearisation_error(lam, expected):
    g, true, given = CASE_A
    ex = th.sd_outputs(g, given, 3, lam, 0, mode="exact")
    lin = th.sd_outputs(g, given, 3, lam, 0)
    assert ex.residuals[0] <= 1e-10
    assert abs(np.abs(ex.outputs - lin.outputs).max() - expected) <= 0.05 * expected


def test_case_a_linearisation_error_small_for_large_lam():
    g, true, given = CASE_A
    diffs = {}
    for lam in (1.0, 10.0):
        ex = th.sd_outputs(g, given, 3, lam, 0, mode="exact")
        diffs[lam] = np.abs(ex.outputs - th.sd_outputs(g, given, 3, lam, 0).outputs).max()
    # The table lists 1.0e-4 at lam = 1 (magnitude) and < 1e-5 at lam = 10.
    assert 5e-5 < diffs[1.0] < 2e-4
    assert diffs[10.0] < 1e-5


def test_case_a_example_instance():
    g, true, given = CASE_A
    assert (true[0], given[0]) == (0, 1)
    ex = th.sd_outputs(g, given, 3, 0.01, 0, mode="exact")
    lin = th.sd_outputs(g, given, 3, 0.01, 0)
    np.testing.assert_allclose(ex.outputs[0, 0], [0.4307, 0.3912, 0.1781], atol=5e-5)
    np.testing.assert_allclose(lin.outputs[0, 0], [0.4464, 0.4018, 0.1518], atol=5e-5)
    alpha, beta, gamma = th.shrink_factors(3, 20, C, D, 0.01)
    assert alpha == pytest.approx(0.25, abs=1e-12) and beta == pytest.approx(0.7857, abs=5e-5)


def test_case_a_closed_forms_agree():
    """§3 scalar formula, eigen-form H^(t+1), and a direct linear solve per round agree to 1e-12."""
    g, true, given = CASE_A
    K, n, lam, rounds = 3, 20, 0.01, 4
    N = K * n
    rho = K * N * lam
    y = _onehot(given, K)
    block = th.block_sd_outputs(given, K, n, C, D, lam, rounds)
    general = th.sd_outputs(g, given, K, lam, rounds)
    mu, u = np.linalg.eigh(g)
    h = mu / (mu + rho)
    q = y - 1 / K
    alpha, beta, gamma = th.shrink_factors(K, n, C, D, lam)
    m = th.label_confusion(true, given, K)
    gk = m.mean(0)
    for t in range(rounds + 1):
        eig = 1 / K + u @ (h[:, None] ** (t + 1) * (u.T @ (y - 1 / K)))
        scalar = (1 / K + alpha ** (t + 1) * y + (beta ** (t + 1) - alpha ** (t + 1)) * m[true]
                  + (gamma ** (t + 1) - beta ** (t + 1)) * gk - gamma ** (t + 1) / K)
        q = g @ np.linalg.solve(g + rho * np.eye(N), q)
        for out in (block.outputs[t], general.outputs[t], scalar, 1 / K + q):
            np.testing.assert_allclose(out, eig, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- Case B

# lam, eta, alpha, beta, Delta, t* formula, t* linearised, t* exact (K=4, n=60)
CASE_B = [
    (1e-4, 0.30, 0.8621, 0.9949, 0.600, 6, 6, 7),
    (1e-4, 0.50, 0.8621, 0.9949, 0.333, 9, 9, 11),
    (1e-4, 0.65, 0.8621, 0.9949, 0.133, 14, 14, 17),
    (2e-4, 0.60, 0.7576, 0.9898, 0.200, 6, 6, 7),
    (3e-4, 0.70, 0.6757, 0.9848, 0.067, 7, 7, 8),
]


def _case_b(eta):
    K, n = 4, 60
    f = round(eta * n / (K - 1))
    assert f * (K - 1) == round(eta * n)
    return _case(K, n, f)


def _first_perfect(acc):
    hits = np.flatnonzero(acc == 1.0)
    assert hits.size, "never reached 100% training-label accuracy"
    return int(hits[0])


@pytest.mark.parametrize("row", CASE_B, ids=lambda r: f"lam{r[0]}-eta{r[1]}")
def test_case_b_formula_and_linearised(row):
    lam, eta, alpha, beta, delta, t_formula, t_lin, _ = row
    g, true, given = _case_b(eta)
    r = th.min_rounds(th.label_confusion(true, given, 4), 60, C, D, lam)
    assert r.plurality and r.balanced
    assert (r.alpha, r.beta, r.delta) == (pytest.approx(alpha, abs=5e-5), pytest.approx(beta, abs=5e-5),
                                          pytest.approx(delta, abs=5e-4))
    assert r.rounds == t_formula
    block = th.block_sd_outputs(given, 4, 60, C, D, lam, t_lin + 2, true_labels=true)
    assert _first_perfect(block.accuracy) == t_lin
    # Accuracy stays at 1 - eta, then jumps to 1 in one round (symmetric design).
    np.testing.assert_allclose(block.accuracy[:t_lin], 1 - eta, atol=1e-12)
    assert (block.accuracy[t_lin:] == 1.0).all()


def test_case_b_general_gram_path_matches_block_path():
    lam, eta = 1e-4, 0.5
    g, true, given = _case_b(eta)
    general = th.sd_outputs(g, given, 4, lam, 12, true_labels=true)
    block = th.block_sd_outputs(given, 4, 60, C, D, lam, 12, true_labels=true)
    np.testing.assert_allclose(general.outputs, block.outputs, rtol=0, atol=1e-12)
    assert _first_perfect(general.accuracy) == 9
    np.testing.assert_array_equal(general.predictions, block.predictions)


@pytest.mark.parametrize("row", CASE_B, ids=lambda r: f"lam{r[0]}-eta{r[1]}")
def test_case_b_exact(row):
    lam, eta, *_, t_exact = row
    g, true, given = _case_b(eta)
    r = th.sd_outputs(g, given, 4, lam, t_exact, mode="exact", true_labels=true)
    assert (r.residuals <= 1e-10).all()
    assert _first_perfect(r.accuracy) == t_exact
    np.testing.assert_allclose(r.outputs.sum(-1), 1.0, atol=1e-14)


# ----------------------------------------------------------------------------- Case C

CASE_C = [(1e-4, 0.30), (1e-4, 0.50), (1e-4, 0.65), (2e-4, 0.60), (3e-4, 0.70)]


@pytest.mark.parametrize("lam,eta", CASE_C)
def test_case_c_pll_one_round_reaches_100(lam, eta):
    g, true, given = _case_b(eta)
    runs = [th.block_sd_outputs(given, 4, 60, C, D, lam, 1, variant="pll", true_labels=true),
            th.sd_outputs(g, given, 4, lam, 1, variant="pll", true_labels=true),
            th.sd_outputs(g, given, 4, lam, 1, variant="pll", mode="exact", true_labels=true)]
    for r in runs:
        assert r.accuracy[0] == pytest.approx(1 - eta, abs=1e-12)
        top2 = np.argsort(-r.centered[0], axis=1, kind="stable")[:, :2]
        assert (top2 == true[:, None]).any(1).all()      # true class always in the teacher's top-2
        assert r.accuracy[1] == 1.0
        np.testing.assert_allclose(r.targets[1].sum(1), 1.0)
        assert set(np.unique(r.targets[1])) == {0.0, 0.5}
    # Plain SD is still at 1 - eta after one round.
    assert th.block_sd_outputs(given, 4, 60, C, D, lam, 1, true_labels=true).accuracy[1] == pytest.approx(1 - eta)


@pytest.mark.parametrize("K", [3, 4, 10])
@pytest.mark.parametrize("eta", [0.1, 0.4, 0.6, 0.65])
def test_margins_symmetric_noise(K, eta):
    m = np.full((K, K), eta / (K - 1))
    np.fill_diagonal(m, 1 - eta)
    assert eta < (K - 1) / K  # every case of the grid satisfies the plurality condition
    r = th.compare_margins(m)
    assert r.sd_margin == pytest.approx(1 - eta * K / (K - 1))
    assert r.pll_margin == pytest.approx(eta / 2 * (K - 2) / (K - 1))
    assert r.pll_better == (eta > 2 * (K - 1) / (3 * K - 2))
    np.testing.assert_array_equal(r.runner_up, [1] + [0] * (K - 1))


def test_margins_and_rounds_reject_bad_confusion():
    with pytest.raises(ValueError, match="plurality"):
        th.compare_margins(np.array([[0.4, 0.6], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="confusion rows"):
        th.min_rounds(np.array([[0.4, 0.5], [0.5, 0.5]]), 10, C, D, 1e-3)
    assert th.min_rounds(np.array([[0.4, 0.6], [0.0, 1.0]]), 10, C, D, 1e-3).rounds is None
    assert th.min_rounds(np.eye(3), 10, C, D, 1e-3).rounds == 0


def test_pll_targets_use_the_partial_labels_tie_rule():
    from pysd.theory._inputs import top_k_targets

    rng = np.random.default_rng(3)
    probs = torch.softmax(torch.from_numpy(rng.integers(0, 3, (50, 6)).astype(float)), -1)
    np.testing.assert_array_equal(top_k_targets(probs.numpy(), 2), pysd.partial_labels(probs, 2).numpy())


def test_pll_margin_two_classes_ties():
    # K = 2: the PLL targets are 1/2-1/2 everywhere, no margin (the spec's failure mode).
    assert th.compare_margins(np.array([[0.8, 0.2], [0.3, 0.7]])).pll_margin == 0.0


# ----------------------------------------------------------------------------- Case E


@pytest.mark.parametrize("mode", ["linearized", "exact"])
@pytest.mark.parametrize("variant,xi", [("sd", 1.0), ("mix", 0.6), ("pll", 1.0)])
def test_rows_sum_to_one(mode, variant, xi):
    g, true, given = _case(3, 10, 2)
    rounds = 1 if variant == "pll" else 3
    r = th.sd_outputs(g, given, 3, 0.01, rounds, mode=mode, variant=variant, xi=xi, true_labels=true)
    np.testing.assert_allclose(r.outputs.sum(-1), 1.0, atol=1e-13)
    assert r.outputs.shape == (rounds + 1, 30, 3) and r.predictions.shape == (rounds + 1, 30)
    np.testing.assert_array_equal(r.predictions, r.outputs.argmax(-1))


def test_block_outputs_depend_on_cluster_and_label_only():
    g, true, given = _case(4, 12, 2)
    r = th.sd_outputs(g, given, 4, 1e-3, 5)
    for t in range(6):
        for key in set(zip(true, given)):
            rows = r.outputs[t][(true == key[0]) & (given == key[1])]
            np.testing.assert_allclose(rows, rows[:1].repeat(len(rows), 0), rtol=0, atol=1e-13)


def test_sd_collapses_to_uniform_but_argmax_survives():
    true, given = th.deterministic_flips(4, 30, 3)
    r = th.block_sd_outputs(given, 4, 30, C, D, 0.05, 400, true_labels=true)
    assert np.abs(r.outputs[-1] - 0.25).max() < 1e-12
    assert r.accuracy[-1] == 1.0
    np.testing.assert_allclose(np.abs(r.centered).max(axis=(1, 2)), 1.0)


@pytest.mark.parametrize("mode", ["linearized", "exact"])
def test_temperature_is_lam_times_tau_squared(mode):
    g, true, given = _case(3, 10, 2)
    a = th.sd_outputs(g, given, 3, 0.01, 2, mode=mode, temperature=2.0)
    b = th.sd_outputs(g, given, 3, 0.04, 2, mode=mode)
    np.testing.assert_allclose(a.outputs, b.outputs, rtol=0, atol=1e-12)
    assert a.rho == pytest.approx(b.rho)
    if mode == "exact":
        assert th.fixed_point_residual(g, a.targets[2], a.outputs[2], 0.01, temperature=2.0) <= 1e-10


@pytest.mark.parametrize("mode", ["linearized", "exact"])
def test_xi_zero_reproduces_ridge(mode):
    g, true, given = _case(3, 10, 2)
    r = th.sd_outputs(g, given, 3, 0.01, 3, mode=mode, variant="mix", xi=0.0)
    for t in range(1, 4):
        np.testing.assert_allclose(r.outputs[t], r.outputs[0], rtol=0, atol=1e-12)
    if mode == "linearized":
        rho = 3 * 30 * 0.01
        ridge = 1 / 3 + g @ np.linalg.solve(g + rho * np.eye(30), _onehot(given, 3) - 1 / 3)
        np.testing.assert_allclose(r.outputs[0], ridge, rtol=0, atol=1e-13)


def test_mix_recursion_in_eigenbasis():
    g = th.block_gram(3, 10, C, D, eps=0.05, seed=1)
    true, given = th.deterministic_flips(3, 10, 2)
    lam, xi = 0.003, 0.7
    r = th.sd_outputs(g, given, 3, lam, 5, variant="mix", xi=xi)
    mu, u = np.linalg.eigh(g)
    h = mu / (mu + 3 * 30 * lam)
    coef = u.T @ (_onehot(given, 3) - 1 / 3)
    b = h
    for t in range(6):
        if t:
            b = h * (xi * b + 1 - xi)
        np.testing.assert_allclose(r.outputs[t], 1 / 3 + u @ (b[:, None] * coef), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["linearized", "exact"])
def test_test_points(mode):
    """A training point as test point reproduces its output; an ideal new point predicts its cluster plurality."""
    K, n = 4, 20
    g, true, given = _case(K, n, 3)
    cluster = np.repeat(np.arange(K), n)
    ideal = np.where(cluster[:, None] == np.arange(K)[None, :], C, D)     # (N, K): one new point per cluster
    r = th.sd_outputs(g, given, K, 2e-3, 4, mode=mode, test_gram=np.hstack([g[:, :5], ideal]).T)
    np.testing.assert_allclose(r.test_outputs[:, :5], r.outputs[:, :5], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(r.test_outputs[:, 5:].argmax(-1), np.tile(np.arange(K), (5, 1)))


def test_features_input_equals_gram_input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 7))
    xt = rng.normal(size=(6, 7))
    labels = rng.integers(0, 3, 40)
    a = th.sd_outputs(x, labels, 3, 0.01, 3, test_gram=xt @ x.T)              # p < N: weight space
    b = th.sd_outputs(x @ x.T, labels, 3, 0.01, 3, test_gram=xt @ x.T)        # kernel form
    c = th.sd_outputs(torch.from_numpy(x), torch.from_numpy(labels), 3, 0.01, 3, kind="features")
    np.testing.assert_allclose(a.outputs, b.outputs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.test_outputs, b.test_outputs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.outputs, c.outputs, rtol=0, atol=1e-12)
    sym = x[:7] @ x[:7].T                                                     # square symmetric features
    d = th.sd_outputs(sym, labels[:7], 3, 0.01, 1, kind="features")
    np.testing.assert_allclose(d.outputs, th.sd_outputs(sym @ sym, labels[:7], 3, 0.01, 1).outputs, atol=1e-12)


def test_soft_labels_and_exact_on_random_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 5))
    soft = rng.dirichlet(np.ones(4), size=30)
    r = th.sd_outputs(x, soft, 4, 0.02, 3, mode="exact")
    assert (r.residuals <= 1e-10).all()
    for t in range(4):
        assert th.fixed_point_residual(x @ x.T, r.targets[t], r.outputs[t], 0.02) <= 1e-10
    np.testing.assert_allclose(r.targets[0], soft)
    np.testing.assert_allclose(r.targets[1:], r.outputs[:-1])


def test_exact_reports_uncertifiable_residual():
    g, true, given = _case(3, 10, 2)
    with pytest.raises(RuntimeError, match="residual"):
        th.sd_outputs(g, given, 3, 1e-3, 0, mode="exact", tol=1e-30, max_iter=3)


def test_bad_arguments():
    g, true, given = _case(3, 10, 2)
    with pytest.raises(ValueError, match="variant"):
        th.sd_outputs(g, given, 3, 0.01, 2, variant="nope")
    with pytest.raises(ValueError, match="mode"):
        th.sd_outputs(g, given, 3, 0.01, 2, mode="nope")
    with pytest.raises(ValueError, match="rounds must be 1"):
        th.sd_outputs(g, given, 3, 0.01, 2, variant="pll")
    with pytest.raises(ValueError, match="xi"):
        th.sd_outputs(g, given, 3, 0.01, 2, xi=0.5)
    with pytest.raises(ValueError, match="lam"):
        th.sd_outputs(g, given, 3, 0.0, 2)
    with pytest.raises(TypeError, match="rounds"):
        th.sd_outputs(g, given, 3, 0.01, 2.0)
    with pytest.raises(ValueError, match="class indices outside"):
        th.sd_outputs(g, given + 1, 3, 0.01, 2)
    with pytest.raises(ValueError, match="rows"):
        th.sd_outputs(g[:5], given, 3, 0.01, 2)
    with pytest.raises(ValueError, match="positive semi-definite"):
        th.sd_outputs(-g, given, 3, 0.01, 2)
    with pytest.raises(ValueError, match="test_gram"):
        th.sd_outputs(g, given, 3, 0.01, 2, test_gram=np.ones((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        th.sd_outputs(np.full_like(g, np.nan), given, 3, 0.01, 2)
    with pytest.raises(ValueError, match="soft labels"):
        th.sd_outputs(g, np.ones((30, 3)), 3, 0.01, 2)
    with pytest.raises(ValueError, match="negative targets"):
        th.sd_outputs(g, given, 3, 0.01, 2, mode="exact", variant="mix", xi=2.0)
    with pytest.raises(ValueError, match="not PSD"):
        th.block_gram(3, 10, 0.1, 0.9)
    with pytest.raises(ValueError, match="fixed_point_residual"):
        th.fixed_point_residual(g, _onehot(given, 3)[:5], _onehot(given, 3), 0.01)
    with pytest.raises(ValueError, match="temperature"):
        th.fixed_point_residual(g, _onehot(given, 3), _onehot(given, 3), 0.01, temperature=0.0)
    with pytest.raises(ValueError, match="N = K n"):
        th.block_sd_outputs(given[:-1], 3, 10, C, D, 0.01, 2)


# ----------------------------------------------------------------------------- block helpers, noise


def test_block_gram_structure_and_symmetric_noise():
    g = th.block_gram(3, 4, C, D)
    assert g.shape == (12, 12) and g[0, 1] == C and g[0, 4] == D and (np.diag(g) == 1).all()
    mu = np.linalg.eigvalsh(g)
    mu2 = 1 - C + 4 * (C - D)
    np.testing.assert_allclose(sorted(set(np.round(mu, 10))), [1 - C, mu2, mu2 + 12 * D])
    noisy = th.block_gram(3, 4, C, D, eps=0.05, seed=0)
    np.testing.assert_array_equal(noisy, noisy.T)
    assert np.abs(noisy - g).max() <= 0.05 and (np.diag(noisy) == 1).all()
    np.testing.assert_array_equal(noisy, th.block_gram(3, 4, C, D, eps=0.05, seed=0))


def test_deterministic_flips_confusion():
    true, given = th.deterministic_flips(4, 60, 10)
    m = th.label_confusion(true, given, 4)
    expected = np.full((4, 4), 10 / 60)
    np.fill_diagonal(expected, 1 - 3 * 10 / 60)
    np.testing.assert_allclose(m, expected)
    with pytest.raises(ValueError, match="exceed"):
        th.deterministic_flips(4, 10, 4)


def test_symmetric_and_asymmetric_noise_rates():
    labels = np.repeat(np.arange(5), 4000)
    for gen in (th.symmetric_noise, th.asymmetric_noise):
        noisy = gen(labels, 5, 0.3, seed=3)
        np.testing.assert_array_equal(noisy, gen(torch.from_numpy(labels), 5, 0.3, seed=3))
        m = th.label_confusion(labels, noisy, 5)
        np.testing.assert_allclose(np.diag(m), 0.7, atol=0.03)
        expected = th.asymmetric_transition(5, 0.3) if gen is th.asymmetric_noise else np.full((5, 5), 0.075)
        off = ~np.eye(5, dtype=bool)
        np.testing.assert_allclose(m[off], expected[off], atol=0.02)
    t = th.asymmetric_transition(4, 0.4)
    np.testing.assert_allclose(t.sum(1), 1.0)
    np.testing.assert_allclose(np.diag(t), 0.6)
    assert t[0, 1] == pytest.approx(0.2) and t[0, 2] == pytest.approx(0.1) and t[3, 0] == pytest.approx(0.2)


def test_superclass_noise_stays_in_group():
    groups = np.array([0, 0, 0, 1, 1, 2])
    labels = np.repeat(np.arange(6), 2000)
    noisy = th.superclass_noise(labels, groups, 0.4, seed=0)
    assert (groups[noisy] == groups[labels]).all()
    assert (noisy[labels == 5] == 5).all()                  # a lone class never flips
    m = th.label_confusion(labels, noisy, 6)
    np.testing.assert_allclose(np.diag(m)[:5], 0.6, atol=0.03)
    assert m[0, 1] == pytest.approx(0.2, abs=0.03) and m[3, 4] == pytest.approx(0.4, abs=0.03)


def test_superclass_groups_recovers_obvious_groups():
    rng = np.random.default_rng(0)
    centers = np.repeat(rng.normal(size=(2, 16)) * 5, 3, axis=0) + rng.normal(size=(6, 16)) * 0.3
    labels = np.repeat(np.arange(6), 30)
    feats = centers[labels] + rng.normal(size=(180, 16)) * 0.1
    groups = th.superclass_groups(feats, labels, 6, 2)
    assert len(set(groups[:3])) == 1 and len(set(groups[3:])) == 1 and groups[0] != groups[3]


# ----------------------------------------------------------------------------- Case D: kernel-ridge SD


def _krr_problem():
    x = np.linspace(0, 1, 25)
    y = np.sin(2 * np.pi * x) + 0.3 * np.random.default_rng(0).normal(size=25)
    xt = np.linspace(0, 1, 7) + 0.03
    k = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * 0.1 ** 2))
    kt = np.exp(-((xt[:, None] - x[None, :]) ** 2) / (2 * 0.1 ** 2))    # (M, N), as sklearn's rbf_kernel
    return k, kt, y


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_case_d_spectral_equals_recursion(alpha):
    k, kt, y = _krr_problem()
    lam, rounds = 0.05, 6
    r = th.krr_self_distillation(k, y, lam, rounds, alpha=alpha, K_test=kt)
    prev, target = None, y
    for t in range(rounds + 1):
        if t:
            target = alpha * y + (1 - alpha) * prev
        coef = np.linalg.solve(k + lam * np.eye(25), target)
        prev = k @ coef
        np.testing.assert_allclose(r.train[t], prev, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r.test[t], kt @ coef, rtol=0, atol=1e-12)


def test_case_d_limit_is_amplified_ridge_and_mobahi_collapses():
    k, kt, y = _krr_problem()
    r = th.krr_self_distillation(k, y, 0.05, 3000, alpha=0.25, K_test=kt)
    ridge = np.linalg.solve(0.25 * k + 0.05 * np.eye(25), 0.25 * y)
    np.testing.assert_allclose(r.limit_train, k @ ridge, atol=1e-10)
    np.testing.assert_allclose(r.limit_test, kt @ ridge, atol=1e-10)
    np.testing.assert_allclose(r.train[-1], r.limit_train, atol=1e-8)
    mob = th.krr_self_distillation(k, np.stack([y, 2 * y], 1), 0.5, 400)
    assert mob.train.shape == (401, 25, 2)
    assert np.abs(mob.train[-1]).max() < 0.05 * np.abs(mob.train[0]).max()
    assert (np.diff(np.linalg.norm(mob.train[:, :, 0], axis=1)) <= 0).all()   # shrinks every round
    with pytest.raises(ValueError, match="alpha"):
        th.krr_self_distillation(k, y, 0.05, 3, alpha=1.5)
    with pytest.raises(ValueError, match="symmetric"):
        th.krr_self_distillation(k[:, :5], y, 0.05, 3)


def test_test_kernels_take_sklearn_orientation():
    """``K_test`` / ``test_gram`` are ``(M_test, N_train)``, as ``KernelRidge.predict`` takes them."""
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.metrics.pairwise import linear_kernel, rbf_kernel

    rng = np.random.default_rng(3)
    x, xt = rng.normal(size=(30, 4)), rng.normal(size=(9, 4))
    y = np.sin(x).sum(1)
    k, kt = rbf_kernel(x, x, gamma=0.3), rbf_kernel(xt, x, gamma=0.3)
    ridge = KernelRidge(alpha=0.1, kernel="precomputed").fit(k, y)
    r = th.krr_self_distillation(k, y, 0.1, 2, K_test=kt)
    np.testing.assert_allclose(r.test[0], ridge.predict(kt), rtol=0, atol=1e-10)
    labels = rng.integers(0, 3, 30)
    a = th.sd_outputs(x, labels, 3, 0.01, 2, test_gram=linear_kernel(xt, x))
    assert a.test_outputs.shape == (3, 9, 3)
    # a test point that is a training point predicts that point's training output
    c = th.sd_outputs(x, labels, 3, 0.01, 2, test_gram=linear_kernel(x[:4], x))
    np.testing.assert_allclose(c.test_outputs, a.outputs[:, :4], rtol=0, atol=1e-10)
    for call in (lambda: th.krr_self_distillation(k, y, 0.1, 2, K_test=kt.T),
                 lambda: th.sd_outputs(x, labels, 3, 0.01, 2, test_gram=linear_kernel(x, xt))):
        with pytest.raises(ValueError, match=r"\(M_test, N_train=30\).*old \(N_train, M_test\) layout"):
            call()
