"""One Vulkan device through Kompute: a buffer pool, cached pipelines, recorded graphs.

Everything that touches `kp` is here. Callers see Buffer objects (a kp tensor plus its
numpy host view) and Pipeline handles. A Graph is a list of uploads, dispatches and
downloads recorded into ONE command sequence and replayed as one submission per run();
a barrier goes between two dispatches exactly where the later one reads or writes a buffer
that an earlier one wrote, or writes one that an earlier one read (each shader's access to
its bindings comes from its SPIR-V). `Device.run(uploads, dispatches, downloads)` is the
one-call form, cached by recipe.
NOTE: the barrier is `kp.OpBarrier`, a binding that tools/setup.sh patches into Kompute 0.9
(its Python API has no compute-to-compute barrier).
"""
import os
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
    """A compiled shader bound to its buffers; `key` names it in recorded sequences.
    `reads` and `writes`: names of the buffers the shader may read and write."""

    def __init__(self, key, algo, buffers, access):
        self.key, self.algo = key, algo
        self.reads = frozenset(b.name for i, b in enumerate(buffers) if access.get(i, (1, 1))[0])
        self.writes = frozenset(b.name for i, b in enumerate(buffers) if access.get(i, (1, 1))[1])


class Graph:
    """Uploads, then dispatches (with barriers only where needed), then downloads, recorded
    once into one command sequence; every run() is one queue submission."""

    def __init__(self, device):
        self.device = device
        self.uploads, self.downloads, self.steps = [], [], []  # steps: pipelines or "barrier"
        self._read, self._written = set(), set()  # since the last barrier
        self._seq = None

    def upload(self, *buffers):
        self._check_open()
        self.uploads += [b for b in buffers if b not in self.uploads]
        return self

    def download(self, *buffers):
        self._check_open()
        self.downloads += [b for b in buffers if b not in self.downloads]
        return self

    def dispatch(self, pipe, push=()):
        self._check_open()
        if (pipe.reads | pipe.writes) & self._written or pipe.writes & self._read:
            self.steps.append("barrier")
            self._read, self._written = set(), set()
        self.steps.append((pipe, tuple(push)))
        self._read |= pipe.reads
        self._written |= pipe.writes
        return self

    @property
    def n_barriers(self):
        return self.steps.count("barrier")

    def _check_open(self):
        if self._seq is not None:
            raise RuntimeError("this graph was recorded already; build a new one")

    def _record(self):
        kp = self.device._kp
        seq = self.device.mgr.sequence()
        if self.uploads:
            seq.record(kp.OpTensorSyncDevice([b.tensor for b in self.uploads]))
            if self.steps:  # NOTE: Kompute orders transfer writes before shader reads only
                seq.record(kp.OpBarrier())
        for step in self.steps:
            if step == "barrier":
                seq.record(kp.OpBarrier())
                continue
            pipe, push = step
            words = np.zeros(32, np.uint32)
            words[: len(push)] = spirv.words(push)
            seq.record(kp.OpAlgoDispatch(pipe.algo, words))
        if self.downloads:
            seq.record(kp.OpTensorSyncLocal([b.tensor for b in self.downloads]))
        return seq

    def prepare(self):
        """Record the command sequence now (else the first run() does): a graph made ahead
        of time then creates nothing when it first runs."""
        with self.device.lock:
            if self._seq is None:
                self._seq = self._record()
                self.device.n_sequences += 1
        return self

    def run(self):
        """Submit the whole graph once and wait for it (one submission at a time per device:
        a Vulkan queue must not be used by two threads at once)."""
        with self.device.lock:
            self.prepare()
            self.device.submissions += 1
            self._seq.eval()

    def destroy(self):
        with self.device.lock:
            if self._seq is not None:
                self._seq.destroy()
                self._seq = None

    def uses(self, prefix):
        names = [b.name for b in self.uploads + self.downloads]
        for step in self.steps:
            if step != "barrier":
                names += list(step[0].key[1])
        return any(n.startswith(prefix) for n in names)


class BufferPool:
    """Owns all device memory of one Device. Buffers are named; asking again for a name
    returns the same buffer, so steady-state work allocates nothing. `allocations` and
    `nbytes` let a test prove it."""

    def __init__(self, mgr, max_buffer_bytes, lock, heap_bytes=0):
        self._mgr = mgr
        self._lock = lock    # the device's: buffers are made and freed one thread at a time
        self.max_buffer_bytes = max_buffer_bytes
        self.heap_bytes = heap_bytes   # the device-local heap (0: unknown, not checked)
        self._buffers = {}
        self.allocations = 0
        self.nbytes = 0
        self.device_bytes = 0          # device-local bytes of the buffers (no staging copies)

    def __contains__(self, name):
        return name in self._buffers

    def get(self, name, size, dtype=np.uint32, kind="storage"):
        with self._lock:
            return self._get(name, size, dtype, kind)

    def _get(self, name, size, dtype, kind):
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
        if self.heap_bytes and self.device_bytes + size * 4 > self.heap_bytes:
            # checked before allocating: past the heap the driver fails or the process dies
            raise ValueError(f"buffer {name!r} ({size * 4 / 2**20:.1f} MiB) would take this "
                             f"device's memory to {(self.device_bytes + size * 4) / 2**20:.0f} "
                             f"MiB, over its {self.heap_bytes / 2**20:.0f} MiB device-local heap; "
                             "lower the context (-c) or choose a smaller cache format")
        ttype = kp.TensorTypes.storage if kind == "storage" else kp.TensorTypes.device
        tensor = self._mgr.tensor_t(np.zeros(size, dtype), tensor_type=ttype)
        buf = self._buffers[name] = Buffer(name, tensor, dtype, size, kind)
        self.allocations += 1
        self.device_bytes += buf.nbytes
        self.nbytes += buf.nbytes * (2 if kind == "device" else 1)  # device kind has a staging copy
        return buf

    def release(self, prefix):
        """Forget (and free) every buffer whose name starts with prefix."""
        with self._lock:
            for name in [n for n in self._buffers if n.startswith(prefix)]:
                buf = self._buffers.pop(name)
                self.nbytes -= buf.nbytes * (2 if buf.kind == "device" else 1)
                self.device_bytes -= buf.nbytes
                buf.tensor.destroy()


