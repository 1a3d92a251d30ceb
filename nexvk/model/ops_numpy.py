"""The numpy Ops: every call of forward.py executed at once, in float32 on the CPU.

This is the reference the device Ops are checked against, and the contract they implement.
A handle is an ndarray of (rows, features) from alloc(); each op acts on the first n rows of
its input, n = min(T, rows): T for State buffers, 1 for a last_row() handle, and writes the
same n rows of its output. set_step() sets T and the start position pos; row i is the token
at position pos + i. Attention goes through the KVCache (numpy or vulkan store).

Several sequences share one step through set_segments(): the rows are cut into segments
(cache, pos, n), each the next n tokens of its own sequence, so every weight is read once for
all of them (batch.py). Only rope (a position per row) and attention (each segment's own
cache) look at segments; every other op is per row already. set_step is the one-segment case.
"""
import numpy as np

from nexvk.kernels import rope as rope_kernel

_GELU_C = np.float32(np.sqrt(2.0 / np.pi))
_FEW_ROWS = 8              # linear: up to this many rows as blocked matrix-vector products
_BLOCK_BYTES = 1 << 20     # linear: bytes of w per block, to stay in the CPU cache


class NumpyOps:
    def __init__(self, cache, sparse_v=None):
        self.cache, self.sparse_v = cache, sparse_v
        self.T, self.segments = 0, []
        self.positions = np.zeros(0, np.int64)  # each row's position in its sequence
        self.pos = 0  # the start position of a one-segment step (None for several)
        self._tables = {}   # (base, rot) -> (cos, sin), each (capacity, rot/2) float32
        self._scratch = {}  # features -> (rows, features) float32, grown on first need

    # ---- buffers and per-step values -----------------------------------------------------
    def alloc(self, shape, dtype="float32", readable=False):
        return np.zeros(shape, dtype)  # every array is readable here

    def set_step(self, tokens_handle, tokens, pos):
        """Start a step: T = len(tokens) ids into tokens_handle, at positions pos..pos+T-1."""
        self.set_segments(tokens_handle, tokens, [(self.cache, int(pos), len(tokens))])

    def set_segments(self, tokens_handle, tokens, segments):
        """Start a step of several sequences: tokens (T,) ids into tokens_handle, cut in order
        into segments [(cache, pos, n)]: n tokens at positions pos..pos+n-1 of that cache."""
        if sum(n for _, _, n in segments) != len(tokens):
            raise ValueError("the segments must cover the step's tokens exactly")
        self.T, self.segments = len(tokens), list(segments)
        self.positions = np.concatenate([np.arange(p, p + n) for _, p, n in segments])
        self.pos = segments[0][1] if len(segments) == 1 else None
        tokens_handle[:self.T] = tokens

    def execute(self, key, record):
        """Run the step: here, record() (the forward) executes each op at once."""
        record()

    def read(self, x, n=None):
        """Rows 0..n-1 of handle x (default: the step's rows) as a numpy array (a view here:
        copy to keep)."""
        return x[:self._n(x) if n is None else n]

    def _n(self, x):
        return min(self.T, x.shape[0])

    def _tmp(self, n, features):
        buf = self._scratch.get(features)
        if buf is None or buf.shape[0] < n:
            buf = self._scratch[features] = np.empty((max(n, self.T), features), np.float32)
        return buf[:n]

    # ---- ops -----------------------------------------------------------------------------
    def embed(self, table, tokens, out, scale=1.0):
        """out = table[tokens] * scale;  table (vocab, dim), tokens (T,) ids."""
        n = self.T
        np.take(table, tokens[:n], axis=0, out=out[:n])
        if scale != 1.0:
            out[:n] *= np.float32(scale)

    def rms_norm(self, x, w, eps, out, group=0):
        """out = x / sqrt(mean(x^2) + eps) * w over each row, or with group > 0 over each group
        of `group` columns with w of length group (per-head q/k norm). out may be x."""
        n = self._n(x)
        xv, ov = x[:n], out[:n]
        if group:
            xv, ov = xv.reshape(n, -1, group), ov.reshape(n, -1, group)   # (n, heads, group)
        ms = np.einsum("...d,...d->...", xv, xv)[..., None] / np.float32(xv.shape[-1])
        np.multiply(xv, 1.0 / np.sqrt(ms + np.float32(eps)), out=ov)
        ov *= w

    def linear(self, x, w, out, accumulate=False, bias=None):
        """out = x @ w.T (or out += x @ w.T), plus bias (out_features,) when given;
        x (n, in), w (out_features, in).
        NOTE: for one row OpenBLAS is ~7x faster as a matrix-vector product than as a 1-row
        matrix product, and decode is all 1-row. A few rows (a batch of decode steps) are
        no better served by its matrix product (slower than n matrix-vector products), so
        they take matrix-vector products over ~1 MiB blocks of w: each block is read from
        memory once and stays in the CPU cache for the other rows."""
        n = self._n(x)
        dst = self._tmp(n, w.shape[0]) if accumulate else out[:n]
        if n == 1:
            np.matmul(w, x[0], out=dst[0])
        elif n <= _FEW_ROWS:
            step = max(1, _BLOCK_BYTES // (w.shape[1] * w.itemsize))
            for r in range(0, w.shape[0], step):
                for i in range(n):
                    np.matmul(w[r:r + step], x[i], out=dst[i, r:r + step])
        else:
            np.matmul(x[:n], w.T, out=dst)
        if accumulate:
            out[:n] += dst
        if bias is not None:
            out[:n] += bias

    def rope(self, x, head_dim, rot_dims, base, neox, factors=None, mscale=1.0):
        """Rotate the first rot_dims of every head_dim-wide head of x in place by its row's
        position: pairs (j, j + rot/2) when neox, else adjacent (2j, 2j + 1);
        theta_j = base^(-2j/rot) / factors[j] (factors: rot/2 frequency divisors, or None),
        cos and sin times mscale."""
        n = self._n(x)
        cos, sin = self._table(base, rot_dims, factors, mscale)
        at = self.positions[:n]
        c, s = cos[at, None, :], sin[at, None, :]                                       # (n, 1, rot/2)
        v = x[:n].reshape(n, -1, head_dim)                                             # (n, heads, hd)
        h = rot_dims // 2
        a, b = (v[..., :h], v[..., h:rot_dims]) if neox else (v[..., 0:rot_dims:2], v[..., 1:rot_dims:2])
        a0 = a.copy()
        a[...] = a0 * c - b * s
        b[...] = a0 * s + b * c

    def _table(self, base, rot, factors=None, mscale=1.0):
        """(cos, sin), each (capacity, rot/2): the table the device's rope.comp reads."""
        key = (float(base), int(rot), factors, float(mscale))
        if key not in self._tables:
            t = rope_kernel.table(key[0], key[1], self.cache.capacity, factors, mscale)  # (ctx, rot/2, 2)
            self._tables[key] = np.ascontiguousarray(t[..., 0]), np.ascontiguousarray(t[..., 1])
        return self._tables[key]

    def glu(self, gate, up, out, act):
        """out = act(gate) * up with act "silu" (x * sigmoid(x)) or "gelu_tanh"
        (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))). out may be gate or up."""
        n = self._n(gate)
        g, t = gate[:n], self._tmp(n, gate.shape[1])
        if act == "silu":
            np.negative(g, out=t)
            np.exp(t, out=t)
            t += 1.0
            np.divide(g, t, out=t)
        elif act == "gelu_tanh":
            np.multiply(g, g, out=t)
            t *= np.float32(0.044715)
            t += 1.0
            t *= g
            t *= _GELU_C
            np.tanh(t, out=t)
            t += 1.0
            t *= g
            t *= np.float32(0.5)
        else:
            raise ValueError(f"unknown activation {act!r} (silu, gelu_tanh)")
        np.multiply(t, up[:n], out=out[:n])

    def add(self, x, y):
        """x += y."""
        n = self._n(x)
        x[:n] += y[:n]

    def attention(self, layer, q, k, v, out, head_dim, scale):
        """Per segment: append its rows of k, v (n, kv_heads * head_dim) to its cache's
        `layer`, then write causal attention of its rows of q (n, heads * head_dim) over that
        cache (the layer's window, if any) to out."""
        r = 0
        for c, _, n in self.segments:
            rows = slice(r, r + n)
            qh = q[rows].reshape(n, -1, head_dim)  # q: the cache fits its key scale on it
            c.append(layer, k[rows].reshape(n, -1, head_dim), v[rows].reshape(n, -1, head_dim),
                     q=qh)
            o = c.attention(layer, qh, scale=scale, sparse_v=self.sparse_v)
            out[rows] = o.reshape(n, -1)
            r += n

    def last_row(self, x):
        """A handle to row T-1 of x alone."""
        return x[self.T - 1:self.T]


def load_weights(g, a, device=None, progress=False):
    """The model's weights as float32 arrays (the numpy backend has no device)."""
    from nexvk.model.weights import Weights
    return Weights.load(g, a, progress=progress)
