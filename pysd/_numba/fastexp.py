"""``exp`` that LLVM can vectorize inside numba loops.

numba calls libm's scalar ``exp`` per element unless Intel SVML is installed, which made
the fallback kernels exp-bound.  :func:`exp` is an overload: float32 arguments get a
branch-free Cody-Waite reduction + degree-7 polynomial (max relative error ~2 ulp, exact 0
below the float32 normal range, NaN in NaN out, +inf above ~88.7), which vectorizes;
every other type keeps ``math.exp``.  Its body is compiled without fast-math flags: the
two-constant reduction and the rounding trick must not be re-associated (``jit_options`` below;
without it the overload inherits the caller's ``reassoc`` flag).  numba's on-disk cache of a caller
does not notice edits to this module: clear ``pysd/_numba/__pycache__`` after changing it.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)          # few mantissa bits: k * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_ROUND = np.float32(12582912.0)            # 1.5 * 2**23: adding it rounds to an integer
_LO = np.float32(-87.33654)                # below: exp underflows the normal range -> 0
_HI = np.float32(88.72284)                 # above: exp overflows -> inf
_C = tuple(np.float32(1.0 / math.factorial(i)) for i in range(8))
_ZERO, _ONE, _INF = np.float32(0.0), np.float32(1.0), np.float32(np.inf)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """float32 whose IEEE bits are the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32)) if v.type.width > 32 else builder.sext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


def exp(x):
    """``e**x``; see the module docstring for the float32 path."""
    return math.exp(x)


@overload(exp, jit_options={"fastmath": False})
def _exp_overload(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def expf(x):
        xc = min(max(x, _LO), _HI)
        k = (xc * _LOG2E + _ROUND) - _ROUND
        r = (xc - k * _LN2_HI) - k * _LN2_LO
        p = _C[7]
        p = p * r + _C[6]
        p = p * r + _C[5]
        p = p * r + _C[4]
        p = p * r + _C[3]
        p = p * r + _C[2]
        p = p * r + _C[1]
        p = p * r + _C[0]
        # 2**k from its exponent bits; k = 128 (only at the top edge) as 2**127 * 2.
        e = np.int32(k) + np.int32(127)
        top = e > np.int32(254)
        scale = _f32_from_bits((e - np.int32(1) if top else e) << np.int32(23))
        y = p * scale
        y = y * np.float32(2.0) if top else y
        y = _ZERO if x < _LO else y
        y = _INF if x > _HI else y
        return x if x != x else y

    return expf
