"""The registry of backends: per name, the classes and functions that make it up, and the one
place where "auto" (or a name) becomes a backend.

A backend is a set of modules named here by "module:attribute" strings (imported on first
use, so `import nexvk` never touches Vulkan): its model Ops, its KV cache store, its weight
loader and its codec. `device` says whether it runs on a Vulkan device (then it takes a device
index, records steps into device graphs and has a cache store with record_append /
record_attention). Adding a backend is one entry in BACKENDS plus its modules.
"""
import importlib
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str
    ops: str        # Ops class for nexvk.model.forward (ops(cache, sparse_v))
    store: str      # KV cache store class (store(layout, transform, device))
    weights: str    # weight loader: load(gguf, arch, device, progress) -> Weights
    codec: str      # codec class: codec(name, head_dim, seed[, device=])
    device: bool    # runs on a Vulkan device

    def get(self, part):
        """The class or function `part` ("ops", "store", "weights", "codec") names."""
        module, attr = getattr(self, part).split(":")
        return getattr(importlib.import_module(module), attr)


BACKENDS = {b.name: b for b in (
    Backend("numpy", "nexvk.model.ops_numpy:NumpyOps", "nexvk.cache.numpy_store:NumpyStore",
            "nexvk.model.ops_numpy:load_weights", "nexvk.quant:Codec", device=False),
    Backend("vulkan", "nexvk.model.ops_vulkan:VulkanOps", "nexvk.cache.vulkan_store:VulkanStore",
            "nexvk.model.ops_vulkan:load_weights", "nexvk.kernels.codec:VulkanCodec",
            device=True),
    # the KV cache in numba kernels (nexvk/cpu/); its model Ops and weights are numpy's until
    # the cpu Ops of issue 14 take their place
    Backend("cpu", "nexvk.model.ops_numpy:NumpyOps", "nexvk.cache.cpu_store:CpuStore",
            "nexvk.model.ops_numpy:load_weights", "nexvk.quant:Codec", device=False),
)}


def backend(name):
    """The Backend called `name` (not "auto": see resolve); ValueError listing the known ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use 'auto' or one of: "
                         f"{', '.join(BACKENDS)}")
    return BACKENDS[name]


def resolve(name, device=None, numpy_bytes=None):
    """The backend name to run: `name` itself, or for "auto": vulkan when a device was named
    (argument or NEXVK_DEVICE) or a GPU exists. With only a CPU Vulkan driver (lavapipe) it
    runs numpy, which is faster on the same cores, while what numpy would hold (numpy_bytes:
    a model's float32 weights + KV, when known) takes at most half the available memory;
    beyond that the device path, which keeps the weights as stored. With no device: numpy.
    It says which and why on stderr. Asking for vulkan without a device fails clearly later,
    in Device()."""
    from nexvk.device import manager, probe
    if name != "auto":
        b = backend(name)
        if not b.device and device is not None and not isinstance(device, manager.Device):
            probe.choose(device)  # a device that does not exist is an error here too, not ignored
        return b.name
    devs = probe.devices()
    if device is not None or os.environ.get("NEXVK_DEVICE") or \
            any(d["type"] != "cpu" for d in devs):
        return "vulkan"
    if not devs:
        why = f"no Vulkan device ({probe.last_error() or 'none found'})"
    else:
        avail = manager.available_memory()
        if numpy_bytes and avail and numpy_bytes > avail / 2:
            print(f"nexvk: the numpy backend would hold {numpy_bytes / 2**20:.0f} MiB (float32 "
                  f"weights + KV), over half of the {avail / 2**20:.0f} MiB available; using "
                  f"vulkan on {devs[0]['name']}, which keeps the weights as stored",
                  file=sys.stderr)
            return "vulkan"
        why = (f"only a CPU Vulkan driver ({devs[0]['name']}): numpy is faster on the same "
               "cores; pass --backend vulkan to use it anyway")
    print(f"nexvk: {why}; using numpy", file=sys.stderr)
    return "numpy"
