"""CacheConfig: everything a user chooses about a KV cache, in one frozen object carried from
the CLI (model/commands.py cache_config) through Model, plan, ppl and calibrate to KVCache.

The model's dimensions (layers, heads, head size, context, windows) are not here: they come
from the model, and with the config they make the cache's CacheLayout (layout.py).
"""
import dataclasses
from dataclasses import dataclass

import numpy as np

from nexvk.quant.cachespec import CacheSpec

DEFAULT_MAX_BATCH = 256


@dataclass(frozen=True, eq=False)
class CacheConfig:
    """k_type, v_type: formats (nexvk.FORMATS) of every layer not named in layer_types.
    plain, sinks, layer_types, key_mean, key_scale: the hardening (see KVCache).
    sparse_v: skip V rows whose attention weight is below this (None: off).
    seed: the codec's rotation seed. max_batch: most rows per append / device dispatch.
    backend: a name from nexvk.backends or "auto"; device: a Vulkan device index."""
    k_type: str = "turbo3"
    v_type: str = "turbo3"
    plain: bool = False
    sinks: int = None
    layer_types: object = None      # "0-1:q8_0/q8_0" or {layer: (k, v)}
    key_mean: object = None         # (n_layers, n_kv_heads, head_dim) or None: fitted
    key_scale: object = None        # same shape, False: none, None: fitted
    sparse_v: float = None
    seed: int = 0
    max_batch: int = DEFAULT_MAX_BATCH
    backend: str = "numpy"
    device: int = None

    @classmethod
    def of(cls, k_type="turbo3", v_type="turbo3", cache_opts=None, **kw):
        """From the keyword arguments KVCache, Model and perplexity took before this object:
        cache_opts {plain, sinks, layer_types, key_mean, key_scale} plus the rest by name."""
        return cls(k_type=k_type, v_type=v_type, **dict(cache_opts or {}), **kw)

    def __post_init__(self):
        check_sparse_v(self.sparse_v)
        if not isinstance(self.backend, str):
            raise ValueError(f"backend must be a name, got {self.backend!r}")

    def is_default(self):
        """Whether every field has its default (a KVCache given config= and keywords)."""
        return all(_same(getattr(self, f.name), f.default) for f in dataclasses.fields(self))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def spec(self, n_layers):
        """The CacheSpec (formats per layer, sinks, key transform) for n_layers layers."""
        scale = self.key_scale
        return CacheSpec.build(n_layers, self.k_type, self.v_type, self.layer_types,
                               self.sinks, self.plain,
                               None if scale is None else scale is not False)


def _same(a, b):
    return a is b or (type(a) in (int, float, str) and type(a) is type(b) and a == b)


def check_sparse_v(sparse_v):
    """The sparse-V threshold as a float in [0, 1) (None = 0 = off); ValueError otherwise."""
    if sparse_v is None:
        return 0.0
    if not (_is_real(sparse_v) and 0.0 <= sparse_v < 1.0):
        raise ValueError(f"sparse_v must be a weight threshold in [0, 1), got {sparse_v!r}")
    return float(sparse_v)


def _is_real(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
