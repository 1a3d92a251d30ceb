"""KVCache: compressed keys and values per layer, attention computed from the codes.

All memory for `capacity` tokens is reserved at construction; append() and attention()
allocate nothing afterwards. The numpy backend is the reference; the vulkan backend keeps
the cache on the device (only new rows go up, only attention outputs come back) and packs
layers into arenas no larger than the device's storage-buffer limit. One lock serializes the
public methods, so a cache shared by threads never loses or mixes up tokens (calls then run
one at a time, not in parallel).
"""
import itertools
import threading
import weakref
from types import SimpleNamespace

import numpy as np

from nexvk.kernels import attention as attn_kernel
from nexvk.kernels import dyn as dyn_words
from nexvk.kernels import layout
from nexvk.quant import check_vectors
from nexvk.quant.formats import make

_ids = itertools.count()
_SCRATCH_BYTES = 16 << 20  # scores + split partials of one dispatch of queries (vulkan)


class KVCache:
    """A KV cache of n_layers x capacity tokens x n_kv_heads vectors of head_dim, with key
    and value formats chosen independently from nexvk.FORMATS.

    backend: "numpy" (reference), "vulkan" (device `device`, else NEXVK_DEVICE, else the
    best) or "auto" (vulkan when a device exists, else numpy with a message).
    n_heads: query heads the attention calls will use (default: sized for up to 8x
    n_kv_heads); giving it lets the vulkan backend build every pipeline at construction.
    max_batch: most rows per device dispatch; longer appends and prefills are chunked.
    window: a sliding window in tokens, for every layer or a list per layer (0/None: the whole
    context). A query at position p then sees keys p-window+1..p (llama.cpp's standard SWA),
    and the layer keeps ring_slots(capacity, window, max_batch) slots: at most max_batch rows
    per append and attention call on it.
    """

    def __init__(self, n_layers, n_kv_heads, head_dim, capacity, k_type="turbo3",
                 v_type="turbo3", backend="numpy", device=None, seed=0, n_heads=None,
                 max_batch=256, window=None):
        for name, val in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads),
                          ("head_dim", head_dim), ("capacity", capacity),
                          ("max_batch", max_batch), ("n_heads", n_heads)):
            # NOTE: bool and float are refused: a float's bits once reached a shader constant
            if (val is not None or name != "n_heads") and not (_is_int(val) and val >= 1):
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        self.kfmt = make(k_type, head_dim, seed)
        self.vfmt = make(v_type, head_dim, seed)
        self.n_layers, self.n_kv_heads, self.head_dim = int(n_layers), int(n_kv_heads), int(head_dim)
        self.capacity, self.k_type, self.v_type = int(capacity), k_type, v_type
        if n_heads is not None and (n_heads < n_kv_heads or n_heads % n_kv_heads):
            raise ValueError(f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}")
        self.max_heads = int(n_heads or 8 * n_kv_heads)
        self.max_batch = int(max_batch)
        self.windows = _windows(window, self.n_layers, self.capacity)
        self.slots = [ring_slots(self.capacity, w, self.max_batch) for w in self.windows]
        self._len = [0] * self.n_layers
        self._lock = threading.Lock()
        self.stats = {"skipped": 0, "total": 0, "skip_rate": 0.0}
        from nexvk.device.manager import resolve_backend
        self.backend = resolve_backend(backend, device)
        # the stores get the geometry, not the cache, so a dropped cache frees at once
        # per layer: K and V formats, slots, window (0: the layer sees its whole context)
        L = self.n_layers
        geo = SimpleNamespace(n_layers=L, n_kv_heads=self.n_kv_heads,
                              head_dim=self.head_dim, capacity=self.capacity, kfmt=self.kfmt,
                              vfmt=self.vfmt, max_heads=self.max_heads, kfmts=[self.kfmt] * L,
                              vfmts=[self.vfmt] * L, windows=self.windows, slots=self.slots)
        if self.backend == "numpy":
            self._impl = _NumpyStore(geo)
        else:
            self._impl = _VulkanStore(geo, device, max_batch, n_heads)

    @property
    def nbytes(self):
        """Device (or host) bytes of K and V: every slot of every layer."""
        per_token = self.n_kv_heads * (self.kfmt.bytes_per_vector() + self.vfmt.bytes_per_vector())
        return sum(self.slots) * per_token

    @property
    def bits_per_value(self):
        return (self.kfmt.bits_per_value + self.vfmt.bits_per_value) / 2

    def length(self, layer):
        self._check_layer(layer)
        with self._lock:
            return self._len[layer]

    def reset(self):
        with self._lock:
            self._len = [0] * self.n_layers

    def truncate(self, n):
        """Forget every token at position n or later in every layer (rolls back a step
        that failed partway; the codes stay but are never read again).
        NOTE: on a ring layer the failed step's <= max_batch new rows may have overwritten
        slots of positions more than a window before n, which no later query reads."""
        if not (_is_int(n) and n >= 0):
            raise ValueError(f"truncate needs a position >= 0, got {n!r}")
        with self._lock:
            self._len = [min(length, int(n)) for length in self._len]

    def append(self, layer, k, v):
        """Encode k, v (T, n_kv_heads, head_dim) after the tokens already in `layer`."""
        self._check_layer(layer)
        shape = (self.n_kv_heads, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[1:] != shape:
                got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
                raise ValueError(f"{name} must have shape (T, {shape[0]}, {shape[1]}), got {got}")
        if k.shape[0] != v.shape[0]:
            raise ValueError(f"k and v have different token counts: {k.shape[0]} vs {v.shape[0]}")
        self._check_ring(layer, k.shape[0], "append")
        kf = self.kfmt.storable(k, "k")
        vf = self.vfmt.storable(v, "v")
        with self._lock:
            n = self._len[layer]
            if n + k.shape[0] > self.capacity:
                raise ValueError(f"cache full: layer {layer} holds {n} of {self.capacity} "
                                 f"tokens; cannot append {k.shape[0]} more")
            self._impl.append(layer, n, kf, vf)
            self._len[layer] = n + k.shape[0]

    def attention(self, layer, q, scale=None, sparse_v=None):
        """Causal attention of q (T, n_heads, head_dim), the last T positions of `layer`,
        over the cached keys and values. Returns float32 (T, n_heads, head_dim)."""
        self._check_layer(layer)
        d = self.head_dim
        if not isinstance(q, np.ndarray) or q.ndim != 3 or q.shape[2] != d:
            got = q.shape if isinstance(q, np.ndarray) else type(q).__name__
            raise ValueError(f"q must have shape (T, n_heads, {d}), got {got}")
        T, H, _ = q.shape
        if H % self.n_kv_heads:
            raise ValueError(f"q has {H} heads, not a multiple of n_kv_heads={self.n_kv_heads}")
        self._check_ring(layer, T, "attend with")
        qf = check_vectors(q, d, "q").reshape(T, H, d)
        if scale is None:
            scale = 1.0 / np.sqrt(d)
        elif not (_is_real(scale) and 0 < scale < np.inf):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        thr = check_sparse_v(sparse_v)
        with self._lock:
            n = self._len[layer]
            if T == 0 or T > n:
                raise ValueError(f"q has {T} positions but layer {layer} holds {n} tokens "
                                 "(queries are the last T cached positions)")
            out, skipped, total = self._impl.attention(layer, qf, n - T, float(scale), thr)
            self.stats = {"skipped": skipped, "total": total,
                          "skip_rate": skipped / total if total else 0.0}
        return out

    def advance(self, pos, T):
        """Count T tokens at positions pos.. as written into every layer by a device step
        recorded with record_append (which does not pass through append()); the same checks
        as append(), made before the step runs."""
        if self.backend != "vulkan":
            raise ValueError("advance() is for steps recorded on the vulkan backend")
        for layer, n in enumerate(self._len):
            if n != pos:
                raise ValueError(f"a step at position {pos}, but layer {layer} holds {n} tokens")
            if n + T > self.capacity:
                raise ValueError(f"cache full: layer {layer} holds {n} of {self.capacity} "
                                 f"tokens; cannot append {T} more")
            self._check_ring(layer, T, "append")
        self._len = [pos + T] * self.n_layers

    @property
    def store(self):
        """The device store, for recording cache writes and attention into a caller's graph
        (record_append, record_attention, and its dyn and stats buffers)."""
        if self.backend != "vulkan":
            raise ValueError("only the vulkan backend has a device store")
        return self._impl

    def _check_ring(self, layer, T, what):
        """A ring layer holds window + max_batch - 1 keys: enough for T <= max_batch queries."""
        if self.slots[layer] < self.capacity and T > self.max_batch:
            raise ValueError(f"layer {layer} keeps a {self.windows[layer]}-token window in "
                             f"{self.slots[layer]} slots, so it takes at most max_batch="
                             f"{self.max_batch} rows per call; cannot {what} {T}")

    def _check_layer(self, layer):
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in 0..{self.n_layers - 1}, got {layer!r}")

    def __repr__(self):
        return (f"KVCache({self.n_layers} layers x {self.capacity} tokens x {self.n_kv_heads} heads "
                f"x {self.head_dim}, k={self.k_type}, v={self.v_type}, {self.backend})")


def check_sparse_v(sparse_v):
    """The sparse-V threshold as a float in [0, 1) (None = 0 = off); ValueError otherwise."""
    if sparse_v is None:
        return 0.0
    if not (_is_real(sparse_v) and 0.0 <= sparse_v < 1.0):
        raise ValueError(f"sparse_v must be a weight threshold in [0, 1), got {sparse_v!r}")
    return float(sparse_v)


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x):
    return _is_int(x) or isinstance(x, (float, np.floating))


