"""numba CPU fallbacks, used when the C++ extension is absent.

Kernels are compiled on first use (``cache=True`` unless ``PYSD_NUMBA_CACHE=0``)
and run in parallel over rows with ``prange``.
"""

import os

CACHE = os.environ.get("PYSD_NUMBA_CACHE", "1") != "0"


def match_torch_threads() -> int:
    """Sets numba's thread count for the calling thread to ``torch.get_num_threads()`` (capped
    at numba's pool size) and returns it; every numba backend calls it before a launch."""
    import numba
    import torch

    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n
