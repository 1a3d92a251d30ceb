"""nexvk: large-context LLM inference with a ~3-bit TurboQuant KV cache on any Vulkan GPU.

Public surface (imported lazily so `import nexvk` stays cheap and never touches Vulkan):
devices(), codec(), FORMATS, KVCache, Model, perplexity.
"""
__version__ = "0.1.0"

FORMATS = ("f16", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4")


def devices():
    """Vulkan devices as plain records; [] when there is no loader or driver (never crashes)."""
    from nexvk.device.probe import devices as _devices
    return _devices()


def codec(name, head_dim, seed=0, backend="numpy", device=None):
    """A codec for one format at one head_dim (see nexvk.codec)."""
    from nexvk.codec import codec as _codec
    return _codec(name, head_dim, seed=seed, backend=backend, device=device)


def __getattr__(name):
    if name == "KVCache":
        from nexvk.cache import KVCache
        return KVCache
    if name == "Model":
        from nexvk.model.llama import Model
        return Model
    if name == "perplexity":
        from nexvk.model.eval import perplexity
        return perplexity
    raise AttributeError(f"module 'nexvk' has no attribute {name!r}")
