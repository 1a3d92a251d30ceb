"""The seeded Walsh-Hadamard rotation R = H D / sqrt(d) of one vector, in place.

The same butterflies in the same order and the same final scaling as
nexvk.quant.hadamard (the numpy twin), compiled without fastmath: results are
bit-identical, which the encoder needs for codes to match numpy's.
"""
import numpy as np
from numba import njit


@njit(cache=True)
def fwht(x, inv_sqrt_d):
    """Normalized Walsh-Hadamard transform of the 1-D float32 array x, in place."""
    d = x.size
    h = 1
    while h < d:
        for j in range(0, d, 2 * h):
            for i in range(j, j + h):
                a = x[i]
                b = x[i + h]
                x[i] = a + b
                x[i + h] = a - b
        h *= 2
    for i in range(d):
        x[i] *= inv_sqrt_d


@njit(cache=True)
def rotate(x, signs, inv_sqrt_d):
    """x := R x = H D x / sqrt(d) (twin: hadamard.rotate)."""
    for i in range(x.size):
        x[i] *= signs[i]
    fwht(x, inv_sqrt_d)


@njit(cache=True)
def unrotate(x, signs, inv_sqrt_d):
    """x := R^T x = D H x / sqrt(d) (twin: hadamard.unrotate)."""
    fwht(x, inv_sqrt_d)
    for i in range(x.size):
        x[i] *= signs[i]


def inv_sqrt(d):
    """The float32 scale of fwht, rounded as nexvk.quant.hadamard rounds it."""
    return np.float32(1.0 / np.sqrt(d))
