"""RoPE in place on (T, heads * head_dim) rows at positions pos..pos+n-1 from a (ctx, rot/2)
cos and sin table: the twin of kernels/rope.py (its `table` and `ref` are the specification):
pairs (j, j + rot/2) in NeoX mode, else (2j, 2j + 1); dims past rot are left alone."""
from nexvk.cpu.jit import kernel
from nexvk.kernels.rope import ref, table  # noqa: F401  (the numpy twin and its table)


@kernel
def _rope(x, cos, sin, pos, n, head_dim, rot, neox):
    h = rot // 2
    for t in range(n):
        c, s = cos[pos + t], sin[pos + t]
        for h0 in range(0, x.shape[1], head_dim):
            for j in range(h):
                i0, i1 = (h0 + j, h0 + j + h) if neox else (h0 + 2 * j, h0 + 2 * j + 1)
                a, b = x[t, i0], x[t, i1]
                x[t, i0] = a * c[j] - b * s[j]
                x[t, i1] = a * s[j] + b * c[j]


def run(x, cos, sin, pos, n, head_dim, rot, neox):
    _rope(x, cos, sin, pos, n, head_dim, rot, neox)
    return x
