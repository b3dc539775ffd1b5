"""Array interchange for the graph/propagation ops: numpy, torch and DLPack
producers (CuPy, JAX, ...) in; the caller's kind out."""

from __future__ import annotations

import importlib
from typing import Any, Tuple

import numpy as np
import torch
from torch import Tensor

TORCH, NUMPY = "torch", "numpy"


def to_torch(x: Any, op: str, name: str) -> Tuple[Tensor, Any]:
    """``(tensor, kind)`` for a torch tensor, numpy array or DLPack producer (no copy when possible).

    numpy views of any strides (negative included) and read-only arrays are accepted (copied when
    torch cannot share them); a numpy array of non-numbers (strings, objects) is a ``TypeError``.
    """
    if isinstance(x, Tensor):
        return x, TORCH
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":
            raise TypeError(f"{op}: {name} must hold numbers, got a numpy array of dtype {x.dtype}")
        shared = np.ascontiguousarray(x)
        return torch.from_numpy(shared if shared.flags.writeable else shared.copy()), NUMPY
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x), type(x).__module__.split(".")[0]
    raise TypeError(f"{op}: {name} must be a torch.Tensor, numpy array or DLPack array, got {type(x).__name__}")


def restore(t: Tensor, kind: Any):
    """``t`` as the kind of array :func:`to_torch` saw (numpy copies to the host)."""
    if kind == TORCH or t is None:
        return t
    if kind == NUMPY:
        return t.detach().cpu().numpy()
    return importlib.import_module(kind).from_dlpack(t.detach())
