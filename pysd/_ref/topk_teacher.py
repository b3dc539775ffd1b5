"""Reference offline teacher pass: a stable sort (ties by lower index) and ``log_softmax``."""

from __future__ import annotations

import torch

from .._codes import TeacherFormat

LOGITS, PROBS = TeacherFormat.LOGITS, TeacherFormat.PROBS


def backend(logits: torch.Tensor, k: int, temperature: float, format: int):
    """``(N, V)`` → ids ``(N, k)`` int64, values ``(N, k)`` in the accumulation dtype.
    Two passes and an ``(N, V)`` sort: the oracle, and the fallback on GPUs without ``_C_cuda``."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    top, ids = torch.sort(x, dim=-1, descending=True, stable=True)
    top, ids = top[:, :k], ids[:, :k]
    z = top / temperature
    if format == LOGITS:
        return ids, z
    lp = z - torch.logsumexp(x / temperature, dim=-1, keepdim=True)
    return ids, (lp.exp() if format == PROBS else lp)
