"""y = W x for one token (decode), W a CpuWeight in its stored integers: the twin of
kernels/mul_mv.py.

Per chunk of R rows and sub-block of BL values: acc[r] = sum_i q[i, r] * x[i] in float32 (a
loop over the chunk's rows for each value i: unit stride, vectorized), then
y[r] += d[r] * acc[r] + m[r] * sum_i x[i]. x stays float32 (no 8-bit activation
rounding), so the result is numpy's product up to float32 summation order. Threads split the
chunks in contiguous runs inside one parallel region; a product too small to repay waking
the threads (SERIAL_BYTES) runs on the calling thread.
"""
import numpy as np

from nexvk.cpu.jit import kernel, numba
from nexvk.cpu.weights import R

SERIAL_BYTES = 256 << 10  # weight bytes below which one thread does the whole product
# (a parallel region costs ~20 us to start on a quiet core and far more on a busy one: at
# ~8 G weights/s a thread, SmolLM2's 576 x 576 products (166 KiB) gain nothing from two)


def ref(w, x, y=None):
    """w: (rows, K) float32 (CpuWeight.dequantize), x: (K,) -> (rows,), added to y if given."""
    out = (w @ np.asarray(x, np.float32)).astype(np.float32)
    return out if y is None else (y + out).astype(np.float32)


def _block(q, c, b, x, a):
    """a[r] = sum_i q[c, b, i, r] * x[b*BL + i] over the chunk's R rows (typed per q.dtype)."""


@numba.extending.overload(_block)
def _block_impl(q, c, b, x, a):
    if q.dtype == numba.types.uint8:        # two 4-bit values a byte: i low, i + BL/2 high
        def nib(q, c, b, x, a):
            L = q.shape[2]
            x0 = 2 * L * b
            a[:] = 0
            for i in range(L):
                xl, xh = x[x0 + i], x[x0 + L + i]
                for r in range(R):
                    v = q[c, b, i, r]
                    a[r] += np.float32(v & 15) * xl + np.float32(v >> 4) * xh
        return nib

    def one(q, c, b, x, a):                 # int8 or float32, one value an element
        L = q.shape[2]
        x0 = L * b
        a[:] = 0
        for i in range(L):
            xi = x[x0 + i]
            for r in range(R):
                a[r] += np.float32(q[c, b, i, r]) * xi
    return one


@kernel
def _chunk(q, d, m, xs, x, c, acc, y, rows, add):
    """Rows c*R.. of y (+)= W x for one chunk c (acc: 2R float32 scratch)."""
    a, out = acc[:R], acc[R:2 * R]
    out[:] = 0
    for b in range(q.shape[1]):
        _block(q, c, b, x, a)
        s = xs[b]
        for r in range(R):
            out[r] += d[c, b, r] * a[r] + m[c, b, r] * s
    n = min(R, rows - c * R)
    if add:
        for r in range(n):
            y[c * R + r] += out[r]
    else:
        for r in range(n):
            y[c * R + r] = out[r]


@kernel(parallel=True)
def _mul_mv(q, d, m, x, y, rows, add, scratch, threads):
    """scratch: (threads + 1, 2R + S) float32: per thread acc|out, and the sums of x."""
    C, S = q.shape[0], q.shape[1]
    bl = x.size // S
    xs = scratch[-1, :S]
    for b in range(S):
        s = np.float32(0)
        for i in range(bl):
            s += x[b * bl + i]
        xs[b] = s
    if q.size * q.itemsize < SERIAL_BYTES:
        for c in range(C):
            _chunk(q, d, m, xs, x, c, scratch[0], y, rows, add)
        return
    nt = min(threads, C, scratch.shape[0] - 1)
    for t in numba.prange(nt):
        for c in range(t * C // nt, (t + 1) * C // nt):
            _chunk(q, d, m, xs, x, c, scratch[t], y, rows, add)


def scratch(max_threads, max_sub):
    """The scratch run() needs for any weight with at most max_sub sub-blocks a row."""
    return np.zeros((max_threads + 1, max(2 * R, max_sub)), np.float32)


def run(w, x, y, add=False, tmp=None, threads=None):
    """y[:w.rows] (+)= W x;  x (K,) float32 contiguous, y float32 contiguous; on `threads`
    threads (default: numba's current count), tmp from scratch() (made here if None)."""
    threads = threads or numba.get_num_threads()
    if tmp is None:
        tmp = scratch(threads, w.d.shape[1])
    _mul_mv(w.q, w.d, w.m, x, y, w.rows, add, tmp, threads)
    return y
