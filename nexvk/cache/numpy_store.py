"""The numpy store: the reference, host arrays per layer."""
import numpy as np

from nexvk.cache.state_rows import StateRows
from nexvk.kernels import attention as attn_kernel


class NumpyStore(StateRows):
    """Host arrays per layer: codes (slots - sinks, HKV, W) uint32 and scales
    (slots - sinks, HKV, S) float16 for each of K and V in the layer's formats, where position
    p >= sinks lives in slot (p - sinks) % (slots - sinks) (a ring on sliding-window layers),
    and the sink rows (sinks, HKV, d) float16 in each format's compute domain."""

    def __init__(self, c, transform=None, device=None):
        self.c = c
        self.k, self.v, self.sink_k, self.sink_v = [], [], [], []
        for kfmt, vfmt, n, S in zip(c.kfmts, c.vfmts, c.slots, c.sinks):
            for store, fmt in ((self.k, kfmt), (self.v, vfmt)):
                store.append((np.zeros((n - S, c.n_kv_heads, fmt.words), np.uint32),
                              np.zeros((n - S, c.n_kv_heads, fmt.n_scales), np.float16)))
            self.sink_k.append(np.zeros((S, c.n_kv_heads, c.head_dim), np.float16))
            self.sink_v.append(np.zeros((S, c.n_kv_heads, c.head_dim), np.float16))

    @property
    def arrays(self):
        return [a for pair in self.k + self.v for a in pair] + self.sink_k + self.sink_v

    def _parts(self, layer, read=True):
        """(name, array) of the layer's stored parts: K and V codes and scales by slot, and
        the float16 sink rows (the arrays themselves: writes land in the cache)."""
        (kc, ks), (vc, vs) = self.k[layer], self.v[layer]
        return (("k_codes", kc), ("k_scales", ks), ("v_codes", vc), ("v_scales", vs),
                ("sink_k", self.sink_k[layer]), ("sink_v", self.sink_v[layer]))

    def _write(self, layer, parts):
        """Nothing to do: _parts gave the stored arrays themselves."""

    def append(self, layer, n, kf, vf):
        """Rows kf, vf (T*HKV, d) at positions n..n+T-1; vf None rewrites keys only."""
        c = self.c
        hkv = c.n_kv_heads
        T = len(kf) // hkv
        S = c.sinks[layer]
        s = max(0, min(S - n, T))
        parts = []  # encode everything before writing anything
        for x, fmt, sink, (codes, scales) in ((kf, c.kfmts[layer], self.sink_k[layer],
                                               self.k[layer]),
                                              (vf, c.vfmts[layer], self.sink_v[layer],
                                               self.v[layer])):
            if x is None:
                continue
            x = x.reshape(T, hkv, -1)
            enc = fmt.encode_rows(x[s:].reshape(-1, c.head_dim)) if s < T else None
            parts.append((sink, fmt.to_compute(x[:s]).astype(np.float16), codes, scales, enc))
        for sink, srows, codes, scales, enc in parts:
            sink[n:n + s] = srows
            if enc is not None:
                rows = (np.arange(n + s, n + T) - S) % len(codes)  # slots of positions n+s..
                codes[rows] = enc[0].reshape(T - s, hkv, -1)
                scales[rows] = enc[1].reshape(T - s, hkv, -1)

    def attention(self, layer, q, pos0, scale, thr):
        c = self.c
        (kc, ks), (vc, vs) = self.k[layer], self.v[layer]
        return attn_kernel.ref(c.kfmts[layer], c.vfmts[layer], kc, ks, vc, vs, q, pos0, scale,
                               thr, window=c.windows[layer], sink_k=self.sink_k[layer],
                               sink_v=self.sink_v[layer])


