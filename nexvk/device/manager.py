"""One Vulkan device through Kompute: a buffer pool, cached pipelines, recorded sequences.

Everything that touches `kp` is here. Callers see Buffer objects (a kp tensor plus its
numpy host view) and Pipeline handles; `Device.run(uploads, dispatches, downloads)` records
each distinct recipe into a command sequence once and replays it on later calls.
NOTE: Kompute 0.9's Python API puts no barrier between two dispatches in one sequence, so a
kernel that reads another's output must go in a later run() call.
"""
import os
import sys
import threading

import numpy as np

from nexvk.device import probe, spirv

_DTYPES = {np.dtype(np.uint32), np.dtype(np.float32), np.dtype(np.int32)}


class Buffer:
    """A device buffer. `kind`: 'storage' (device only) or 'device' (with a host view)."""

    def __init__(self, name, tensor, dtype, size, kind):
        self.name, self.tensor, self.dtype, self.size, self.kind = name, tensor, dtype, size, kind
        self.nbytes = size * 4
        # (size,) host staging view; writes go up with upload, download refreshes it
        self.host = tensor.data() if kind == "device" else None

    def __repr__(self):
        return f"Buffer({self.name!r}, {self.size} x {self.dtype}, {self.kind})"


class Pipeline:
    """A compiled shader bound to its buffers; `key` names it in recorded sequences."""

    def __init__(self, key, algo):
        self.key, self.algo = key, algo


class BufferPool:
    """Owns all device memory of one Device. Buffers are named; asking again for a name
    returns the same buffer, so steady-state work allocates nothing. `allocations` and
    `nbytes` let a test prove it."""

    def __init__(self, mgr, max_buffer_bytes):
        self._mgr = mgr
        self.max_buffer_bytes = max_buffer_bytes
        self._buffers = {}
        self.allocations = 0
        self.nbytes = 0

    def get(self, name, size, dtype=np.uint32, kind="storage"):
        import kp
        dtype = np.dtype(dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"device buffers hold 32-bit words, not {dtype}")
        buf = self._buffers.get(name)
        if buf is not None:
            if buf.size < size or buf.dtype != dtype or buf.kind != kind:
                raise ValueError(f"buffer {name!r} exists as {buf}; asked for {size} x {dtype} {kind}")
            return buf
        size = max(int(size), 1)
        if size * 4 > self.max_buffer_bytes:
            raise ValueError(f"buffer {name!r} needs {size * 4 / 2**20:.1f} MiB, over this device's "
                             f"{self.max_buffer_bytes / 2**20:.0f} MiB limit per storage buffer")
        ttype = kp.TensorTypes.storage if kind == "storage" else kp.TensorTypes.device
        tensor = self._mgr.tensor_t(np.zeros(size, dtype), tensor_type=ttype)
        buf = self._buffers[name] = Buffer(name, tensor, dtype, size, kind)
        self.allocations += 1
        self.nbytes += buf.nbytes * (2 if kind == "device" else 1)  # device kind has a staging copy
        return buf

    def release(self, prefix):
        """Forget (and free) every buffer whose name starts with prefix."""
        for name in [n for n in self._buffers if n.startswith(prefix)]:
            buf = self._buffers.pop(name)
            self.nbytes -= buf.nbytes * (2 if buf.kind == "device" else 1)
            buf.tensor.destroy()


