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


SCALE_MIN_ROWS = 8      # fewer keys than this in the fitting append: no channel scale


class KeyTransform:
    """mean (L, HKV, d) and scale (L, HKV, d) float16 tables, plus which layers use them.

    `active[layer]`: the layer's keys go through the transform (False: stored as they are).
    `ready[layer]`: its tables are fixed for the current sequence. A table given here (from
    a calibration) is fixed for good; otherwise `fit` sets it from a sequence's first keys
    (and queries, for the scale) and `reset` forgets it. scaled=False: no channel scale.
    """

    def __init__(self, n_layers, n_kv_heads, head_dim, active, mean=None, scale=None,
                 scaled=True):
        shape = (n_layers, n_kv_heads, head_dim)
        self.active = np.array(active, bool).reshape(n_layers)
        self.mean = np.zeros(shape, np.float16)
        self.scale = np.ones(shape, np.float16)
        if mean is not None:
            self.mean[:] = _check_table(mean, shape, "mean")
        if scale is not None:
            s = _check_table(scale, shape, "scale")
            if (s <= 0).any():
                raise ValueError("key scale must be positive in every channel")
            self.scale[:] = s
        self.scaled = bool(scaled) or scale is not None
        self.fit_mean = mean is None
        self.fit_scale = self.scaled and scale is None
        self.ready = np.zeros(n_layers, bool)
        self.reset()

    def reset(self, layers=slice(None)):
        """A new sequence (on `layers`, default all): fitted tables are forgotten, given ones
        stay."""
        self.ready[layers] = ~self.active[layers] | (not self.fit_mean and not self.fit_scale)
        if self.fit_mean:
            self.mean[layers] = 0
        if self.fit_scale:
            self.scale[layers] = 1

    def fit(self, layer, k, q=None):
        """Fix the layer's tables from its first keys k (T, HKV, d), T >= 1: the mean of k;
        with queries q (T, H, d) of the same positions and T >= SCALE_MIN_ROWS, the channel
        scale s = (Q / K) ** (1/4), Q and K the mean squares of the (group's) queries and of
        the centred keys per channel, at geometric mean 1 per head. That s minimizes the
        score error sum_i Q_i err_i^2 / s_i^2 when the rotation spreads the stored error
        evenly (err_i^2 ~ sum_j s_j^2 K_j / d). Both rounded to float16."""
        m = np.mean(k, axis=0, dtype=np.float64) if self.fit_mean else self.mean[layer]
        if np.abs(m).max() > 65504:
            raise ValueError(f"keys have a mean up to {np.abs(m).max():.4g}, beyond float16")
        s = self.scale[layer]
        if self.fit_scale:
            s = np.ones_like(m)
            if q is not None and len(k) >= SCALE_MIN_ROWS:
                T, H, d = q.shape
                hkv = k.shape[1]
                Q = np.mean(q.reshape(T, hkv, H // hkv, d) ** 2, axis=(0, 2), dtype=np.float64)
                s = channel_scale(Q, np.mean((k - m) ** 2, axis=0, dtype=np.float64))
        self.mean[layer] = np.asarray(m).astype(np.float16)
        self.scale[layer] = np.asarray(s).astype(np.float16)
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


def channel_scale(Q, K):
    """The channel scale (Q / K) ** (1/4) at geometric mean 1 per head (see KeyTransform.fit),
    from Q and K (..., d): the mean squares of the queries and of the centred keys."""
    K = np.maximum(K, 1e-6 * K.mean(axis=-1, keepdims=True) + 1e-30)
    s = (np.maximum(Q, 1e-30) / K) ** 0.25
    return np.clip(s / np.exp(np.log(s).mean(axis=-1, keepdims=True)), 2.0 ** -12, 2.0 ** 12)


def _check_table(x, shape, what):
    x = np.asarray(x, np.float32)
    if x.shape != shape:
        raise ValueError(f"key {what} table must have shape {shape}, got {x.shape}")
    if not np.isfinite(x).all() or np.abs(x).max() > 65504:
        raise ValueError(f"key {what} table must hold finite float16 values")
    return x
