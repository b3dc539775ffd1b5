"""partial_labels through the extension binding ``partial_labels`` (csrc/bind/partial_labels.h)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._codes import DTYPE_NAMES, stream


def backend(ext, probs: Tensor, *, k: int, renormalize: bool) -> Tensor:
    """``(N, C)`` targets of the ``(N, C)`` rows ``probs`` (unit column stride)."""
    n, c = probs.shape
    out = torch.empty((n, c), dtype=probs.dtype, device=probs.device)
    ext.partial_labels(dtype=DTYPE_NAMES[probs.dtype], rows=n, cols=c, probs=probs.data_ptr(),
                       probs_stride=probs.stride(0), out=out.data_ptr(), out_stride=c, k=k, renormalize=renormalize,
                       stream=stream(probs))
    return out
