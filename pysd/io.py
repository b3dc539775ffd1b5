"""Loading features and labels for the command line (``.npy``, ``.npz``, ``.pt``, ``.csv``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

FEATURE_KEYS = ("features", "feats", "X", "x", "embeddings")
LABEL_KEYS = ("labels", "noisy_labels", "y", "targets")


class InputError(ValueError):
    """A user file that cannot be used; the message is meant for the command line."""


def _pick(named: dict, keys, what: str, path: Path, key: Optional[str]):
    if key is not None:
        if key not in named:
            raise InputError(f"{path}: no array named {key!r} (has {sorted(named)})")
        return named[key]
    if len(named) == 1:
        return next(iter(named.values()))
    for k in keys:
        if k in named:
            return named[k]
    raise InputError(f"{path}: cannot tell which array holds the {what} (has {sorted(named)}); "
                     f"name it one of {list(keys)} or pass --{what}-key")


def load_array(path, what: str, key: Optional[str] = None) -> np.ndarray:
    """Read one array (``what`` is "features" or "labels") from a .npy/.npz/.pt/.csv file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    keys = FEATURE_KEYS if what == "features" else LABEL_KEYS
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arr = _pick({k: z[k] for k in z.files}, keys, what, p, key)
        elif suffix == ".pt":
            import torch

            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = _pick(obj, keys, what, p, key)
            arr = obj.numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj)
        elif suffix == ".csv":
            arr = np.loadtxt(p, delimiter=",", ndmin=2, dtype=np.float64)
            if what == "labels":
                if arr.shape[1] != 1:
                    raise InputError(f"{p}: a labels .csv must have one column, got {arr.shape[1]}")
                arr = arr[:, 0]
        else:
            raise InputError(f"{p}: unsupported file type {suffix or '(none)'}; use .npy, .npz, .pt or .csv")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001  (a corrupt file: say which and why)
        raise InputError(f"{p}: cannot read {what} ({type(exc).__name__}: {exc})") from exc
    return np.asarray(arr)


def load_features(path, key: Optional[str] = None) -> np.ndarray:
    """``(N, d)`` float32 features; errors name the file and the problem."""
    x = load_array(path, "features", key)
    if x.ndim != 2:
        raise InputError(f"{path}: features must be a 2-D (N, d) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{path}: features must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise InputError(f"{path}: features have NaN or inf in {bad.size} rows (first: {bad[:5].tolist()})")
    return x


def load_labels(path, key: Optional[str] = None) -> np.ndarray:
    """``(N,)`` int64 labels (integer-valued floats are accepted, e.g. from a .csv)."""
    y = load_array(path, "labels", key)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise InputError(f"{path}: labels must be a 1-D (N,) array, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise InputError(f"{path}: labels must be integers, got non-integer values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise InputError(f"{path}: labels must be >= 0, got {int(y.min())}")
    return y
