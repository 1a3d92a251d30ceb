"""Y = X W^T for a prefill step (T > 1 rows), W a CpuWeight: the twin of kernels/mul_mm.py.

Row panels of W are dequantized (a loop over the panel's rows innermost) into a reused
float32 scratch of at most PANEL_FLOATS, laid out (K, rows) as the chunked layout gives it,
and multiplied by numpy's BLAS sgemm. With a thread pool the weight's chunks are split into
one contiguous run per worker, each with its own panel, and each worker's sgemm runs on one
OpenBLAS thread (the caller limits it): OpenBLAS's own threads spin-wait for each other, and
on a machine with other load one of them is off the core most of the time (SmolLM2, a
60-token step, load average 17: 34 s with two OpenBLAS threads, 2.8 s with one). Dequantizing
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
    """Scratch floats a panel for this weight needs."""
    return min(w.q.shape[0] * R, max(R, PANEL_FLOATS // w.cols // R * R)) * w.cols


def _part(w, x, y, add, c_lo, c_hi, panel, tmp):
    K, n = w.cols, len(x)
    per = max(1, panel.size // K // R)     # chunks a panel holds
    for c0 in range(c_lo, c_hi, per):
        c1 = min(c_hi, c0 + per)
        r0, r1 = c0 * R, min(w.rows, c1 * R)
        p = panel[:K * (c1 - c0) * R].reshape(K, (c1 - c0) * R)
        _dequantize(w.q, w.d, w.m, c0, c1, p)
        if add:
            t = tmp[:n, :r1 - r0]
            np.matmul(x, p[:, :r1 - r0], out=t)
            y[:, r0:r1] += t
        else:
            np.matmul(x, p[:, :r1 - r0], out=y[:, r0:r1])


def run(w, x, y, add=False, panels=None, tmps=None, pool=None):
    """y[:, :w.rows] (+)= x @ W^T;  x (n, K), y (n, >= w.rows) float32. panels: one float32
    scratch of >= panel_floats(w) per part (default: one, made here); tmps: as many
    (>= n, >= w.rows) float32 when add; pool: a concurrent.futures executor running the
    parts (default: in turn, on this thread)."""
    panels = panels or [np.empty(panel_floats(w), np.float32)]
    tmps = tmps or [np.empty((len(x), w.rows), np.float32) if add else None for _ in panels]
    C = w.q.shape[0]
    k = min(len(panels), C)
    jobs = [(w, x, y, add, i * C // k, (i + 1) * C // k, panels[i], tmps[i]) for i in range(k)]
    if pool is None or k == 1:
        for job in jobs:
            _part(*job)
    else:
        for f in [pool.submit(_part, *job) for job in jobs]:
            f.result()
    return y
