"""RMSNorm over each row, or over each group of `group` columns (Gemma's per-head q/k norm):
the twin of kernels/rms_norm.py (its `ref` is the specification). y may be x."""
import numpy as np

from nexvk.cpu.jit import kernel
from nexvk.kernels.rms_norm import ref  # noqa: F401  (the numpy twin)


@kernel
def _rms_norm(x, w, eps, group, n, y):
    for t in range(n):
        for g0 in range(0, x.shape[1], group):
            s = np.float32(0)
            for j in range(group):
                s += x[t, g0 + j] * x[t, g0 + j]
            inv = np.float32(1) / np.sqrt(s / np.float32(group) + eps)
            for j in range(group):
                y[t, g0 + j] = x[t, g0 + j] * inv * w[j]


def run(x, w, eps, n, y, group=0):
    """y[:n] = rms_norm(x[:n]) * w, per row (group 0) or per group of columns."""
    _rms_norm(x, w, np.float32(eps), group or x.shape[1], n, y)
    return y
