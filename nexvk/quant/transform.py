"""Key transform of the hardened cache: a mean and a channel scale per (layer, KV head).

Keys are stored as k' = (k - m) * s and queries score them as q' = q / s:
q'.k' = q.k - q.m, and q.m is the same for every key one query sees, so the softmax (and
the attention output) is unchanged in exact arithmetic; nothing is added back. What changes
is what the turbo codes spend their precision on: real keys carry a large constant offset
per channel that centring removes before the rotation spreads it over every coordinate,
and channels the queries ignore can be shrunk (s < 1) in favour of those they read.

The tables are float16 (that is what is stored, so that is what bits_per_value counts);
the device applies them in the quantize kernel (k - m) * s before the rotation and in the
attention's query rotation (q / s), with no extra pass over the cache.
"""
import numpy as np


class KeyTransform:
    """mean (L, HKV, d) and scale (L, HKV, d) float16 tables, plus which layers hold them.

    `active[layer]`: the layer's keys go through the transform (False: stored as they are).
    `ready[layer]`: its mean is fixed for the current sequence (from `fit`, or preset).
    Fixed tables (from a calibration) survive `reset`; fitted means do not.
    """

    def __init__(self, n_layers, n_kv_heads, head_dim, active, mean=None, scale=None):
        shape = (n_layers, n_kv_heads, head_dim)
        self.active = np.array(active, bool).reshape(n_layers)
        self.mean = np.zeros(shape, np.float16)
        self.scale = np.ones(shape, np.float16)
        self.fixed_mean = mean is not None
        if mean is not None:
            self.mean[:] = _check_table(mean, shape, "mean")
        if scale is not None:
            s = _check_table(scale, shape, "scale")
            if (s <= 0).any():
                raise ValueError("key scale must be positive in every channel")
            self.scale[:] = s
        self.scaled = scale is not None
        self.ready = np.zeros(n_layers, bool)
        self.reset()

    def reset(self):
        """A new sequence: fitted means are forgotten, preset tables stay."""
        self.ready[:] = self.fixed_mean | ~self.active
        if not self.fixed_mean:
            self.mean[:] = 0

    def fit(self, layer, k):
        """Fix layer's mean from keys k (T, HKV, d), T >= 1: their mean, rounded to f16."""
        m = np.mean(k, axis=0, dtype=np.float64)
        if np.abs(m).max() > 65504:
            raise ValueError(f"keys have a mean up to {np.abs(m).max():.4g}, beyond float16")
        self.mean[layer] = m.astype(np.float16)
        self.ready[layer] = True

    def keys(self, layer, k):
        """(k - m) * s for keys (..., HKV, d); float32 in, float32 out (float64 stays float64)."""
        if not self.active[layer]:
            return k
        m, s = self.mean[layer].astype(k.dtype), self.scale[layer].astype(k.dtype)
        return (k - m) * s

    def queries(self, layer, q):
        """q / s for queries (T, H, d) of the layer (H a multiple of HKV, grouped by KV head)."""
        if not (self.active[layer] and self.scaled):
            return q
        T, H, d = q.shape
        hkv = self.scale.shape[1]
        s = self.scale[layer].astype(q.dtype)[None, :, None, :]       # (1, HKV, 1, d)
        return (q.reshape(T, hkv, H // hkv, d) / s).reshape(T, H, d)

    def vectors_per_head(self, layer):
        """f16 vectors of d stored per KV head of the layer: mean, and scale when used."""
        return int(self.active[layer]) * (1 + int(self.scaled))


def _check_table(x, shape, what):
    x = np.asarray(x, np.float32)
    if x.shape != shape:
        raise ValueError(f"key {what} table must have shape {shape}, got {x.shape}")
    if not np.isfinite(x).all() or np.abs(x).max() > 65504:
        raise ValueError(f"key {what} table must hold finite float16 values")
    return x
