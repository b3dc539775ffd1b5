"""The rules every layer shares, written once: option codes (mirrored by the C++ enums, which the
extension modules export as ``codes``; ``tests/test_backend.py`` checks the two agree), dtype names
and accumulation dtypes of the kernels, the CUDA stream handle, and sentinels."""

from __future__ import annotations

from enum import IntEnum
from typing import Dict, Type

import torch

FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
               torch.float16: "float16"}
NO_INDEX = 2**31 - 1  # empty slot of a kNN list (paired with -inf): loses every tie; also the row-count bound


class Divergence(IntEnum):
    """``kd_loss(divergence=...)``: ``pysd::kd_loss::Divergence``."""

    FKL = 0
    RKL = 1
    JSD = 2


class TeacherFormat(IntEnum):
    """``kd_loss(teacher_format=...)``: ``pysd::kd_loss::TeacherFormat`` (NONE: no teacher)."""

    NONE = -1
    LOGITS = 0
    PROBS = 1
    LOGPROBS = 2


class Reduction(IntEnum):
    """``kd_loss(reduction=...)`` (Python side only: the kernels return per-row losses)."""

    NONE = 0
    MEAN = 1
    SUM = 2
    BATCHMEAN = 3


class Solver(IntEnum):
    """``propagate(solver=...)``: ``pysd::propagate::Solver``."""

    CG = 0
    ITERATE = 1


class Tail(IntEnum):
    """``SparseTeacher(tail=...)``: ``pysd::sparse_kd_loss::Tail`` (the mass outside the top-k)."""

    RENORMALIZE = 0
    BUCKET = 1
    UNIFORM = 2


class Phase(IntEnum):
    """The steps of ``pysd::sparse_kd_loss`` (``pysd::sparse_kd_loss::Phase``; internal)."""

    FUSED = 0
    STATS = 1
    JSD_TAIL = 2
    FINALIZE = 3
    APPLY = 4


# The IntEnums the extension modules mirror, by the key of their ``codes`` dict.
EXPORTED: Dict[str, Type[IntEnum]] = {"kd_loss.Divergence": Divergence, "kd_loss.TeacherFormat": TeacherFormat,
                                      "propagate.Solver": Solver, "sparse_kd_loss.Tail": Tail,
                                      "sparse_kd_loss.Phase": Phase}


def code(enum: Type[IntEnum], name: str) -> IntEnum:
    """The member of ``enum`` for the public option string ``name`` (``"fkl"`` → ``Divergence.FKL``)."""
    return enum[name.upper()]


def options(enum: Type[IntEnum]) -> tuple:
    """The public option strings of ``enum`` (lower-case member names, NONE excluded where it is internal)."""
    return tuple(m.name.lower() for m in enum if not (enum is TeacherFormat and m is TeacherFormat.NONE))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stream(t: torch.Tensor) -> int:
    """The handle of the current CUDA stream of ``t``'s device (0 for CPU tensors)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0
