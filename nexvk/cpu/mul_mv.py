"""y = W x for one token (decode), W a CpuWeight in its stored integers: the twin of
kernels/mul_mv.py.

Per chunk of R rows and sub-block b of BL values: acc[r] = sum_i q[i, r] x[i] in float32 (a
loop over the chunk's rows for each value i: unit stride, vectorized), then
y[r] += d[r] acc[r] + m[r] sum_i x[i]. x stays float32 (no 8-bit activation rounding as in
llama.cpp: that moved SmolLM2's logits past the issue's 1e-3 bound even at 16 bits), so the
result is numpy's product up to float32 summation order. What makes it fast is the
conversion: a byte becomes a float32 in 32-bit lanes (vpmovzxbd, vcvtdq2ps), and a byte of
two 4-bit values v = lo + 16 hi is never split into integers (numba widens integer
arithmetic to int64, and LLVM then converts in 8-lane vcvtqq2ps, half the speed):
lo x_lo + hi x_hi = v x_lo + floor(v / 16) (x_hi - 16 x_lo), all in float32.
The loops over a chunk range sit in one function per weight type (an overload, given the
backend's fastmath explicitly: an overload does not inherit it, and without it these loops
ran at half speed), taking their row views once per call: a view per block or value costs
reference counting that LLVM cannot drop.
Threads split the chunks in contiguous runs inside one parallel region; a product too
small to repay waking the threads (SERIAL_BYTES), or a call for one thread, runs on the
calling thread.
"""
import numpy as np

from nexvk.cpu.jit import FASTMATH, kernel, numba
from nexvk.cpu.weights import R

SERIAL_BYTES = 8 << 20  # weight bytes below which one thread does the whole product
# (a parallel region costs ~10-20 us to start on a quiet core and far more on a busy one,
# against 7-50 us for SmolLM2's layer products: docs/cpu.md, Threads, has the measurement)


def ref(w, x, y=None):
    """w: (rows, K) float32 (CpuWeight.dequantize), x: (K,) -> (rows,), added to y if given."""
    out = (w @ np.asarray(x, np.float32)).astype(np.float32)
    return out if y is None else (y + out).astype(np.float32)


def _chunks(q, d, m, x, xs, c0, c1, acc, y, rows, add):
    """Rows c0*R..c1*R-1 of y (+)= W x (typed per q.dtype); acc: 2R float32 scratch."""


@kernel
def _put(out, y, c, rows, add):
    n = min(R, rows - c * R)
    if add:
        for r in range(n):
            y[c * R + r] += out[r]
    else:
        for r in range(n):
            y[c * R + r] = out[r]


@kernel
def _scale(d, m, c, b, s, a, out):
    """out[r] += the block's product a[r] times its scale, and the offset times sum(x)."""
    for r in range(R):
        out[r] += d[c, b, r] * a[r] + m[c, b, r] * s


@numba.extending.overload(_chunks, jit_options={"fastmath": FASTMATH})
def _chunks_impl(q, d, m, x, xs, c0, c1, acc, y, rows, add):
    if q.dtype == numba.types.uint8:        # two 4-bit values a byte: i low, i + BL/2 high
        def nib(q, d, m, x, xs, c0, c1, acc, y, rows, add):
            S, L = q.shape[1], q.shape[2]
            a, out = acc[:R], acc[R:2 * R]
            sixteenth = np.float32(1 / 16)
            for c in range(c0, c1):
                out[:] = 0
                for b in range(S):
                    x0 = 2 * L * b
                    a[:] = 0
                    for i in range(L):
                        xl = x[x0 + i]
                        xh = x[x0 + L + i] - np.float32(16) * xl
                        qi = q[c, b, i]
                        for r in range(R):
                            v = np.float32(qi[r])
                            a[r] += v * xl + np.floor(v * sixteenth) * xh
                    _scale(d, m, c, b, xs[b], a, out)
                _put(out, y, c, rows, add)
        return nib

    def one(q, d, m, x, xs, c0, c1, acc, y, rows, add):    # int8 or float32: one a value
        S, L = q.shape[1], q.shape[2]
        a, out = acc[:R], acc[R:2 * R]
        for c in range(c0, c1):
            out[:] = 0
            for b in range(S):
                x0 = L * b
                a[:] = 0
                for i in range(L):
                    xi = x[x0 + i]
                    qi = q[c, b, i]
                    for r in range(R):
                        a[r] += np.float32(qi[r]) * xi
                _scale(d, m, c, b, xs[b], a, out)
            _put(out, y, c, rows, add)
    return one


@kernel(parallel=True)
def _mul_mv(q, d, m, x, y, rows, add, scratch, threads):
    """scratch: (threads + 1, >= max(2R, S)) float32: per thread acc|out, and the sums of x."""
    C, S = q.shape[0], q.shape[1]
    bl = x.size // S
    xs = scratch[-1, :S]
    for b in range(S):
        s = np.float32(0)
        for i in range(bl):
            s += x[b * bl + i]
        xs[b] = s
    nt = min(threads, C, scratch.shape[0] - 1)
    if nt == 1:
        _chunks(q, d, m, x, xs, 0, C, scratch[0], y, rows, add)
        return
    for t in numba.prange(nt):
        _chunks(q, d, m, x, xs, t * C // nt, (t + 1) * C // nt, scratch[t], y, rows, add)


def scratch(max_threads, max_sub):
    """The scratch run() needs for any weight with at most max_sub sub-blocks a row."""
    return np.zeros((max_threads + 1, max(2 * R, max_sub)), np.float32)


def run(w, x, y, add=False, tmp=None, threads=None):
    """y[:w.rows] (+)= W x;  x (K,) float32 contiguous, y float32 contiguous; on `threads`
    threads (default: numba's current count), tmp from scratch() (made here if None)."""
    threads = threads or numba.get_num_threads()
    if tmp is None:
        tmp = scratch(threads, w.d.shape[1])
    _mul_mv(w.q, w.d, w.m, x, y, w.rows, add, tmp, threads if w.q.nbytes >= SERIAL_BYTES else 1)
    return y
