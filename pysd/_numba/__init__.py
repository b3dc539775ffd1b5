"""numba CPU fallbacks, used when the C++ extension is absent.

Kernels are compiled on first use (``cache=True`` unless ``PYSD_NUMBA_CACHE=0``)
and run in parallel over rows with ``prange``.
"""

import os

CACHE = os.environ.get("PYSD_NUMBA_CACHE", "1") != "0"