class Device:
    """A Vulkan device: `pool`, `pipeline(...)` (created once per key), `run(steps)`."""

    def __init__(self, index=None):
        self.info = probe.choose(index)  # raises a clear error when there is no device
        import kp
        self._kp = kp
        self.mgr = kp.Manager(self.info["index"])
        limits = self.info["limits"]
        self.max_buffer_bytes = min(limits["max_storage_buffer_range"], 1 << 31)
        self.pool = BufferPool(self.mgr, self.max_buffer_bytes)
        self._pipelines = {}
        self._sequences = {}
        self.lock = threading.Lock()

    @property
    def name(self):
        return self.info["name"]

    def pipeline(self, shader, buffers, groups, spec):
        """A cached Kompute algorithm: shader variant bound to buffers, dispatching `groups`
        workgroups with specialization constants `spec` (sequence of ints/floats)."""
        if groups > self.max_groups:
            raise ValueError(f"{groups} workgroups exceed {self.name}'s limit of {self.max_groups}")
        key = (shader, tuple(b.name for b in buffers), int(groups), tuple(spec))
        pipe = self._pipelines.get(key)
        if pipe is None:
            algo = self.mgr.algorithm([b.tensor for b in buffers], spirv.load(shader),
                                      [int(groups), 1, 1], spirv.words(spec), np.zeros(32, np.uint32))
            pipe = self._pipelines[key] = Pipeline(key, algo)
        return pipe

    @property
    def n_pipelines(self):
        return len(self._pipelines)

    @property
    def n_sequences(self):
        return len(self._sequences)

    @property
    def max_groups(self):
        return self.info["limits"]["max_compute_work_group_count"][0]

    def run(self, uploads=(), dispatches=(), downloads=()):
        """Upload host views, dispatch (pipeline, push constants) pairs, download host views.

        The command sequence is recorded once per distinct recipe and replayed afterwards,
        so per-call values must travel in an uploaded buffer, not in push constants.
        Dispatches in one call must not depend on each other (no barrier between them).
        """
        key = (tuple(b.name for b in uploads), tuple((p.key, tuple(push)) for p, push in dispatches),
               tuple(b.name for b in downloads))
        seq = self._sequences.get(key)
        if seq is None:
            kp = self._kp
            seq = self.mgr.sequence()
            if uploads:
                seq.record(kp.OpTensorSyncDevice([b.tensor for b in uploads]))
            for pipe, push in dispatches:
                words = np.zeros(32, np.uint32)
                words[: len(push)] = spirv.words(push)
                seq.record(kp.OpAlgoDispatch(pipe.algo, words))
            if downloads:
                seq.record(kp.OpTensorSyncLocal([b.tensor for b in downloads]))
            self._sequences[key] = seq
        seq.eval()

    def release(self, prefix):
        """Free the buffers named prefix*, with the pipelines and sequences that use them."""
        def uses(names):
            return any(n.startswith(prefix) for n in names)
        for key in [k for k in self._sequences if uses(k[0] + k[2]) or
                    any(uses(pk[1]) for pk, _ in k[1])]:
            self._sequences.pop(key).destroy()
        for key in [k for k in self._pipelines if uses(k[1])]:
            self._pipelines.pop(key).algo.destroy()
        self.pool.release(prefix)

    def __repr__(self):
        return f"Device({self.info['index']}: {self.name})"


_default = {}


def get_device(device=None):
    """Resolve `device` (None, an index, or a Device) to a shared Device instance."""
    if isinstance(device, Device):
        return device
    index = probe.choose(device)["index"]
    if index not in _default:
        _default[index] = Device(index)
    return _default[index]


def resolve_backend(backend, device=None):
    """'numpy', 'vulkan' or 'auto'. auto picks vulkan when a device was named (argument or
    NEXVK_DEVICE) or a GPU exists; with only a CPU Vulkan driver (lavapipe), or none, it
    runs numpy, which is faster on the same cores, and says so on stderr. Asking for vulkan
    without a device fails clearly later, in Device()."""
    if backend not in ("numpy", "vulkan", "auto"):
        raise ValueError(f"unknown backend {backend!r}; use 'numpy', 'vulkan' or 'auto'")
    if backend != "auto":
        return backend
    devs = probe.devices()
    if device is not None or os.environ.get("NEXVK_DEVICE") or \
            any(d["type"] != "cpu" for d in devs):
        return "vulkan"
    if devs:
        why = (f"only a CPU Vulkan driver ({devs[0]['name']}): numpy is faster on the same "
               "cores; pass --backend vulkan to use it anyway")
    else:
        why = f"no Vulkan device ({probe.last_error() or 'none found'})"
    print(f"nexvk: {why}; using numpy", file=sys.stderr)
    return "numpy"
