"""Y = X W^T for a prefill step (T > 1 rows), W a CpuWeight: the twin of kernels/mul_mm.py.

Row panels of W are dequantized (one thread, a loop over the panel's rows innermost) into a
reused float32 scratch of at most PANEL_FLOATS, laid out (K, rows) as the chunked layout
gives it, and multiplied by numpy's BLAS sgemm, which owns the cores in this phase (the
compiled kernels run on one thread meanwhile: OpenBLAS and numba threads both busy on the
same cores slow each other down several times; cpu-kernels.md). Measured here, dequantizing
is a few % of the product at 64+ rows, so a tiled compiled kernel would gain little.
"""
import numpy as np

from nexvk.cpu.jit import kernel, numba
from nexvk.cpu.weights import R

PANEL_FLOATS = 1 << 21   # 8 MiB of float32 weights dequantized at a time


def ref(w, x, y=None):
    """w: (rows, K) float32, x: (T, K) -> (T, rows) = x @ w.T, added to y if given."""
    out = (np.asarray(x, np.float32) @ w.T).astype(np.float32)
    return out if y is None else (y + out).astype(np.float32)


def _deq(q, d, m, c, p, col):
    """p[b*BL + i, col + r] = d * q[c, b, i, r] + m for chunk c (typed per q.dtype)."""


@numba.extending.overload(_deq)
def _deq_impl(q, d, m, c, p, col):
    if q.dtype == numba.types.uint8:
        def nib(q, d, m, c, p, col):
            L = q.shape[2]
            for b in range(q.shape[1]):
                db, mb = d[c, b], m[c, b]
                for i in range(L):
                    qi, lo, hi = q[c, b, i], p[2 * L * b + i], p[2 * L * b + L + i]
                    for r in range(R):
                        lo[col + r] = db[r] * np.float32(qi[r] & 15) + mb[r]
                        hi[col + r] = db[r] * np.float32(qi[r] >> 4) + mb[r]
        return nib

    def one(q, d, m, c, p, col):
        L = q.shape[2]
        for b in range(q.shape[1]):
            db, mb = d[c, b], m[c, b]
            for i in range(L):
                qi, row = q[c, b, i], p[L * b + i]
                for r in range(R):
                    row[col + r] = db[r] * np.float32(qi[r]) + mb[r]
    return one


@kernel
def _dequantize(q, d, m, c0, c1, p):
    """Chunks c0..c1-1 into p (K, >= (c1 - c0) * R)."""
    for c in range(c0, c1):
        _deq(q, d, m, c, p, (c - c0) * R)


def panel_floats(w):
    """Scratch floats run() needs for this weight."""
    return min(w.q.shape[0] * R, max(R, PANEL_FLOATS // w.cols // R * R)) * w.cols


def run(w, x, y, add=False, panel=None, tmp=None):
    """y[:, :w.rows] (+)= x @ W^T;  x (n, K), y (n, >= w.rows) float32. panel: a float32
    scratch of >= panel_floats(w); tmp: (n, >= panel rows) float32 when add (else unused)."""
    K, C = w.cols, w.q.shape[0]
    n = len(x)
    if panel is None:
        panel = np.empty(panel_floats(w), np.float32)
    per = max(1, panel.size // K // R)     # chunks a panel holds
    for c0 in range(0, C, per):
        c1 = min(C, c0 + per)
        r0, r1 = c0 * R, min(w.rows, c1 * R)
        p = panel[:K * (c1 - c0) * R].reshape(K, (c1 - c0) * R)
        _dequantize(w.q, w.d, w.m, c0, c1, p)
        if add:
            t = tmp[:n, :r1 - r0] if tmp is not None else np.empty((n, r1 - r0), np.float32)
            np.matmul(x, p[:, :r1 - r0], out=t)
            y[:, r0:r1] += t
        else:
            np.matmul(x, p[:, :r1 - r0], out=y[:, r0:r1])
    return y
