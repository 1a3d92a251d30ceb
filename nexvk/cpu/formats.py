"""How the CPU kernels see a KV format: an integer id, its bit width and its tables.

Kernels branch on `fid` at run time (one compiled kernel serves every format pair); the
numpy Format (nexvk.quant.formats) stays the specification.
"""
from dataclasses import dataclass

import numpy as np

from nexvk.cpu import lut
from nexvk.cpu.rotate import inv_sqrt
from nexvk.quant.formats import Turbo

F16, Q8_0, Q4_0, TURBO = 0, 1, 2, 3
_IDS = {"f16": F16, "q8_0": Q8_0, "q4_0": Q4_0}


@dataclass(frozen=True)
class Kind:
    fid: int
    bits: int                 # code bits (turbo formats; 0 otherwise)
    centroids: np.ndarray     # float32 (16,): the Lloyd-Max table, zero-padded
    thresholds: np.ndarray    # float32 (15,): its cell boundaries, +inf-padded
    signs: np.ndarray         # float32 (d,): the rotation's diagonal (ones when not rotated)
    inv_sqrt_d: np.float32
    pairs: np.ndarray         # uint64 (256,): two codes (low first) -> their two centroids
    vec: bool = False         # rows decode 16 codes per table lookup (nexvk.cpu.lut)


def kind(fmt):
    """The Kind of a nexvk.quant.formats.Format."""
    d = fmt.head_dim
    cent = np.zeros(16, np.float32)
    thr = np.full(15, np.inf, np.float32)
    if isinstance(fmt, Turbo):
        cent[:len(fmt.centroids)] = fmt.centroids
        thr[:len(fmt.thresholds)] = fmt.thresholds
        b = fmt.bits
        v = np.arange(1 << 2 * b)
        pairs = np.zeros((256, 2), np.float32)
        pairs[v] = np.stack([cent[v & ((1 << b) - 1)], cent[v >> b]], axis=1)
        return Kind(TURBO, b, cent, thr, fmt.signs, inv_sqrt(d), pairs.view(np.uint64)[:, 0],
                    lut.available(b, d))
    return Kind(_IDS[fmt.name], 0, cent, thr, np.ones(d, np.float32), inv_sqrt(d),
                np.zeros(256, np.uint64))
