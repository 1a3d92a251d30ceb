"""Seeded randomized Walsh-Hadamard rotation R = H D / sqrt(d), in float32.

The butterfly order and the final scaling are exactly those of shaders/include/wht.glsl, so
numpy and the device produce bit-identical rotations.
"""
import numpy as np


def signs(head_dim, seed=0):
    """The diagonal D: seeded +-1 signs, float32 (head_dim,). Same seed, same rotation."""
    rng = np.random.default_rng([int(seed), int(head_dim), 0x7E57])
    return np.where(rng.random(head_dim) < 0.5, -1.0, 1.0).astype(np.float32)


def fwht(x):
    """Normalized fast Walsh-Hadamard transform along the last axis (H/sqrt(d)), float32."""
    x = np.array(x, dtype=np.float32)  # copy: the butterflies work in place
    d = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < d:
        v = x.reshape(*lead, d // (2 * h), 2, h)
        a = v[..., 0, :].copy()
        b = v[..., 1, :]
        v[..., 0, :] = a + b
        v[..., 1, :] = a - b
        h *= 2
    x *= np.float32(1.0 / np.sqrt(d))
    return x


def rotate(x, s):
    """y = H D x / sqrt(d)   (..., d) -> (..., d)."""
    return fwht(np.asarray(x, np.float32) * s)


def unrotate(y, s):
    """x = D H y / sqrt(d), the inverse (and transpose) of rotate."""
    return fwht(y) * s
