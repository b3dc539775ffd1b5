"""The vectorizable float32 ``exp`` of the numba fallbacks against float64 numpy."""

import numba
import numpy as np

from pysd._numba.fastexp import exp

_FAST = {"nsz", "arcp", "contract", "reassoc"}  # the callers' flags: must not break the reduction


@numba.njit(fastmath=_FAST)
def _apply(a, out):
    for i in range(a.shape[0]):
        out[i] = exp(a[i])


def _run(a):
    out = np.empty_like(a)
    _apply(a, out)
    return out


def test_float32_accuracy_over_the_normal_range():
    a = np.linspace(-87.3, 88.7, 400_001, dtype=np.float32)
    ref = np.exp(a.astype(np.float64))
    rel = np.abs(_run(a) - ref) / ref
    assert rel.max() < 2.5 * np.finfo(np.float32).eps


def test_float32_edges_and_special_values():
    a = np.array([0.0, -0.0, -88.0, -1e4, -np.inf, 89.0, 1e4, np.inf, np.nan], dtype=np.float32)
    out = _run(a)
    np.testing.assert_array_equal(out[:2], [1.0, 1.0])
    np.testing.assert_array_equal(out[2:5], [0.0, 0.0, 0.0])   # below the normal range (subnormal results): 0
    assert np.isposinf(out[5:8]).all()
    assert np.isnan(out[8])


def test_float64_is_libm():
    a = np.linspace(-700.0, 700.0, 10_001)
    np.testing.assert_array_equal(_run(a), np.exp(a))
