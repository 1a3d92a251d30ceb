"""exp(x) for float32 in plain arithmetic, so that loops calling it vectorize.

numba's np.exp is a call into libm per element (no vector math library here); this is the
Cephes expf scheme: x = n ln2 + r with |r| <= ln2/2, a degree-7 polynomial for e^r, 2^n
put in the exponent bits. Within 2 ulp of np.exp on [-87, 88]; below -87 it returns 0
(the softmax weights it serves are then far under any threshold). Twin: np.exp.
"""
import numpy as np
from numba import njit

from nexvk.cpu.half import bits_to_f32

_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0, _P1, _P2, _P3, _P4, _P5 = (np.float32(c) for c in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
    5.0000001201e-1))


@njit(cache=True, inline="always")
def exp(x):
    lo = x < np.float32(-87.0)
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    fn = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - fn * _LN2_HI - fn * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    y = (p * r * r + r + np.float32(1)) * bits_to_f32((np.int32(fn) + np.int32(127)) << np.int32(23))
    return np.float32(0) if lo else y
