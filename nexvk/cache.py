"""KVCache: compressed keys and values per layer, attention computed from the codes.

All memory for `capacity` tokens is reserved at construction; append() and attention()
allocate nothing afterwards. The numpy backend is the reference; the vulkan backend keeps
the cache on the device (only new rows go up, only attention outputs come back) and packs
layers into arenas no larger than the device's storage-buffer limit.
"""
import itertools
import sys
import weakref
from types import SimpleNamespace

import numpy as np

from nexvk.kernels import attention as attn_kernel
from nexvk.kernels import layout
from nexvk.quant import check_vectors
from nexvk.quant.cachespec import CacheSpec
from nexvk.quant.formats import make
from nexvk.quant.transform import KeyTransform

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

    Turbo formats are hardened unless plain=True (see nexvk.quant.cachespec):
    sinks: the first positions of every layer kept as float16 (default 1 with a turbo
      format, else 0);
    layer_types: other K/V formats for some layers, "0-1:q8_0/q8_0" or {0: ("q8_0", "q8_0")};
    key_mean: (n_layers, n_kv_heads, head_dim) key means, e.g. from `nexvk calibrate`.
      Without it each layer's keys are centred on the mean of the non-sink keys of its first
      append in a sequence (the whole prompt when a model prefills it; one token when a
      sequence is decoded token by token); sink rows that came earlier are re-encoded then.
    key_scale: (n_layers, n_kv_heads, head_dim) positive channel scales (keys are stored
      times the scale, queries divided by it), or False for none. Default: fitted with the
      mean, from the keys and the queries append() is given (q=...), when that append holds
      at least SCALE_MIN_ROWS non-sink rows; otherwise 1.
    The key transform is applied here, on the host, for both backends; the Vulkan store
    does not keep sinks yet: there sinks must be 0 (with "auto" a cache with sinks runs on
    numpy, with a message).
    """

    def __init__(self, n_layers, n_kv_heads, head_dim, capacity, k_type="turbo3",
                 v_type="turbo3", backend="numpy", device=None, seed=0, n_heads=None,
                 max_batch=256, *, plain=False, sinks=None, layer_types=None, key_mean=None,
                 key_scale=None):
        for name, val in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads),
                          ("capacity", capacity), ("max_batch", max_batch)):
            if not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        self.spec = spec = CacheSpec.build(int(n_layers), k_type, v_type, layer_types, sinks,
                                           plain, None if key_scale is None else
                                           key_scale is not False)
        self.kfmts = [make(f, head_dim, seed) for f in spec.k_types]
        self.vfmts = [make(f, head_dim, seed) for f in spec.v_types]
        self.n_layers, self.n_kv_heads, self.head_dim = int(n_layers), int(n_kv_heads), int(head_dim)
        self.capacity, self.k_type, self.v_type = int(capacity), k_type, v_type
        if n_heads is not None and (n_heads < n_kv_heads or n_heads % n_kv_heads):
            raise ValueError(f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}")
        self.max_heads = int(n_heads or 8 * n_kv_heads)
        self.sinks = min(spec.sinks, self.capacity)
        self.transform = KeyTransform(self.n_layers, self.n_kv_heads, self.head_dim,
                                      [spec.transformed(i) for i in range(self.n_layers)],
                                      key_mean, None if key_scale is False else key_scale,
                                      spec.scaled)
        # raw keys of sink rows stored before their layer's mean was fitted (re-encoded then)
        self._raw_sinks = np.zeros((self.n_layers, self.sinks, self.n_kv_heads, self.head_dim),
                                   np.float32)
        self._len = [0] * self.n_layers
        self.stats = {"skipped": 0, "total": 0, "skip_rate": 0.0}
        self.backend = self._resolve_backend(backend, device)
        # the stores get the geometry, not the cache, so a dropped cache frees at once
        # per layer: K and V formats, slots, window (0: the layer sees its whole context);
        # the first `sinks` positions of every layer are float16 rows (not in the slots)
        L = self.n_layers
        geo = SimpleNamespace(n_layers=L, n_kv_heads=self.n_kv_heads,
                              head_dim=self.head_dim, capacity=self.capacity, kfmt=self.kfmts[0],
                              vfmt=self.vfmts[0], max_heads=self.max_heads, kfmts=self.kfmts,
                              vfmts=self.vfmts, caps=[self.capacity] * L, windows=[0] * L,
                              sinks=self.sinks)
        if self.backend == "numpy":
            self._impl = _NumpyStore(geo)
        else:
            self._impl = _VulkanStore(geo, device, max_batch, n_heads)

    def _resolve_backend(self, backend, device):
        from nexvk.device.manager import resolve_backend
        chosen = resolve_backend(backend, device)
        # NOTE: the key transform runs here, on the host, for both stores; only sinks need
        # the store's support, which the Vulkan store does not have yet
        if chosen == "vulkan" and self.sinks:
            why = f"the Vulkan backend does not keep f16 sink positions ({self.spec.describe()}) yet"
            if backend != "auto":
                raise ValueError(f"{why}; use the numpy backend, sinks=0 (--sinks 0) or plain=True "
                                 "(--plain)")
            print(f"nexvk: {why}; using numpy (pass --sinks 0 or --plain for the device)",
                  file=sys.stderr)
            chosen = "numpy"
        return chosen

    @property
    def nbytes(self):
        """Bytes of K and V for the full capacity: codes, scales, float16 sinks and the key
        transform's tables."""
        return self.n_kv_heads * sum(self.spec.layer_bytes(i, self.head_dim, self.head_dim,
                                                           self.capacity)
                                     for i in range(self.n_layers))

    @property
    def bits_per_value(self):
        """Stored bits per cached K or V value, every norm, scale, sink and mean included."""
        return 8 * self.nbytes / (self.n_layers * self.capacity * self.n_kv_heads
                                  * 2 * self.head_dim)

    def length(self, layer):
        self._check_layer(layer)
        return self._len[layer]

    def reset(self):
        self._len = [0] * self.n_layers
        self.transform.reset()

    def append(self, layer, k, v, q=None):
        """Encode k, v (T, n_kv_heads, head_dim) after the tokens already in `layer`.
        q (T, n_heads, head_dim), the queries of the same positions, is optional: the first
        append of a sequence fits the key scale from it (see the class docstring)."""
        self._check_layer(layer)
        shape = (self.n_kv_heads, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[1:] != shape:
                got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
                raise ValueError(f"{name} must have shape (T, {shape[0]}, {shape[1]}), got {got}")
        if k.shape[0] != v.shape[0]:
            raise ValueError(f"k and v have different token counts: {k.shape[0]} vs {v.shape[0]}")
        n, T = self._len[layer], k.shape[0]
        if n + T > self.capacity:
            raise ValueError(f"cache full: layer {layer} holds {n} of {self.capacity} tokens; "
                             f"cannot append {T} more")
        kf = check_vectors(k, self.head_dim, "k").reshape(k.shape)
        vf = check_vectors(v, self.head_dim, "v").reshape(v.shape)
        if q is not None:
            if not (isinstance(q, np.ndarray) and q.ndim == 3 and len(q) == T
                    and q.shape[1] % self.n_kv_heads == 0 and q.shape[2] == self.head_dim):
                got = q.shape if isinstance(q, np.ndarray) else type(q).__name__
                raise ValueError(f"q must have shape ({T}, n_heads, {self.head_dim}) with "
                                 f"n_heads a multiple of {self.n_kv_heads}, got {got}")
            q = check_vectors(q, self.head_dim, "q").reshape(q.shape)
        s = max(0, min(self.sinks - n, T))  # how many of these rows are sinks
        t = self.transform
        fit = t.active[layer] and not t.ready[layer] and s < T
        rows = [(n, kf, vf)]
        if fit and n:  # the sinks stored before the mean was known are re-encoded with it
            rows.insert(0, (0, self._raw_sinks[layer, :n], None))
        saved = t.mean[layer].copy(), t.scale[layer].copy()
        try:  # fit on this append's non-sink keys (and queries); check every row first
            if fit:
                t.fit(layer, kf[s:], None if q is None else q[s:])
            rows = [(pos, t.keys(layer, kr), vr) for pos, kr, vr in rows]
            for pos, kt, vr in rows:
                self._check_storable(layer, pos, kt, vr)
        except ValueError:
            if fit:
                (t.mean[layer], t.scale[layer]), t.ready[layer] = saved, False
            raise
        d = self.head_dim
        for pos, kt, vr in rows:
            self._impl.append(layer, pos, kt.reshape(-1, d), None if vr is None else vr.reshape(-1, d))
        self._raw_sinks[layer, n:n + s] = kf[:s]
        self._len[layer] = n + T

    def _check_storable(self, layer, pos, k, v):
        """ValueError (naming the problem) when rows at positions pos.. cannot be stored:
        sinks are float16 vectors in the compute domain (norm at most 65504), the rest
        must fit their format."""
        s = max(0, min(self.sinks - pos, len(k)))
        for name, x, fmt in (("k", k, self.kfmts[layer]), ("v", v, self.vfmts[layer])):
            if x is None:
                continue
            if s:
                norm = float(np.sqrt(np.einsum("thd,thd->th", x[:s], x[:s],
                                               dtype=np.float64).max()))
                if norm > 65504:
                    raise ValueError(f"{name} has vector norms up to {norm:.4g} in the first "
                                     f"{self.sinks} positions, which are stored as float16 "
                                     "vectors (at most 65504)")
            if s < len(x):
                fmt.check_range(x[s:].reshape(-1, self.head_dim), name)

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
        n = self._len[layer]
        if T == 0 or T > n:
            raise ValueError(f"q has {T} positions but layer {layer} holds {n} tokens "
                             "(queries are the last T cached positions)")
        qf = self.transform.queries(layer, check_vectors(q, d, "q").reshape(T, H, d))
        scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
        thr = float(sparse_v or 0.0)
        if not 0.0 <= thr < 1.0:
            raise ValueError(f"sparse_v must be a weight threshold in [0, 1), got {sparse_v}")
        out, skipped, total = self._impl.attention(layer, qf, n - T, scale, thr)
        self.stats = {"skipped": skipped, "total": total,
                      "skip_rate": skipped / total if total else 0.0}
        return out

    def _check_layer(self, layer):
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in 0..{self.n_layers - 1}, got {layer!r}")

    def __repr__(self):
        return (f"KVCache({self.n_layers} layers x {self.capacity} tokens x {self.n_kv_heads} heads "
                f"x {self.head_dim}, {self.spec.describe()}, {self.backend})")


def attend(qc, kc, vc, pos0, scale, thr):
    """Causal softmax attention in the compute domains, as kernels.attention.ref computes it:
    qc (T, HKV, G, d) rotated queries, kc/vc (L, HKV, d) rows; weights below thr dropped.
    Returns (acc (T, HKV, G, d) float32 in the value domain, skipped pairs, total pairs)."""
    T, hkv, G, d = qc.shape
    L = pos0 + T
    s = np.einsum("tgrd,lgd->tgrl", qc, kc) * np.float32(scale)       # (T, HKV, G, L)
    visible = np.arange(L)[None, :] <= (pos0 + np.arange(T))[:, None]  # (T, L)
    s = np.where(visible[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    skipped = 0
    if thr > 0:
        drop = (p < thr) & visible[:, None, None, :]
        skipped = int(drop.sum())
        p[drop] = 0
    total = int(visible.sum()) * hkv * G
    return np.einsum("tgrl,lgd->tgrd", p.astype(np.float32), vc), skipped, total


class _NumpyStore:
    """Host arrays per layer: codes (capacity - sinks, HKV, W) uint32 and scales
    (capacity - sinks, HKV, S) float16 for each of K and V in the layer's formats, and the
    sink rows (sinks, HKV, d) float16 in each format's compute domain."""

    def __init__(self, c):
        self.c = c
        rows, sinks = c.capacity - c.sinks, (c.sinks, c.n_kv_heads, c.head_dim)
        self.k, self.v, self.sink_k, self.sink_v = [], [], [], []
        for kfmt, vfmt in zip(c.kfmts, c.vfmts):
            for store, fmt in ((self.k, kfmt), (self.v, vfmt)):
                store.append((np.zeros((rows, c.n_kv_heads, fmt.words), np.uint32),
                              np.zeros((rows, c.n_kv_heads, fmt.n_scales), np.float16)))
            self.sink_k.append(np.zeros(sinks, np.float16))
            self.sink_v.append(np.zeros(sinks, np.float16))

    @property
    def arrays(self):
        return [a for pair in self.k + self.v for a in pair] + self.sink_k + self.sink_v

    def append(self, layer, n, kf, vf):
        """Rows kf, vf (T*HKV, d) at positions n..n+T-1; vf None rewrites keys only."""
        c = self.c
        hkv = c.n_kv_heads
        T = len(kf) // hkv
        s = max(0, min(c.sinks - n, T))
        parts = []  # encode everything before writing anything
        for x, fmt, sink, (codes, scales) in ((kf, c.kfmts[layer], self.sink_k[layer],
                                               self.k[layer]),
                                              (vf, c.vfmts[layer], self.sink_v[layer],
                                               self.v[layer])):
            if x is None:
                continue
            x = x.reshape(T, hkv, -1)
            enc = fmt.encode_rows(x[s:].reshape(-1, c.head_dim)) if s < T else None
            parts.append((sink, fmt.to_compute(x[:s]).astype(np.float16), codes, scales, enc))
        for sink, srows, codes, scales, enc in parts:
            sink[n:n + s] = srows
            if enc is not None:
                r = n + s - c.sinks
                codes[r:r + T - s] = enc[0].reshape(T - s, hkv, -1)
                scales[r:r + T - s] = enc[1].reshape(T - s, hkv, -1)

    def attention(self, layer, q, pos0, scale, thr):
        c = self.c
        T, H, d = q.shape
        L = pos0 + T
        s = min(c.sinks, L)
        hkv = c.n_kv_heads
        kfmt, vfmt = c.kfmts[layer], c.vfmts[layer]
        rows = []
        for fmt, sink, (codes, scales) in ((kfmt, self.sink_k[layer], self.k[layer]),
                                           (vfmt, self.sink_v[layer], self.v[layer])):
            m = L - s
            dec = fmt.decode_compute(codes[:m].reshape(m * hkv, -1), scales[:m].reshape(m * hkv, -1))
            rows.append(np.concatenate([sink[:s].astype(np.float32), dec.reshape(m, hkv, d)]))
        qc = kfmt.to_compute(q).reshape(T, hkv, H // hkv, d)
        acc, skipped, total = attend(qc, rows[0], rows[1], pos0, scale, thr)
        return vfmt.from_compute(acc.reshape(T, H, d)), skipped, total


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
        for kf, vf, cap in zip(c.kfmts, c.vfmts, c.caps):
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
        for (a, base), (kw, _), kf, vf, cap in zip(placed, sizes, c.kfmts, c.vfmts, c.caps):
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
        self.dyn = pool.get(self.tag + "dyn", 4, np.uint32, kind="device")
        # scratch (scores, per-split partials) sized for the largest group and `chunk` queries
        H, g_max = c.max_heads, c.max_heads // hkv
        stride = max(c.caps)
        one = attn_kernel.Plan(d, hkv, g_max, max(self._keys(i) for i in range(c.n_layers)), 1)
        per_query = 4 * (H * stride + one.part_floats)
        if per_query > dev.max_buffer_bytes or one.groups > dev.max_groups:
            raise ValueError(f"attention over {H} heads x {stride} tokens exceeds {dev.name}'s "
                             "buffer or dispatch limits; lower the capacity")
        self.chunk = max(1, min(max_batch, max(_SCRATCH_BYTES, per_query) // per_query,
                                dev.max_groups // one.groups))
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
        return self.c.windows[layer] or self.c.caps[layer]

    # ---- recording into any graph ---------------------------------------------------------
    def record_append(self, g, layer, k, v, rows):
        """Quantize dyn[0] tokens of k, v (device buffers (rows, hkv, d) float32) into
        `layer` at positions dyn[1].. ."""
        c, dev = self.c, self.dev
        arena, kreg, vreg = self.regions[layer]
        ktab, vtab = self.tabs[layer]
        n = rows * c.n_kv_heads
        for x, fmt, reg, tabo in ((k, c.kfmts[layer], kreg, ktab), (v, c.vfmts[layer], vreg, vtab)):
            pipe = dev.pipeline("quantize", [x, arena, self.tab, self.dyn], n,
                                [layout.WG, c.head_dim, *layout.spec(fmt)])
            g.dispatch(pipe, layout.quantize_push(*reg, tabo, c.n_kv_heads, c.caps[layer]))

    def record_attention(self, g, layer, q, o, rows, n_heads):
        """Causal attention of dyn[0] queries (q: device buffer (rows, n_heads, d)) at
        positions dyn[1].. over `layer`, into o; in dispatches of `chunk` queries."""
        c = self.c
        group = n_heads // c.n_kv_heads
        arena, kreg, vreg = self.regions[layer]
        bufs = [arena, q, o, self.scr, self.part, self.tab, self.stats, self.dyn]
        spec = attn_kernel.spec(c.kfmts[layer], c.vfmts[layer], group)
        for q0 in range(0, rows, self.chunk):
            plan = attn_kernel.Plan(c.head_dim, c.n_kv_heads, group, self._keys(layer),
                                    min(self.chunk, rows - q0))
            push = plan.push(c.n_kv_heads, kreg, vreg, *self.tabs[layer], c.caps[layer], q0,
                             c.windows[layer])
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
        if thr <= 0:
            total = pos0 * T * H + T * (T + 1) // 2 * H
        return out, skipped, total


def _release(dev, tag, graphs):
    for g in graphs.values():
        g.destroy()
    graphs.clear()
    dev.release(tag)
