"""The KV cache: compressed keys and values per layer, attention computed from the codes.

config.py  CacheConfig: what the user chooses (formats, hardening, backend, device, ...)
layout.py  CacheLayout: per-layer formats, windows, slots, sinks and bytes, built once from
           the config's CacheSpec and the model's dimensions (what plan, KVCache and the
           stores read), and the sizing rules they share
kvcache.py KVCache: the public cache (checks, positions, the key transform, the lock)
numpy_store.py, vulkan_store.py: where the codes live, one store per backend
(nexvk.backends names which store a backend uses).
"""
from nexvk.cache.config import CacheConfig
from nexvk.cache.config import check_sparse_v
from nexvk.cache.kvcache import KVCache
from nexvk.cache.layout import CacheLayout

__all__ = ["CacheConfig", "CacheLayout", "KVCache", "check_sparse_v"]
