"""nexvk: large-context LLM inference with a ~3-bit TurboQuant KV cache on any Vulkan GPU.

Public surface (imported lazily so `import nexvk` stays cheap and never touches Vulkan):
devices(), codec(), FORMATS, bits_per_value(), KVCache, Model, perplexity.
The codec itself lives in nexvk.quant (numpy, the specification of every format).
"""
__version__ = "0.1.0"

from nexvk.quant import FORMATS, bits_per_value, codec  # numpy only: cheap


def devices():
    """Vulkan devices as plain records; [] when there is no loader or driver (never crashes)."""
    from nexvk.device.probe import devices as _devices
    return _devices()


def __getattr__(name):
    if name == "KVCache":
        from nexvk.cache import KVCache
        return KVCache
    if name == "Model":
        from nexvk.model.model import Model
        return Model
    if name == "perplexity":
        from nexvk.model.eval import perplexity
        return perplexity
    raise AttributeError(f"module 'nexvk' has no attribute {name!r}")
