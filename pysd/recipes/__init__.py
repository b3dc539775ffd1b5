"""Training recipes built on the pysd kernels.

* :func:`linear_probe_sd`: multi-round self-distillation and the partial-label student
  of a linear probe on fixed features (Jeong & Chung), matching :mod:`pysd.theory`.
"""

from .linear_probe import LinearProbeResult, linear_probe_sd

__all__ = ["linear_probe_sd", "LinearProbeResult"]
