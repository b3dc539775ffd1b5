"""topk_teacher through the extension binding ``topk_teacher`` (csrc/bind/topk_teacher.h)."""

from __future__ import annotations

import torch

from .._codes import DTYPE_NAMES, acc_dtype, stream


def backend(ext, logits, k: int, temperature: float, format: int):
    """``(N, V)`` logits → ids ``(N, k)`` int64 and values ``(N, k)`` in the accumulation dtype, same
    contract as ``pysd._ref.topk_teacher.backend``."""
    n, v = logits.shape
    ids = torch.empty(n, k, dtype=torch.int64, device=logits.device)
    vals = torch.empty(n, k, dtype=acc_dtype(logits.dtype), device=logits.device)
    ext.topk_teacher(dtype=DTYPE_NAMES[logits.dtype], rows=n, cols=v, k=k, logits=logits.data_ptr(),
                     stride=logits.stride(0), indices=ids.data_ptr(), values=vals.data_ptr(),
                     temperature=temperature, format=int(format), stream=stream(logits))
    return ids, vals
