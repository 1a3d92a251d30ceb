"""Embedding lookup out[t] = scale * W[ids[t]] from a CpuWeight: the twin of
kernels/get_rows.py (its `ref` is the specification)."""
import numpy as np

from nexvk.cpu.jit import kernel
from nexvk.cpu.weights import R
from nexvk.kernels.get_rows import ref  # noqa: F401  (the numpy twin)


@kernel
def _get_rows(q, d, m, nib, ids, n, scale, out):
    S, L = q.shape[1], q.shape[2]
    for t in range(n):
        c, r = ids[t] // R, ids[t] % R
        for b in range(S):
            db, mb = d[c, b, r], m[c, b, r]
            if nib:
                for i in range(L):
                    v = np.int32(q[c, b, i, r])
                    out[t, 2 * L * b + i] = (db * np.float32(v & 15) + mb) * scale
                    out[t, 2 * L * b + L + i] = (db * np.float32(v >> 4) + mb) * scale
            else:
                for i in range(L):
                    out[t, L * b + i] = (db * np.float32(q[c, b, i, r]) + mb) * scale


def run(w, ids, n, out, scale=1.0):
    """out[:n] = scale * W[ids[:n]];  ids int32/int64 in [0, w.rows) (checked by the caller)."""
    _get_rows(w.q, w.d, w.m, w.nib, ids, n, np.float32(scale), out)
    return out
