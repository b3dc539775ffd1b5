"""A cache of large CPU buffers for pysd's gradients, work arrays and outputs of ``(N, C)`` size.

Why: torch's CPU allocator returns every freed block of more than a few MiB to the operating
system, so a training loop's next step gets fresh pages for the same ``(N, C)`` gradient, and the
kernel faults in and zeroes them one by one before the op can write them.  On the 2-core
development machine writing a fresh 2 GiB buffer took 0.6-4 s, against 0.1 s for a buffer written
before.  pysd's CPU ops therefore take their buffers of ``MIN_BYTES`` or more from this cache; GPU
tensors never come here (torch's CUDA caching allocator already reuses blocks).

How a buffer is known to be free: the cache owns a numpy array per buffer and hands out a torch
tensor over a numpy view of it (``torch.from_numpy``).  A torch storage made that way keeps the numpy
view alive until the storage itself is freed, that is until no tensor of it remains anywhere
(autograd's saved tensors, ``.grad``, views of views).  The cache holds only a weak reference to the
view, and reuses the buffer once that reference is dead.

Memory: at most ``limit`` bytes in cached buffers, idle or in use, default ``min(4 GiB, physical
memory / 4)`` or the ``PYSD_CPU_CACHE_BYTES`` environment variable (bytes; 0 turns the cache off).
A request that does not fit under the limit gets a plain ``torch.empty``.  Idle buffers stay
reserved until a new buffer needs their room, :func:`empty_cpu_cache` or
:func:`set_cpu_cache_limit`.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

ENV_VAR = "PYSD_CPU_CACHE_BYTES"
MIN_BYTES = 4 << 20  # smaller blocks are reused by malloc's own free lists
ALIGN = 64  # bytes: the SIMD width the kernels load at, as torch's allocator gives
MAX_SLACK = 2  # a cached buffer serves requests down to 1 / MAX_SLACK of its size


class _Buffer:
    __slots__ = ("array", "view")

    def __init__(self, nbytes: int):
        self.array = np.empty(nbytes, dtype=np.uint8)
        self.view = None  # weak reference to the numpy view behind the tensor last handed out

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def idle(self) -> bool:
        return self.view is None or self.view() is None

    def hand_out(self, nbytes: int, dtype: torch.dtype, shape: tuple) -> Tensor:
        start = -self.array.ctypes.data % ALIGN
        view = self.array[start:start + nbytes]
        self.view = weakref.ref(view)
        return torch.from_numpy(view).view(dtype).view(shape)


_lock = threading.Lock()
_buffers: List[_Buffer] = []  # least recently handed out first
_limit: Optional[int] = None  # read from the environment on first use
_hits = 0
_misses = 0


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held the lock at fork time; the child has no such thread.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _parse_limit(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int number of bytes, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 bytes (0 turns the cache off), got {value}")
    return int(value)


def _default_limit() -> int:
    text = os.environ.get(ENV_VAR)
    if text is not None:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be an integer number of bytes, got {text!r}") from None
        return _parse_limit(value, ENV_VAR)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(4 << 30, physical // 4)


def _current_limit() -> int:
    global _limit
    if _limit is None:
        _limit = _default_limit()
    return _limit


def _reserved() -> int:
    return sum(b.nbytes for b in _buffers)


def _evict_idle(room: int) -> None:
    """Drops idle buffers, least recently used first, until ``room`` more bytes fit under the limit."""
    limit = _current_limit()
    for b in list(_buffers):
        if _reserved() + room <= limit:
            return
        if b.idle():
            _buffers.remove(b)


def _take(nbytes: int) -> Optional[_Buffer]:
    """The smallest idle buffer that holds ``nbytes`` without wasting more than half, moved to the
    most-recently-used end; else a new one if it fits under the limit; else None."""
    global _hits, _misses
    _evict_idle(0)  # buffers that were in use when the limit dropped
    need = nbytes + ALIGN
    fits = [b for b in _buffers if need <= b.nbytes <= MAX_SLACK * need and b.idle()]
    if fits:
        best = min(fits, key=lambda b: b.nbytes)
        _buffers.remove(best)
        _buffers.append(best)
        _hits += 1
        return best
    _misses += 1
    if need > _limit:
        return None
    _evict_idle(need)
    if _reserved() + need > _limit:
        return None
    fresh = _Buffer(need)
    _buffers.append(fresh)
    return fresh


def empty(shape: Sequence[int], dtype: torch.dtype, device=None) -> Tensor:
    """An uninitialised contiguous tensor, like ``torch.empty(shape, dtype=dtype, device=device)``;
    on the CPU and of ``MIN_BYTES`` or more it comes from the cache, 64-byte aligned."""
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if torch.device(device if device is not None else "cpu").type != "cpu" or nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    with _lock:
        buffer = _take(nbytes)
        if buffer is not None:
            return buffer.hand_out(nbytes, dtype, shape)
    return torch.empty(shape, dtype=dtype, device=device)


def empty_like(t: Tensor) -> Tensor:
    """:func:`empty` with ``t``'s shape, dtype and device (contiguous)."""
    return empty(t.shape, t.dtype, t.device)


def set_cpu_cache_limit(nbytes: int) -> None:
    """Caps the bytes pysd keeps in cached CPU buffers, idle or in use (0 turns the cache off).

    Idle buffers over the new cap are released at once; buffers in use then are released at the
    first request after their last tensor is freed, while the cache is still over the cap.
    """
    global _limit
    value = _parse_limit(nbytes, "nbytes")
    with _lock:
        _limit = value
        _evict_idle(0)


def empty_cpu_cache() -> int:
    """Releases every idle cached CPU buffer to the system; returns the bytes released."""
    with _lock:
        idle = [b for b in _buffers if b.idle()]
        for b in idle:
            _buffers.remove(b)
        return sum(b.nbytes for b in idle)


def cpu_cache_info() -> dict:
    """``limit_bytes``, ``reserved_bytes`` (cached buffers, idle or in use), ``in_use_bytes``,
    ``buffers`` (count), ``hits`` and ``misses`` (requests of ``MIN_BYTES`` or more served from an idle
    buffer / not) since the process started."""
    with _lock:
        _evict_idle(0)
        in_use = sum(b.nbytes for b in _buffers if not b.idle())
        return {"limit_bytes": _current_limit(), "reserved_bytes": _reserved(), "in_use_bytes": in_use,
                "buffers": len(_buffers), "hits": _hits, "misses": _misses}
