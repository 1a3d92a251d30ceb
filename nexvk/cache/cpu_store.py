"""The cpu store: the numpy store's arrays, written and read by numba kernels (nexvk/cpu/).

Same arrays as the numpy store (it is one, with append and attention replaced), so either
can read what the other wrote. New rows are encoded by nexvk.cpu.quantize (codes identical to
numpy's); attention runs on the codes in nexvk.cpu.attention. The scratch of both is
allocated here, once: a decode step allocates only its small output array.
"""
import numba
import numpy as np

from nexvk.cache.numpy_store import NumpyStore
from nexvk.cpu import attention as attn
from nexvk.cpu import quantize
from nexvk.cpu.formats import kind
from nexvk.kernels.attention import visible_keys
from nexvk.quant.formats import LANES

_SCORE_BYTES = 16 << 20  # the score scratch: decides how many queries go per block


class CpuStore(NumpyStore):
    """The numpy store's host arrays (see NumpyStore), kept by compiled kernels."""

    def __init__(self, c, transform=None, device=None):
        if c.head_dim_v != c.head_dim:
            raise ValueError(f"the cpu store needs keys and values of one head_dim, got "
                             f"{c.head_dim} and {c.head_dim_v}")
        super().__init__(c)
        self.kinds = [(kind(kf), kind(vf)) for kf, vf in zip(c.kfmts, c.vfmts)]
        # what the kernels read: codes as bytes, halves as their bits
        self.views = [(kc.view(np.uint8), ks.view(np.uint16), vc.view(np.uint8),
                       vs.view(np.uint16), sk.view(np.uint16), sv.view(np.uint16))
                      for ((kc, ks), (vc, vs), sk, sv) in zip(self.k, self.v, self.sink_k,
                                                              self.sink_v)]
        self.work = np.zeros(LANES + c.head_dim, np.float32)
        self.xt = np.zeros((1, c.n_kv_heads, c.head_dim), np.float32)
        self.bounds = [np.array(kf.range_bound() + vf.range_bound(), np.float64)
                       for kf, vf in zip(c.kfmts, c.vfmts)]
        self._none = np.zeros((0, 0), np.float32)        # no key transform
        self._no_q = np.zeros((0, 0, 0), np.float32)
        self._scratch(c.max_heads)

    def _scratch(self, heads):
        c = self.c
        keys = max(c.slots)
        block = max(1, min(64, _SCORE_BYTES // (4 * heads * keys)))
        self.scr = attn.Scratch.make(block, heads, c.n_kv_heads, keys, c.head_dim,
                                     numba.config.NUMBA_NUM_THREADS)

    def append(self, layer, n, kf, vf):
        """Rows kf, vf (T*HKV, d) float32 at positions n..n+T-1; vf None rewrites keys only."""
        c = self.c
        hkv, d = c.n_kv_heads, c.head_dim
        T = len(kf) // hkv
        S = c.sinks[layer]
        s = max(0, min(S - n, T))   # rows that are sinks (the first positions only)
        for x, fmt, knd, sink, (codes, scales) in (
                (kf, c.kfmts[layer], self.kinds[layer][0], self.sink_k[layer], self.k[layer]),
                (vf, c.vfmts[layer], self.kinds[layer][1], self.sink_v[layer], self.v[layer])):
            if x is None:
                continue
            x = x.reshape(T, hkv, d)
            if s:
                sink[n:n + s] = fmt.to_compute(x[:s]).astype(np.float16)
            if s < T:
                quantize.encode(knd, x[s:], codes, scales.view(np.uint16), n + s - S,
                                self.work)

    def append_one(self, layer, n, k, v, q, mean, scale):
        """One token's k, v (1, HKV, d) float32 at position n >= the layer's sinks, keys
        through the key transform when mean/scale (float16 (HKV, d)) are given, in one
        compiled call (quantize.append_one); False (nothing written) when a value is out of
        range or non-finite, for KVCache's checked path to report."""
        c = self.c
        (kc, ks), (vc, vs) = self.k[layer], self.v[layer]
        m, s = (self._none, self._none) if mean is None else \
            (mean.astype(np.float32), scale.astype(np.float32))
        return quantize.append_one(*self.kinds[layer], k, v, self._no_q if q is None else q,
                                   m, s, self.bounds[layer], kc, ks.view(np.uint16), vc,
                                   vs.view(np.uint16), n - c.sinks[layer], self.xt, self.work)

    def attention(self, layer, q, pos0, scale, thr):
        c = self.c
        T, H, d = q.shape
        if H > self.scr.qr.shape[1]:
            self._scratch(H)
        out = np.empty((T, H, d), np.float32)
        kk, vk = self.kinds[layer]
        skipped = attn.attend(kk, vk, *self.views[layer], q, pos0, scale, thr,
                              c.windows[layer], out, self.scr)
        return out, int(skipped), H * visible_keys(pos0, T, c.windows[layer])
