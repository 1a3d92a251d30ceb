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
    threads: bool = False  # its Ops take threads= (the cpu backend's -t)

    def get(self, part):
        """The class or function `part` ("ops", "store", "weights", "codec") names."""
        module, attr = getattr(self, part).split(":")
        return getattr(importlib.import_module(module), attr)


BACKENDS = {b.name: b for b in (
    Backend("numpy", "nexvk.model.ops_numpy:NumpyOps", "nexvk.cache.numpy_store:NumpyStore",
            "nexvk.model.ops_numpy:load_weights", "nexvk.quant:Codec", device=False),
    # cpu: numba-compiled Ops over weights as stored, the KV cache in numba kernels (nexvk/cpu)
    Backend("cpu", "nexvk.cpu.ops:CpuOps", "nexvk.cache.cpu_store:CpuStore",
            "nexvk.cpu.weights:load_weights", "nexvk.quant:Codec", device=False, threads=True),
    Backend("vulkan", "nexvk.model.ops_vulkan:VulkanOps", "nexvk.cache.vulkan_store:VulkanStore",
            "nexvk.model.ops_vulkan:load_weights", "nexvk.kernels.codec:VulkanCodec",
            device=True),
)}


def backend(name):
    """The Backend called `name` (not "auto": see resolve); ValueError listing the known ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use 'auto' or one of: "
                         f"{', '.join(BACKENDS)}")
    return BACKENDS[name]


def resolve(name, device=None, numpy_bytes=None):
    """The backend name to run: `name` itself, or for "auto": vulkan when a device was named
    (argument or NEXVK_DEVICE) or a GPU exists; otherwise cpu (compiled kernels on the same
    cores, weights as stored: faster than numpy or a CPU Vulkan driver). Only when numba is
    missing: numpy, or with a CPU Vulkan driver (lavapipe) the device path when what numpy
    would hold (numpy_bytes: a model's float32 weights + KV, when known) takes over half the
    available memory. It says which and why on stderr. Asking for vulkan without a device
    fails clearly later, in Device()."""
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
    why = (f"only a CPU Vulkan driver ({devs[0]['name']})" if devs else
           f"no Vulkan device ({probe.last_error() or 'none found'})")
    from nexvk.cpu import jit
    if jit.available():
        print(f"nexvk: {why}; using the cpu backend (compiled kernels, {jit.max_threads()} "
              "threads)", file=sys.stderr)
        return "cpu"
    why += " and numba is not installed (pip install numba for the cpu backend)"
    if devs:
        avail = manager.available_memory()
        if numpy_bytes and avail and numpy_bytes > avail / 2:
            print(f"nexvk: {why}; the numpy backend would hold {numpy_bytes / 2**20:.0f} MiB "
                  f"(float32 weights + KV), over half of the {avail / 2**20:.0f} MiB available; "
                  f"using vulkan on {devs[0]['name']}, which keeps the weights as stored",
                  file=sys.stderr)
            return "vulkan"
    print(f"nexvk: {why}; using numpy", file=sys.stderr)
    return "numpy"
