"""The numpy Ops: every call of forward.py executed at once, in float32 on the CPU.

This is the reference the device Ops are checked against, and the contract they implement.
A handle is an ndarray of (rows, features) from alloc(); each op acts on the first n rows of
its input, n = min(T, rows): T for State buffers, 1 for a last_row() handle, and writes the
same n rows of its output. set_step() sets T and the start position pos; row i is the token
at position pos + i. Attention goes through the KVCache (numpy or vulkan store).
"""
import numpy as np

from nexvk.kernels import rope as rope_kernel

_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


class NumpyOps:
    def __init__(self, cache, sparse_v=None):
        self.cache, self.sparse_v = cache, sparse_v
        self.T, self.pos = 0, 0
        self._tables = {}   # (base, rot) -> (cos, sin), each (capacity, rot/2) float32
        self._scratch = {}  # features -> (rows, features) float32, grown on first need

    # ---- buffers and per-step values -----------------------------------------------------
    def alloc(self, shape, dtype="float32", readable=False):
        return np.zeros(shape, dtype)  # every array is readable here

    def set_step(self, tokens_handle, tokens, pos):
        """Start a step: T = len(tokens) ids into tokens_handle, at positions pos..pos+T-1."""
        self.T, self.pos = len(tokens), int(pos)
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

    def linear(self, x, w, out, accumulate=False):
        """out = x @ w.T (or out += x @ w.T);  x (n, in), w (out_features, in).
        NOTE: for one row OpenBLAS is ~7x faster as a matrix-vector product than as a 1-row
        matrix product, and decode is all 1-row."""
        n = self._n(x)
        dst = self._tmp(n, w.shape[0]) if accumulate else out[:n]
        if n == 1:
            np.matmul(w, x[0], out=dst[0])
        else:
            np.matmul(x[:n], w.T, out=dst)
        if accumulate:
            out[:n] += dst

    def rope(self, x, head_dim, rot_dims, base, neox):
        """Rotate the first rot_dims of every head_dim-wide head of x in place by its row's
        position: pairs (j, j + rot/2) when neox, else adjacent (2j, 2j + 1);
        theta_j = base^(-2j/rot)."""
        n = self._n(x)
        cos, sin = self._table(base, rot_dims)
        c, s = cos[self.pos:self.pos + n, None, :], sin[self.pos:self.pos + n, None, :]  # (n, 1, rot/2)
        v = x[:n].reshape(n, -1, head_dim)                                             # (n, heads, hd)
        h = rot_dims // 2
        a, b = (v[..., :h], v[..., h:rot_dims]) if neox else (v[..., 0:rot_dims:2], v[..., 1:rot_dims:2])
        a0 = a.copy()
        a[...] = a0 * c - b * s
        b[...] = a0 * s + b * c

    def _table(self, base, rot):
        """(cos, sin), each (capacity, rot/2): the table the device's rope.comp reads."""
        key = (float(base), int(rot))
        if key not in self._tables:
            t = rope_kernel.table(key[0], key[1], self.cache.capacity)      # (ctx, rot/2, 2)
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
        """Append this step's k, v (n, kv_heads * head_dim) to the cache's `layer`, then write
        causal attention of q (n, heads * head_dim) over it (the layer's window, if any) to out."""
        n = self._n(q)
        c = self.cache
        qh = q[:n].reshape(n, -1, head_dim)  # q: the cache fits its key scale on it
        c.append(layer, k[:n].reshape(n, -1, head_dim), v[:n].reshape(n, -1, head_dim), q=qh)
        o = c.attention(layer, qh, scale=scale, sparse_v=self.sparse_v)
        out[:n] = o.reshape(n, -1)

    def last_row(self, x):
        """A handle to row T-1 of x alone."""
        return x[self.T - 1:self.T]


def load_weights(g, a, device=None, progress=False):
    """The model's weights as float32 arrays (the numpy backend has no device)."""
    from nexvk.model.weights import Weights
    return Weights.load(g, a, progress=progress)
