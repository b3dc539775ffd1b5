"""Argument checks shared by every public function (ops, distributed, theory, recipes), one semantics each.

Each check names the op and the argument in its message: ``TypeError`` for a wrong kind of value,
``ValueError`` for a value out of range.  Add new checks here rather than next to an op.
"""

from __future__ import annotations

import importlib
import math
import numbers
from enum import IntEnum
from typing import Any, Iterable, Optional, Tuple, Type

import numpy as np
import torch
from torch import Tensor

TORCH, NUMPY = "torch", "numpy"


def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def real(op: str, name: str, value, lo: Optional[float] = None, hi: Optional[float] = None, *,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float: a real number (not a bool; TypeError), finite and within the bounds (ValueError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    bad = not math.isfinite(v)
    bad |= lo is not None and (v < lo or (lo_open and v == lo))
    bad |= hi is not None and (v > hi or (hi_open and v == hi))
    if bad:
        where = _interval(lo, hi, lo_open, hi_open) if (lo is not None or hi is not None) else ""
        raise ValueError(f"{op}: {name} must be a finite number {where}".rstrip() + f", got {value!r}")
    return v


def integer(op: str, name: str, value, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``value`` as an int: an integral number (not a bool; TypeError) within ``[lo, hi]`` (ValueError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{op}: {name} must be an int {_interval(lo, hi, False, False)}, got {v}")
    return v


def boolean(op: str, name: str, value) -> bool:
    """``value`` if it is a bool (TypeError otherwise: 0/1 are not accepted)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")
    return value


def choice(op: str, name: str, value, options: Iterable):
    """``value`` if it is one of ``options`` (strings, or None where listed); ValueError otherwise."""
    options = tuple(options)
    if (value is not None and not isinstance(value, str)) or value not in options:
        raise ValueError(f"{op}: {name} must be one of {list(options)}, got {value!r}")
    return value


def option(op: str, name: str, value, enum: Type[IntEnum], options: Iterable[str]) -> IntEnum:
    """The code (member of ``enum``) of the option string ``value``, one of ``options``."""
    return enum[choice(op, name, value, options).upper()]


def tensor(op: str, name: str, value, *, optional: bool = False) -> Optional[Tensor]:
    """``value`` if it is a torch.Tensor (or None when ``optional``); TypeError otherwise."""
    if value is None and optional:
        return None
    if not isinstance(value, Tensor):
        extra = " or None" if optional else ""
        raise TypeError(f"{op}: {name} must be a torch.Tensor{extra}, got {type(value).__name__}")
    return value


def _from_numpy(x: np.ndarray) -> Tensor:
    # torch.from_numpy shares memory: a read-only array would become a writable tensor (torch warns),
    # and negative strides are not representable; both are copied.
    if not x.flags.writeable or any(s < 0 for s in x.strides):
        x = np.array(x, copy=True)
    return torch.from_numpy(x)


def array(op: str, name: str, value, *, sequences: bool = False) -> Tuple[Tensor, Any]:
    """``(tensor, kind)`` for a torch tensor, numpy array or DLPack producer (CuPy, JAX, ...): no copy
    when possible (read-only and negative-stride numpy views are copied).  ``kind`` feeds :func:`restore`.
    With ``sequences`` nested lists / tuples of numbers are accepted too (as numpy)."""
    if sequences and isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{op}: {name} must be an array of numbers, got {type(value).__name__}") from exc
        if value.dtype == object:
            raise TypeError(f"{op}: {name} must be an array of numbers, got a ragged or mixed sequence")
    if isinstance(value, Tensor):
        return value, TORCH
    if isinstance(value, np.ndarray):
        return _from_numpy(value), NUMPY
    if hasattr(value, "__dlpack__"):
        return torch.from_dlpack(value), type(value).__module__.split(".")[0]
    raise TypeError(f"{op}: {name} must be a torch.Tensor, a numpy array or a DLPack array (e.g. CuPy), "
                    f"got {type(value).__name__}")


def restore(t: Optional[Tensor], kind: Any):
    """``t`` as the kind of array :func:`array` saw (numpy copies to the host)."""
    if kind == TORCH or t is None:
        return t
    if kind == NUMPY:
        return t.detach().cpu().numpy()
    return importlib.import_module(kind).from_dlpack(t.detach())


def rows_list(mask: Tensor) -> str:
    """``"[2, 9] (2 rows)"``: the first few rows where ``mask`` holds, for error messages."""
    rows = mask.nonzero().flatten()
    shown = ", ".join(str(int(r)) for r in rows[:5])
    return f"[{shown}{', ...' if rows.numel() > 5 else ''}] ({rows.numel()} row{'s' if rows.numel() != 1 else ''})"


def hard_weight(op: str, value, has_teacher: bool, has_target: bool) -> float:
    """kd_loss's ``hard_weight``: ``None`` means 0.5 with a teacher and a target, 1.0 with a target alone
    (plain CE), 0 without a target; an explicit 0 with a target keeps it for ``ignore_index`` only.
    With no teacher an explicit 0 would leave no term: ValueError."""
    if value is None:
        return 0.0 if not has_target else (0.5 if has_teacher else 1.0)
    v = real(op, "hard_weight", value, 0.0)
    if v == 0.0 and not has_teacher:
        raise ValueError(f"{op}: hard_weight=0 with teacher=None leaves no loss term; pass hard_weight > 0 "
                         "or None (1.0: plain cross-entropy)")
    return v
