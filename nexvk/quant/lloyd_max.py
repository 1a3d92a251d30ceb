"""Lloyd-Max codebooks for one coordinate of a uniformly random unit vector in R^d.

After the random rotation each coordinate t follows the density proportional to
(1 - t^2)^((d-3)/2) on [-1, 1] (variance 1/d). The codebook minimizing E(t - c(t))^2 is found
numerically for that exact law at each d: Lloyd's iteration on a fine grid, with cumulative
moments so each step is O(levels). Thresholds are midpoints of neighbouring centroids.
"""
import functools

import numpy as np

_GRID = 1 << 20


def _law(head_dim):
    """Grid in z = t*sqrt(d) units with cumulative mass and first moment (float64).
    NOTE: not cached: its 4 arrays of 2^20 float64 (32 MiB) would stay resident for the
    life of the process; the codebooks built from it are cached instead."""
    d = head_dim
    zmax = np.sqrt(d)
    z = np.linspace(-zmax, zmax, _GRID + 1)
    t = z / zmax
    with np.errstate(divide="ignore"):
        logf = 0.5 * (d - 3) * np.log1p(-t * t)
    f = np.exp(logf - logf.max())
    f[~np.isfinite(f)] = 0.0
    # trapezoid cumulative integrals of f and z*f
    dz = z[1] - z[0]
    m0 = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * dz)])
    zf = z * f
    m1 = np.concatenate([[0.0], np.cumsum(0.5 * (zf[1:] + zf[:-1]) * dz)])
    z2f = z * z * f
    m2 = np.concatenate([[0.0], np.cumsum(0.5 * (z2f[1:] + z2f[:-1]) * dz)])
    total = m0[-1]
    return z, m0 / total, m1 / total, m2 / total


def _cell_moments(z, m, edges):
    return np.diff(np.interp(edges, z, m))


@functools.lru_cache(maxsize=None)
def codebook(bits, head_dim, iters=5000, tol=1e-12):
    """(centroids, thresholds) in unit-vector units (t, not t*sqrt(d)), float32, ascending.

    centroids: (2**bits,), thresholds: (2**bits - 1,) midpoints. Also returns nothing else:
    the expected per-coordinate MSE is available from expected_mse().
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"codebook bits must be 1..8, got {bits}")
    z, m0, m1, _ = _law(head_dim)
    n = 1 << bits
    # start from equal-probability bins of the law
    p = (np.arange(n) + 0.5) / n
    c = np.interp(p, m0, z)
    for _ in range(iters):
        edges = np.concatenate([[z[0]], 0.5 * (c[1:] + c[:-1]), [z[-1]]])
        mass = _cell_moments(z, m0, edges)
        first = _cell_moments(z, m1, edges)
        new = np.where(mass > 0, first / np.maximum(mass, 1e-300), c)
        new = 0.5 * (new - new[::-1])  # the law is symmetric: keep the codebook exactly so
        if np.max(np.abs(new - c)) < tol:
            c = new
            break
        c = new
    scale = 1.0 / np.sqrt(head_dim)
    centroids = (c * scale).astype(np.float32)
    thresholds = (0.5 * (c[1:] + c[:-1]) * scale).astype(np.float32)
    return centroids, thresholds


def expected_mse(bits, head_dim):
    """E(z - c(z))^2 per coordinate in z = t*sqrt(d) units, i.e. normalized vector MSE."""
    z, m0, m1, m2 = _law(head_dim)
    c = codebook(bits, head_dim)[0].astype(np.float64) * np.sqrt(head_dim)
    edges = np.concatenate([[z[0]], 0.5 * (c[1:] + c[:-1]), [z[-1]]])
    mass = _cell_moments(z, m0, edges)
    first = _cell_moments(z, m1, edges)
    second = _cell_moments(z, m2, edges)
    return float(np.sum(second - 2 * c * first + c * c * mass))
