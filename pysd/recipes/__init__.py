"""Training recipes built on the pysd kernels.

* :func:`linear_probe_sd`: multi-round self-distillation and the partial-label student
  of a linear probe on fixed features (Jeong & Chung), matching :mod:`pysd.theory`.
* :class:`LabelRefinery` / :func:`aml_kd_loss`: AML-KD's label refinery (Jiang et al.).
"""

from .linear_probe import LinearProbeResult, linear_probe_sd
from .refinery import LabelRefinery, RefineResult, aml_kd_loss

__all__ = ["linear_probe_sd", "LinearProbeResult", "LabelRefinery", "RefineResult", "aml_kd_loss"]
