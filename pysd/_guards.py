"""Argument guards shared by the ops: allocation sizes, host-side integers, finiteness on request.

Each rule is written once here; messages name the op, the argument and what was expected.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

_FINITE_ENV = "PYSD_CHECK_FINITE"


def _device_memory(device) -> Optional[int]:
    """Total bytes of ``device`` (physical RAM for the CPU), or None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    if dev.type == "cpu":
        try:
            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return None


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_alloc(op: str, name: str, value, nbytes: float, what: str, device="cpu") -> None:
    """Raise ``ValueError`` when an allocation of ``nbytes`` (driven by argument ``name=value``) cannot
    fit in the memory of ``device``, before the allocator sees it."""
    total = _device_memory(device)
    if total is not None and nbytes > total:
        raise ValueError(f"{op}: {name}={value} would need {_bytes(nbytes)} for {what}, more than the "
                         f"{torch.device(device).type} memory ({_bytes(total)})")


def check_device(op: str, device) -> torch.device:
    """``torch.device(device)``, raising ``ValueError`` for a CUDA device torch cannot use here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{op}: device must be a torch device or its name, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{op}: device={str(device)!r} but CUDA is not available in this torch build or machine")
    return dev


def finite_checks(check_finite: Optional[bool]) -> bool:
    """The effective ``check_finite``: the argument, or the ``PYSD_CHECK_FINITE`` environment variable
    (``1`` / ``true`` / ``yes``) when the argument is None."""
    if check_finite is None:
        return os.environ.get(_FINITE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool or None, got {type(check_finite).__name__}")
    return check_finite


def require_finite(op: str, name: str, t: Optional[Tensor]) -> None:
    """Raise ``ValueError`` naming ``name`` if ``t`` holds NaN or inf (one host synchronisation)."""
    if t is None or not t.numel() or not (t.is_floating_point() or t.is_complex()):
        return
    bad = ~torch.isfinite(t.detach())
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{op}: {name} has {count} NaN or inf entr{'y' if count == 1 else 'ies'} "
                         f"(first at index {first})")
