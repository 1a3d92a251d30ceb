"""The cpu Ops: forward.py's calls executed at once by the compiled kernels of nexvk/cpu.

The contract is NumpyOps' (handles are (rows, features) float32 arrays, each op acts on the
first n = min(T, rows) rows), and so is everything that is not arithmetic: buffers, the
step's T and position, the RoPE tables, attention through the KV cache. Weights are
CpuWeights (weights.py) held as stored. Products: decode rows (n <= MV_ROWS) go to mul_mv on
the compiled kernels' threads, prefill rows to mul_mm on a pool of as many Python threads,
each with its part of the weight's rows and its own panel, while OpenBLAS runs on one thread
per caller for the whole step (mul_mm.py says why). Scratch grows on the first step of each
kind and is reused, so a decode step allocates nothing.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nexvk.cpu import add, get_rows, glu, jit, mul_mm, mul_mv, rms_norm, rope
from nexvk.model.ops_numpy import NumpyOps

MV_ROWS = 8  # prefill steps of at most this many rows run mul_mv row by row


class CpuOps(NumpyOps):
    def __init__(self, cache, sparse_v=None, threads=None):
        super().__init__(cache, sparse_v)
        self.threads = jit.set_threads(threads)
        self._mv = mul_mv.scratch(self.threads, 0)
        self._panels = [np.empty(0, np.float32)] * self.threads   # per mul_mm part
        self._tmps = [np.empty((0, 0), np.float32)] * self.threads
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def fresh(self):
        return type(self)(self.cache, self.sparse_v, self.threads)

    def execute(self, key, record):
        with jit.one_blas_thread():
            record()

    def embed(self, table, tokens, out, scale=1.0):
        get_rows.run(table, tokens, self.T, out, scale)

    def rms_norm(self, x, w, eps, out, group=0):
        rms_norm.run(x, w, eps, self._n(x), out, group)

    def linear(self, x, w, out, accumulate=False, bias=None):
        self._linear(x, w, out, accumulate)
        if bias is not None:
            out[:self._n(x)] += bias

    def _linear(self, x, w, out, accumulate):
        n = self._n(x)
        if n <= MV_ROWS:  # a few rows: one mat-vec each beats dequantizing the whole weight
            if self._mv.shape[1] < w.d.shape[1]:
                self._mv = mul_mv.scratch(self.threads, w.d.shape[1])
            for t in range(n):
                mul_mv.run(w, x[t], out[t], accumulate, self._mv, self.threads)
            return
        if self._panels[0].size < mul_mm.panel_floats(w):
            self._panels = [np.empty(mul_mm.panel_floats(w), np.float32) for _ in self._panels]
        tmps = None
        if accumulate:
            t = self._tmps[0]
            if t.shape[0] < n or t.shape[1] < w.rows:
                shape = (max(n, t.shape[0]), max(w.rows, t.shape[1]))
                self._tmps = [np.empty(shape, np.float32) for _ in self._tmps]
            tmps = self._tmps
        mul_mm.run(w, x[:n], out[:n], accumulate, self._panels, tmps, self._pool)

    def rope(self, x, head_dim, rot_dims, base, neox, factors=None, mscale=1.0):
        cos, sin = self._table(base, rot_dims, factors, mscale)
        if self.pos is not None:
            rope.run(x, cos, sin, self.pos, self._n(x), head_dim, rot_dims, neox)
            return
        r = 0  # several sequences (set_segments): each segment's rows from its own position
        for _, pos, n in self.segments:
            n = min(n, self._n(x) - r)
            if n > 0:
                rope.run(x[r:r + n], cos, sin, pos, n, head_dim, rot_dims, neox)
            r += n

    def glu(self, gate, up, out, act):
        glu.run(gate, up, self._n(gate), act, out)

    def add(self, x, y):
        add.run(x, y, self._n(x))
