"""pysd.sklearn: scikit-learn's estimator checks, agreement with sklearn's LabelSpreading, label values,
new-point predictions against a brute-force reference, and refine_labels."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading
from sklearn.utils.estimator_checks import parametrize_with_checks

from pysd.sklearn import GraphLabelSpreading, refine_labels
from readme_blocks import run_section

# scikit-learn's LabelSpreading(kernel="knn") model, as the module docstring states it.
SKLEARN_CONFIG = dict(include_self=True, metric="l2", power=0.0, symmetrize="none", normalize="sym_in",
                      solver="iterate", class_mass_norm=False, max_iter=200, tol=0.0)

# The checks fit data sets of 10 samples: n_neighbors=5 keeps them above the neighbour count (a smaller data
# set than n_neighbors + 1 is refused with a ValueError, as scikit-learn's own kNN estimators do).
CHECKED = [GraphLabelSpreading(n_neighbors=5), GraphLabelSpreading(n_neighbors=5, **{**SKLEARN_CONFIG, "max_iter": 30})]

MINUS_ONE = ("-1 marks an unlabelled sample (the semi-supervised convention), so labels {-1, 1} are one class; "
             "scikit-learn exempts its own LabelSpreading from this case by name")
COSINE_ZERO_ROW = ("metric='cosine' refuses an all-zero row (it has no direction) with a ValueError; the "
                   "check's integer-cast data has one")


def expected_failures(est):
    out = {"check_classifiers_classes": MINUS_ONE}
    if est.metric == "cosine":
        out["check_estimators_dtypes"] = COSINE_ZERO_ROW
    return out


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _semi_supervised(seed=0, n=240, d=5, c=3, unlabelled=0.7):
    rng = np.random.default_rng(seed)
    x, y = make_blobs(n, d, centers=c, cluster_std=3.0, random_state=seed)
    ys = y.copy()
    ys[rng.random(n) < unlabelled] = -1
    return x, y, ys


@pytest.mark.parametrize("alpha", [0.2, 0.6])
def test_matches_sklearn_label_spreading(alpha):
    x, _, ys = _semi_supervised()
    xt = _semi_supervised(seed=1, n=50)[0]
    ref = LabelSpreading(kernel="knn", n_neighbors=7, alpha=alpha, max_iter=1000, tol=1e-12).fit(x, ys)
    est = GraphLabelSpreading(n_neighbors=7, alpha=alpha, **SKLEARN_CONFIG).fit(x, ys)
    np.testing.assert_allclose(est.label_distributions_, ref.label_distributions_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(est.transduction_, ref.transduction_)
    np.testing.assert_array_equal(est.classes_, ref.classes_)
    np.testing.assert_allclose(est.predict_proba(xt), ref.predict_proba(xt), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(est.predict(xt), ref.predict(xt))
    assert est.score(x, np.where(ys >= 0, ys, ref.transduction_)) == ref.score(x, np.where(ys >= 0, ys,
                                                                                        ref.transduction_))


@pytest.mark.parametrize("kind", ["U", "O"])
def test_string_labels_and_unlabelled(kind):
    x, y, ys = _semi_supervised(seed=2)
    names = np.array(["cat", "dog", "emu"])[y].astype(kind)
    given = names.astype(object)
    given[ys < 0] = -1                       # object array: strings plus the -1 marker
    if kind == "U":
        given = names                        # a str array has no marker: every sample labelled
    est = GraphLabelSpreading(n_neighbors=8).fit(x, given)
    assert list(est.classes_) == ["cat", "dog", "emu"]
    assert set(est.transduction_) <= {"cat", "dog", "emu"} and est.transduction_.shape == (240,)
    ints = GraphLabelSpreading(n_neighbors=8).fit(x, np.where(given == -1, -1, y) if kind == "O" else y)
    np.testing.assert_allclose(est.label_distributions_, ints.label_distributions_)
    np.testing.assert_array_equal(est.transduction_, est.classes_[ints.transduction_])
    np.testing.assert_array_equal(est.predict(x[:20]), est.classes_[ints.predict(x[:20])])


def _reference_proba(est, xq):
    """Brute force: all similarities, stable sort (ties to the lower index), the affinity recipe."""
    xt = est.X_
    if est.metric == "cosine":
        a = xt / np.linalg.norm(xt, axis=1, keepdims=True)
        s = (xq / np.linalg.norm(xq, axis=1, keepdims=True)) @ a.T
        w_of = lambda v: np.clip(v, 0, None) ** est.power  # noqa: E731
    else:
        s = -((xq[:, None, :] - xt[None, :, :]) ** 2).sum(-1)
        d2 = ((xt[:, None, :] - xt[None, :, :]) ** 2).sum(-1) + np.diag(np.full(len(xt), np.inf))
        sigma2 = np.sort(d2, axis=1)[:, est.n_neighbors - 1].mean()   # the training graph's k-th neighbour
        w_of = lambda v: np.exp(-est.power * -v / sigma2)  # noqa: E731
    order = np.argsort(-s, axis=1, kind="stable")[:, :est.n_neighbors]
    w = w_of(np.take_along_axis(s, order, 1))
    p = (w[:, :, None] * est.label_distributions_[order]).sum(1)
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_predict_proba_is_exact_weighted_neighbour_mean(metric):
    x, _, ys = _semi_supervised(seed=3, n=150)
    xq = _semi_supervised(seed=4, n=40)[0]
    est = GraphLabelSpreading(n_neighbors=6, metric=metric, power=2.0).fit(x, ys)
    np.testing.assert_allclose(est.predict_proba(xq), _reference_proba(est, xq), rtol=1e-6, atol=1e-9)


def test_neighbour_ties_go_to_the_lower_index():
    x, _, ys = _semi_supervised(seed=5, n=60)
    x[40] = x[3]                              # duplicates of point 3 at higher indices
    x[50] = x[3]
    ys[3], ys[40], ys[50] = 0, 1, 2
    est = GraphLabelSpreading(n_neighbors=1, metric="l2", solver="iterate", normalize="sym_in").fit(x, ys)
    np.testing.assert_allclose(est.predict_proba(x[[3]])[0], est.label_distributions_[3])


def test_sym_in_equals_sym_on_a_symmetrised_graph():
    x, _, ys = _semi_supervised(seed=6)
    a = GraphLabelSpreading(normalize="sym").fit(x, ys)
    b = GraphLabelSpreading(normalize="sym_in").fit(x, ys)
    np.testing.assert_allclose(a.label_distributions_, b.label_distributions_, rtol=1e-6, atol=1e-9)


def test_pipeline_and_grid_search():
    x, y = make_blobs(200, 4, centers=3, cluster_std=2.0, random_state=7)
    grid = GridSearchCV(make_pipeline(StandardScaler(), GraphLabelSpreading()),
                        {"graphlabelspreading__n_neighbors": [5, 10]},
                        cv=3).fit(x, y)
    assert grid.best_score_ > 0.9
    assert grid.predict(x[:5]).shape == (5,)


def test_refine_labels_cleans_a_noisy_training_set():
    from sklearn.linear_model import LogisticRegression

    x, y = make_blobs(300, 6, centers=4, cluster_std=2.5, random_state=8)
    rng = np.random.default_rng(8)
    noisy = y.copy()
    flip = rng.random(300) < 0.3
    noisy[flip] = (y[flip] + rng.integers(1, 4, flip.sum())) % 4
    names = np.array(["a", "b", "c", "d"])
    r = refine_labels(x, names[noisy], n_neighbors=10)
    assert list(r.classes) == list(names)
    assert (r.labels == names[y]).mean() > (noisy == y).mean() + 0.2
    assert r.pred_probs.shape == (300, 4) and np.allclose(r.pred_probs.sum(1), 1)
    assert ((r.weights >= 0) & (r.weights <= r.weights.max())).all() and r.weights.max() > 0
    assert flip[r.issues[:50]].mean() > 0.9              # the top of the ranking is flipped labels
    clf = LogisticRegression(max_iter=500).fit(x, r.labels, sample_weight=r.weights)
    assert clf.score(x, names[y]) > 0.9


def test_bad_arguments():
    x, _, ys = _semi_supervised(seed=9, n=20)
    with pytest.raises(ValueError, match="n_neighbors=30.*n_samples >= 31, got n_samples=20"):
        GraphLabelSpreading(n_neighbors=30).fit(x, ys)
    with pytest.raises(ValueError, match="normalize"):
        GraphLabelSpreading(normalize="nope").fit(x, ys)
    with pytest.raises(ValueError, match="no labelled sample"):
        GraphLabelSpreading(n_neighbors=3).fit(x, np.full(20, -1))
    with pytest.raises(ValueError, match="solver"):
        GraphLabelSpreading(n_neighbors=3, solver="nope").fit(x, ys)


def test_readme_section_runs():
    scope = run_section("Use with scikit-learn")
    assert scope["model"].transduction_.shape[0] == scope["X"].shape[0]
