"""Synthetic data shared by the test modules."""

import numpy as np


def blobs(n=240, c=4, d=8, noise=0.3, seed=0):
    """``(x (n, d) float32, noisy labels (n,) int64, clean labels (n,))``: c Gaussian clusters, a
    fraction ``noise`` of the labels moved to another class."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(c, d)) * 4
    y = g.integers(0, c, n)
    x = (centres[y] + g.normal(size=(n, d))).astype(np.float32)
    noisy = np.where(g.random(n) < noise, (y + g.integers(1, c, n)) % c, y)
    return x, noisy.astype(np.int64), y
