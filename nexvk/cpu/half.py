"""float16 <-> float32 inside numba kernels (numba has no float16 type on the CPU).

Halves travel as uint16 bit patterns. to_f32 is exact for every finite half (subnormals
included): the half's exponent and mantissa bits, shifted into a float32, are off by a
factor 2^112, which one exact multiply restores; it is branch-free, so loops over halves
vectorize. from_f32 rounds to nearest even like numpy's astype(float16) (F. Giesen's
float_to_half_fast3_rtne); values beyond the half range become +-inf. Infinities and NaNs
are not decoded (the cache refuses them before they are stored).
The numpy twins are `x.view(np.float16).astype(np.float32)` and `x.astype(np.float16)`.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic


@intrinsic
def bits_to_f32(typingctx, x):
    """The float32 whose bit pattern is the low 32 bits of integer x."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if x.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif x.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(x), codegen


@intrinsic
def f32_to_bits(typingctx, x):
    """The bit pattern of float32 x as an unsigned 32-bit integer."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(x), codegen


_TWO_112 = np.float32(2.0 ** 112)


@njit(cache=True, inline="always")
def to_f32(h):
    """float32 value of the half with bits h (finite halves)."""
    h = np.uint32(h)
    mag = bits_to_f32((h & np.uint32(0x7FFF)) << np.uint32(13)) * _TWO_112
    return bits_to_f32(f32_to_bits(mag) | ((h & np.uint32(0x8000)) << np.uint32(16)))


@njit(cache=True, inline="always")
def from_f32(f):
    """Bits of float32 f rounded to the nearest half (ties to even), as a uint16."""
    u = np.int64(f32_to_bits(f))
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x47800000:              # beyond the half range (or inf / nan)
        o = 0x7E00 if a > 0x7F800000 else 0x7C00
    elif a < 0x38800000:             # a half subnormal or zero: the FPU rounds it
        o = np.int64(f32_to_bits(bits_to_f32(a) + np.float32(0.5))) - 0x3F000000
    else:
        o = (a + ((15 - 127) << 23) + 0xFFF + ((a >> 13) & 1)) >> 13
    return np.uint16(o | sign)
