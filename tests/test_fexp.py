"""The C++ kernels' inline float ``exp`` (``csrc/include/pysd/common.h``) against float64 numpy,
run through the same ISA dispatch as the kernels (``pysd._C.fexp``)."""

import numpy as np
import pytest

_C = pytest.importorskip("pysd._C")
EPS = np.finfo(np.float32).eps


def _fexp(x, nonpositive=False):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.full_like(x, np.nan)
    _C.fexp(x=x.ctypes.data, out=out.ctypes.data, n=x.size, nonpositive=nonpositive)
    return out


def test_float32_accuracy_over_the_normal_range():
    a = np.linspace(-87.3, 88.72, 1_000_001, dtype=np.float32)
    ref = np.exp(a.astype(np.float64))
    rel = np.abs(_fexp(a) - ref) / ref
    assert rel.max() < 1.0 * EPS  # 0.73 eps measured


def test_top_edge_is_finite_up_to_float_max():
    """Arguments in (127.5 ln 2, 88.72] round to k = 128; 2^128 is not a float."""
    a = np.linspace(88.3, 88.7228, 20_001, dtype=np.float32)
    ref = np.exp(a.astype(np.float64))
    out = _fexp(a)
    assert np.isfinite(out).all()
    assert (np.abs(out - ref) / ref).max() < 2.0 * EPS


def test_nonpositive_variant_matches_on_its_domain():
    a = np.concatenate([np.linspace(-87.3, 0.0, 300_001, dtype=np.float32), np.float32([-0.0])])
    np.testing.assert_array_equal(_fexp(a, nonpositive=True), _fexp(a))


@pytest.mark.parametrize("nonpositive", [False, True])
def test_edges_and_special_values(nonpositive):
    a = np.array([0.0, -0.0, -88.0, -1e4, -np.inf, np.nan], dtype=np.float32)
    out = _fexp(a, nonpositive)
    np.testing.assert_array_equal(out[:2], [1.0, 1.0])
    np.testing.assert_array_equal(out[2:5], [0.0, 0.0, 0.0])  # below the normal range: 0
    assert np.isnan(out[5])
    if not nonpositive:
        assert np.isposinf(_fexp(np.float32([88.73, 89.0, 1e4, np.inf]))).all()
