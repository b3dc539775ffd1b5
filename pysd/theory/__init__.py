"""Closed-form self-distillation theory (float64, CPU): the validation oracle of pysd.

* :func:`sd_outputs` / :class:`SDResult`: every round of multi-round SD (``"sd"``),
  label mixing (``"mix"``) and the partial-label student (``"pll"``) of a linear probe,
  linearised closed form or exact softmax CE certified by its fixed-point residual
  (:func:`fixed_point_residual` checks any trained probe the same way).
* Block-structured Gram matrices: :func:`block_gram`, :func:`shrink_factors`,
  :func:`block_sd_outputs` (the scalar closed form in ``O(K N)``), :func:`label_confusion`,
  :func:`min_rounds` and :func:`compare_margins`.
* Label noise: :func:`symmetric_noise`, :func:`asymmetric_noise`, :func:`superclass_noise`,
  :func:`superclass_groups`, :func:`deterministic_flips`.
* :func:`krr_self_distillation`: kernel-ridge SD (Mobahi et al. 2020; Borup & Andersen 2021).

The model and its closed forms follow Jeong & Chung (arXiv 2402.10482); each function states the
formulas it implements.
"""

from .block import (MarginComparison, MinRounds, block_gram, block_sd_outputs, compare_margins, label_confusion,
                    min_rounds, shrink_factors)
from .closed_form import SDResult, sd_outputs
from .exact import fixed_point_residual
from .krr import KRRResult, krr_self_distillation
from .noise import (asymmetric_noise, asymmetric_transition, deterministic_flips, superclass_groups,
                    superclass_noise, symmetric_noise)

__all__ = [
    "SDResult", "sd_outputs", "fixed_point_residual",
    "block_gram", "shrink_factors", "block_sd_outputs", "label_confusion", "min_rounds", "MinRounds",
    "compare_margins", "MarginComparison",
    "symmetric_noise", "asymmetric_noise", "asymmetric_transition", "superclass_noise", "superclass_groups",
    "deterministic_flips",
    "krr_self_distillation", "KRRResult",
]