class _NumpyStore:
    """Host arrays per layer: codes (slots, HKV, W) uint32, scales (slots, HKV, S) f16, where
    position p lives in slot p % slots (a ring on sliding-window layers, p itself elsewhere)."""

    def __init__(self, c):
        self.c = c
        self.k = ([np.zeros((n, c.n_kv_heads, c.kfmt.words), np.uint32) for n in c.slots],
                  [np.zeros((n, c.n_kv_heads, c.kfmt.n_scales), np.float16) for n in c.slots])
        self.v = ([np.zeros((n, c.n_kv_heads, c.vfmt.words), np.uint32) for n in c.slots],
                  [np.zeros((n, c.n_kv_heads, c.vfmt.n_scales), np.float16) for n in c.slots])

    def append(self, layer, n, kf, vf):
        c = self.c
        T = len(kf) // c.n_kv_heads
        kcodes, kscales = c.kfmt.encode_rows(kf)     # encode both before writing either
        vcodes, vscales = c.vfmt.encode_rows(vf)
        rows = np.arange(n, n + T) % c.slots[layer]  # (T,) slots of positions n..n+T-1
        for (codes, scales), (ec, es) in ((self.k, (kcodes, kscales)), (self.v, (vcodes, vscales))):
            codes[layer][rows] = ec.reshape(T, c.n_kv_heads, -1)
            scales[layer][rows] = es.reshape(T, c.n_kv_heads, -1)

    def attention(self, layer, q, pos0, scale, thr):
        c = self.c
        return attn_kernel.ref(c.kfmt, c.vfmt, self.k[0][layer], self.k[1][layer],
                               self.v[0][layer], self.v[1][layer], q, pos0, scale, thr,
                               window=c.windows[layer])


