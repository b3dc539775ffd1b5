"""Input conversion and validation shared by the theory modules (float64 numpy)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import _checks


def as_float64(x, name: str, where: str, ndim: Optional[int] = None) -> np.ndarray:
    """numpy / torch (any device) / nested sequence → float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: {name} must be a real array, got {type(x).__name__}") from exc
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{where}: {name} must be {ndim}-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: {name} has NaN or infinite entries")
    return arr


def test_kernel(x, name: str, where: str, n: int) -> np.ndarray:
    """``(M, N)`` kernel between test and training points (scikit-learn's orientation, as
    ``pairwise_kernels(X_test, X_train)``) → float64 numpy; the pre-0.2 ``(N, M)`` layout is refused
    with a hint (it cannot be told apart when ``M == N``, so it is never transposed silently)."""
    arr = as_float64(x, name, where, ndim=2)
    if arr.shape[1] != n:
        hint = (f"; it looks like the old (N_train, M_test) layout: pass {name}.T"
                if arr.shape[0] == n else "")
        raise ValueError(f"{where}: {name} must have shape (M_test, N_train={n}), got {arr.shape}{hint}")
    return arr


def as_int_labels(x, name: str, where: str, n: int, num_classes: int) -> np.ndarray:
    """(N,) integer class indices in [0, num_classes) → int64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{where}: {name} must have shape ({n},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{where}: {name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{where}: {name} has class indices outside [0, {num_classes})")
    return arr.astype(np.int64)


def targets(labels, num_classes: int, where: str) -> np.ndarray:
    """Given labels → ``(N, K)`` float64 targets: one-hot for ``(N,)`` integers, or soft rows ``(N, K)``."""
    _checks.integer(where, "num_classes", num_classes, lo=2)
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 1:
        y = as_int_labels(arr, "labels", where, arr.shape[0], num_classes)
        out = np.zeros((y.shape[0], num_classes))
        out[np.arange(y.shape[0]), y] = 1.0
        return out
    if arr.ndim == 2:
        out = as_float64(arr, "labels", where)
        if out.shape[1] != num_classes:
            raise ValueError(f"{where}: soft labels must have shape (N, {num_classes}), got {out.shape}")
        if (out < 0).any() or np.abs(out.sum(1) - 1.0).max(initial=0.0) > 1e-8:
            raise ValueError(f"{where}: soft labels must be probability rows (non-negative, summing to 1)")
        return out
    raise ValueError(f"{where}: labels must be (N,) class indices or (N, K) soft labels, got shape {arr.shape}")


def top_k_targets(scores: np.ndarray, k: int) -> np.ndarray:
    """``(N, K)`` scores → 1/k on each row's top-k entries (ties: lower index first), as pysd.partial_labels."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(scores)
    np.put_along_axis(out, order, 1.0 / k, axis=1)
    return out