class Device:
    """A Vulkan device: `pool`, `pipeline(...)` (created once per key), `run(steps)`."""

    def __init__(self, index=None):
        self.info = probe.choose(index)  # raises a clear error when there is no device
        import kp
        if not hasattr(kp, "OpBarrier"):
            raise RuntimeError("this Kompute build lacks nexvk's barrier patch "
                               "(tools/patches); rerun tools/setup.sh to rebuild it")
        self._kp = kp
        self.mgr = kp.Manager(self.info["index"])
        limits = self.info["limits"]
        self.max_buffer_bytes = min(limits["max_storage_buffer_range"], 1 << 31)
        # one lock for everything shared on this device (buffer pool, pipeline and graph
        # caches, the queue, the upload staging buffer): threads use the device in turn.
        # Reentrant, so a caller may hold it across several of these calls (a whole upload).
        self.lock = threading.RLock()
        self.pool = BufferPool(self.mgr, self.max_buffer_bytes, self.lock,
                               self.info.get("memory_bytes") or 0)
        self._pipelines = {}
        self._graphs = {}  # run() recipes -> Graph
        self.submissions = 0           # queue submissions so far (one per Graph.run)
        self.n_sequences = 0     # command sequences recorded so far

    @property
    def name(self):
        return self.info["name"]

    def pipeline(self, shader, buffers, groups, spec):
        """A cached Kompute algorithm: shader variant bound to buffers, dispatching `groups`
        workgroups with specialization constants `spec` (sequence of ints/floats). More
        groups than the device allows in x are spread over y (shaders read GROUP_ID,
        shaders/include/group_id.glsl, and bounds-check the spare ones)."""
        with self.lock:
            return self._pipeline(shader, buffers, groups, spec)

    def _pipeline(self, shader, buffers, groups, spec):
        key = (shader, tuple(b.name for b in buffers), int(groups), tuple(spec))
        pipe = self._pipelines.get(key)
        if pipe is None:
            gy = -(-int(groups) // self.max_groups)
            if gy > self.info["limits"]["max_compute_work_group_count"][1]:
                raise ValueError(f"{groups} workgroups exceed {self.name}'s limits")
            algo = self.mgr.algorithm([b.tensor for b in buffers], spirv.load(shader),
                                      [-(-int(groups) // gy), gy, 1], spirv.words(spec),
                                      np.zeros(32, np.uint32))
            pipe = self._pipelines[key] = Pipeline(key, algo, buffers, spirv.access(shader))
        return pipe

    def graph(self):
        """A new, empty Graph on this device."""
        return Graph(self)

    @property
    def n_pipelines(self):
        return len(self._pipelines)

    @property
    def max_groups(self):
        return self.info["limits"]["max_compute_work_group_count"][0]

    def run(self, uploads=(), dispatches=(), downloads=()):
        """Upload host views, dispatch (pipeline, push constants) pairs, download host views:
        one submission. The graph is recorded once per distinct recipe and replayed after,
        so per-call values must travel in an uploaded buffer, not in push constants."""
        key = (tuple(b.name for b in uploads), tuple((p.key, tuple(push)) for p, push in dispatches),
               tuple(b.name for b in downloads))
        with self.lock:
            g = self._graphs.get(key)
            if g is None:
                g = Graph(self).upload(*uploads)
                for pipe, push in dispatches:
                    g.dispatch(pipe, push)
                g.download(*downloads)
                self._graphs[key] = g
            g.run()

    def release(self, prefix, graphs=None):
        """Free the buffers named prefix*, with the pipelines and cached graphs that use them.
        Graphs built by callers with graph() must be destroyed first: pass their dict as
        `graphs` (destroyed and emptied here), e.g. from a weakref finalizer."""
        with self.lock:
            for g in (graphs or {}).values():
                g.destroy()
            if graphs:
                graphs.clear()
            for key in [k for k, g in self._graphs.items() if g.uses(prefix)]:
                self._graphs.pop(key).destroy()
            for key in [k for k in self._pipelines if any(n.startswith(prefix) for n in k[1])]:
                self._pipelines.pop(key).algo.destroy()
            self.pool.release(prefix)

    def __repr__(self):
        return f"Device({self.info['index']}: {self.name})"


_default = {}
_default_lock = threading.Lock()


def get_device(device=None):
    """Resolve `device` (None, an index, or a Device) to a shared Device instance (one per
    index, also when threads ask at once)."""
    if isinstance(device, Device):
        return device
    index = probe.choose(device)["index"]
    with _default_lock:
        if index not in _default:
            _default[index] = Device(index)
        return _default[index]


def available_memory():
    """Bytes of memory available to a new allocation (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