def ring_slots(capacity, window, max_batch):
    """Slots a layer keeps: its capacity, or with a window the keys that max_batch queries
    appended together can see (window + max_batch - 1), when that is fewer."""
    return capacity if not window else min(capacity, window + max_batch - 1)


def _windows(window, n_layers, capacity):
    """Per-layer windows from an int or a list (0/None: none); a window as long as the
    capacity masks nothing, so it is stored as 0."""
    ws = window if isinstance(window, (list, tuple)) else [window] * n_layers
    if len(ws) != n_layers:
        raise ValueError(f"window has {len(ws)} entries for {n_layers} layers")
    out = []
    for w in ws:
        w = 0 if w is None else w
        if not isinstance(w, (int, np.integer)) or w < 0:
            raise ValueError(f"window must be a non-negative integer or None, got {w!r}")
        out.append(int(w) if w < capacity else 0)
    return out


class _VulkanStore:
    """Layers packed into arenas on the device, plus the buffers every layer shares: format
    tables, the per-call `dyn` words [T, pos0, scale, sparse-V threshold], sparse-V counters,
    and scratch for the attention passes of `chunk` queries.

    Work is recorded into Graphs (one submission each): record_append / record_attention add
    one layer's dispatches to any graph, e.g. a model's whole-step graph reading and writing
    its own activation buffers; append / attention are the host-array calls, each one
    submission of a small graph recorded once per (layer, rows) and replayed after.
    """

    def __init__(self, c, device, max_batch, n_heads):
        from nexvk.device.manager import get_device
        self.c = c
        self.dev = dev = get_device(device)
        pool = dev.pool
        d, hkv = c.head_dim, c.n_kv_heads
        self.tag = f"kvcache{next(_ids)}/"
        self._graphs = {}
        weakref.finalize(self, _release, dev, self.tag, self._graphs)  # memory goes with the cache
        # layers -> arenas of at most the storage-buffer limit; per layer, contiguous:
        # [K codes, K scales, V codes, V scales] for its slots
        sizes = []
        for kf, vf, cap in zip(c.kfmts, c.vfmts, c.slots):
            kw = layout.region_words(kf, cap * hkv)
            sizes.append((kw, kw + layout.region_words(vf, cap * hkv)))
        limit = dev.max_buffer_bytes // 4
        if max(w for _, w in sizes) > limit:
            raise ValueError(f"one layer of this cache needs {4 * max(w for _, w in sizes) / 2**20:.1f}"
                             f" MiB, over {dev.name}'s {dev.max_buffer_bytes / 2**20:.0f} MiB "
                             "storage-buffer limit; lower the capacity")
        placed, arena_words = [], [0]  # (arena index, base word) per layer
        for _, w in sizes:
            if arena_words[-1] + w > limit:
                arena_words.append(0)
            placed.append((len(arena_words) - 1, arena_words[-1]))
            arena_words[-1] += w
        arenas = [pool.get(f"{self.tag}arena{a}", n) for a, n in enumerate(arena_words)]
        self.regions = []  # per layer: (arena, (k_base, k_sbase), (v_base, v_sbase))
        for (a, base), (kw, _), kf, vf, cap in zip(placed, sizes, c.kfmts, c.vfmts, c.slots):
            self.regions.append((arenas[a], (base, base + cap * hkv * kf.words),
                                 (base + kw, base + kw + cap * hkv * vf.words)))
        # format tables: layer l's K table at tabs[l][0], its V table at tabs[l][1]
        per = layout.TAB_SIGNS + d
        self.tab = pool.get(self.tag + "tab", 2 * c.n_layers * per, np.float32, kind="device")
        self.tabs = []
        for layer, (kf, vf) in enumerate(zip(c.kfmts, c.vfmts)):
            ko, vo = 2 * layer * per, (2 * layer + 1) * per
            self.tab.host[ko:ko + per], self.tab.host[vo:vo + per] = layout.table(kf), layout.table(vf)
            self.tabs.append((ko, vo))
        self.stats = pool.get(self.tag + "stats", 2, np.uint32, kind="device")
        # the per-call words (nexvk/kernels/dyn.py), with room for a model step's token ids
        self.dyn = pool.get(self.tag + "dyn", dyn_words.size(max_batch), np.uint32, kind="device")
        # scratch (scores, per-split partials) sized for the largest group and `chunk` queries
        H, g_max = c.max_heads, c.max_heads // hkv
        stride = max(c.slots)
        one = attn_kernel.Plan(d, hkv, g_max, max(self._keys(i) for i in range(c.n_layers)), 1)
        one.check_shared_memory(dev.info["limits"]["max_compute_shared_memory_size"], dev.name)
        per_query = 4 * (H * stride + one.part_floats)
        if per_query > dev.max_buffer_bytes:
            raise ValueError(f"attention over {H} heads x {stride} tokens exceeds {dev.name}'s "
                             "storage-buffer limit; lower the capacity")
        self.chunk = max(1, min(max_batch, max(_SCRATCH_BYTES, per_query) // per_query))
        self.scr = pool.get(self.tag + "scores", self.chunk * H * stride, np.float32)
        self.part = pool.get(self.tag + "partials", self.chunk * one.part_floats, np.float32)
        self.io = {}  # staging of the host-array calls, for 1 row and for `chunk` rows
        for rows in sorted({1, self.chunk}):
            self.io[rows] = {
                "k": pool.get(f"{self.tag}k{rows}", rows * hkv * d, np.float32, kind="device"),
                "v": pool.get(f"{self.tag}v{rows}", rows * hkv * d, np.float32, kind="device"),
                "q": pool.get(f"{self.tag}q{rows}", rows * H * d, np.float32, kind="device"),
                "o": pool.get(f"{self.tag}o{rows}", rows * H * d, np.float32, kind="device"),
            }
        dev.run(uploads=[self.tab])
        for layer in range(c.n_layers):  # record every graph now, not on the first token
            for rows in self.io:
                self._append_graph(layer, rows)
                if n_heads:
                    self._attention_graph(layer, rows, n_heads)

    def _keys(self, layer):
        """Most keys one query of `layer` sees."""
        return self.c.windows[layer] or self.c.slots[layer]

    # ---- recording into any graph ---------------------------------------------------------
    def record_append(self, g, layer, k, v, rows, k_off=0, v_off=0):
        """Quantize dyn[0] tokens of k, v (device buffers holding (rows, hkv, d) float32 at
        float offsets k_off, v_off) into `layer` at positions dyn[1].. ."""
        c, dev = self.c, self.dev
        arena, kreg, vreg = self.regions[layer]
        ktab, vtab = self.tabs[layer]
        n = rows * c.n_kv_heads
        for x, off, fmt, reg, tabo in ((k, k_off, c.kfmts[layer], kreg, ktab),
                                       (v, v_off, c.vfmts[layer], vreg, vtab)):
            pipe = dev.pipeline("quantize", [x, arena, self.tab, self.dyn], n,
                                [layout.WG, c.head_dim, *layout.spec(fmt)])
            g.dispatch(pipe, layout.quantize_push(*reg, tabo, c.n_kv_heads, c.slots[layer], off))

    def record_attention(self, g, layer, q, o, rows, n_heads, q_off=0, o_off=0):
        """Causal attention of dyn[0] queries (q: device buffer holding (rows, n_heads, d) at
        float offset q_off) at positions dyn[1].. over `layer`, into o at o_off; in
        dispatches of `chunk` queries."""
        c = self.c
        group = n_heads // c.n_kv_heads
        arena, kreg, vreg = self.regions[layer]
        bufs = [arena, q, o, self.scr, self.part, self.tab, self.stats, self.dyn]
        spec = attn_kernel.spec(c.kfmts[layer], c.vfmts[layer], group)
        for q0 in range(0, rows, self.chunk):
            plan = attn_kernel.Plan(c.head_dim, c.n_kv_heads, group, self._keys(layer),
                                    min(self.chunk, rows - q0))
            push = plan.push(c.n_kv_heads, kreg, vreg, *self.tabs[layer], c.slots[layer], q0,
                             c.windows[layer], q_off, o_off)
            for name, n in (("attn_scores", plan.groups), ("attn_values", plan.groups),
                            ("attn_reduce", plan.reduce_groups)):
                g.dispatch(self.dev.pipeline(name, bufs, n, spec), push)

    # ---- host-array calls -------------------------------------------------------------------
    def _append_graph(self, layer, rows):
        key = ("append", layer, rows)
        if key not in self._graphs:
            io = self.io[rows]
            g = self.dev.graph().upload(io["k"], io["v"], self.dyn)
            self.record_append(g, layer, io["k"], io["v"], rows)
            self._graphs[key] = g
        return self._graphs[key]

    def _attention_graph(self, layer, rows, n_heads):
        key = ("attention", layer, rows, n_heads)
        if key not in self._graphs:
            io = self.io[rows]
            g = self.dev.graph().upload(io["q"], self.stats, self.dyn)
            self.record_attention(g, layer, io["q"], io["o"], rows, n_heads)
            self._graphs[key] = g.download(io["o"], self.stats)
        return self._graphs[key]

    def _rows(self, n):
        return 1 if n == 1 else self.chunk

    def append(self, layer, n, kf, vf):
        c = self.c
        hkv, d = c.n_kv_heads, c.head_dim
        T = len(kf) // hkv
        with self.dev.lock:
            for s in range(0, T, self.chunk):
                m = min(self.chunk, T - s)
                io = self.io[self._rows(m)]
                io["k"].host[: m * hkv * d] = kf[s * hkv:(s + m) * hkv].reshape(-1)
                io["v"].host[: m * hkv * d] = vf[s * hkv:(s + m) * hkv].reshape(-1)
                self.dyn.host[:2] = (m, n + s)
                self._append_graph(layer, self._rows(m)).run()

    def attention(self, layer, q, pos0, scale, thr):
        c = self.c
        T, H, d = q.shape
        if H > c.max_heads:
            raise ValueError(f"q has {H} heads; this cache was sized for at most {c.max_heads} "
                             "(pass n_heads= to KVCache)")
        out = np.empty((T, H, d), np.float32)
        skipped = total = 0
        with self.dev.lock:
            for s in range(0, T, self.chunk):
                m = min(self.chunk, T - s)
                rows = self._rows(m)
                io = self.io[rows]
                io["q"].host[: m * H * d] = q[s:s + m].reshape(-1)
                self.stats.host[:] = 0
                attn_kernel.set_dyn(self.dyn.host, m, pos0 + s, scale, thr)
                self._attention_graph(layer, rows, H).run()
                out[s:s + m] = io["o"].host[: m * H * d].reshape(m, H, d)
                skipped += int(self.stats.host[0])
                total += int(self.stats.host[1])
        if thr <= 0:  # the counters run only with sparse V
            total = H * attn_kernel.visible_keys(pos0, T, c.windows[layer])
        return out, skipped, total


def _release(dev, tag, graphs):
    for g in graphs.values():
        g.destroy()
    graphs.clear()
    dev.release(tag)
