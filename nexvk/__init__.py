"""nexvk: large-context LLM inference with a ~3-bit TurboQuant KV cache on any Vulkan GPU.

Public surface (imported lazily so `import nexvk` stays cheap and never touches Vulkan):
devices(), codec(), FORMATS, bits_per_value(), KVCache, CacheConfig, Model, perplexity.
The codec itself lives in nexvk.quant (numpy, the specification of every format); nothing
inside the package imports this module (the layers import each other's modules directly).
"""
__version__ = "0.1.0"

from nexvk.quant import FORMATS, bits_per_value  # numpy only: cheap


def codec(name, head_dim, seed=0, backend="numpy", device=None):
    """A codec for format `name` (one of FORMATS) at `head_dim` (power of two 16..512):
    encode(x) -> Encoded, decode(Encoded) -> float32, on the backend's device or the host."""
    from nexvk.backends import backend as backend_of
    b = backend_of(backend)
    make = b.get("codec")
    return make(name, head_dim, seed, device=device) if b.device else make(name, head_dim, seed)


def devices():
    """Vulkan devices as plain records; [] when there is no loader or driver (never crashes)."""
    from nexvk.device.probe import devices as _devices
    return _devices()


def __getattr__(name):
    if name == "KVCache":
        from nexvk.cache import KVCache
        return KVCache
    if name == "CacheConfig":
        from nexvk.cache import CacheConfig
        return CacheConfig
    if name == "Model":
        from nexvk.model.model import Model
        return Model
    if name == "perplexity":
        from nexvk.model.eval import perplexity
        return perplexity
    raise AttributeError(f"module 'nexvk' has no attribute {name!r}")
