"""The Vulkan store: the cache's layers packed into arenas on the device, written and read by
the quantize / key_fit / attn_* shaders, recorded into graphs."""
import itertools
import weakref
from types import SimpleNamespace

import numpy as np

from nexvk.cache.state_rows import StateRows
from nexvk.kernels import attention as attn_kernel
from nexvk.kernels import dyn as dyn_words
from nexvk.kernels import layout
from nexvk.kernels import tuning
from nexvk.kernels import upload
from nexvk.quant.transform import SCALE_MIN_ROWS

_ids = itertools.count()


class VulkanStore(StateRows):
    """Layers packed into arenas on the device, plus the buffers every layer shares: format
    tables, sparse-V counters and scratch for the attention passes of `chunk` queries.
    The per-step words (nexvk/kernels/dyn.py) belong to whoever runs the step: record_append /
    record_attention bind the caller's Dyn buffer (a model's step owns one); the host-array
    calls use the store's own.

    Work is recorded into Graphs (one submission each): record_append / record_attention add
    one layer's dispatches to any graph, e.g. a model's whole-step graph reading and writing
    its own activation buffers; append / attention are the host-array calls, each one
    submission of a small graph recorded once per (layer, rows) and replayed after.
    """

    def __init__(self, c, transform, device=None):
        """c: the CacheLayout; transform: the cache's KeyTransform (tables fitted or given)."""
        from nexvk.device.manager import get_device
        self.c, self.t = c, transform
        self.dev = dev = get_device(device)
        pool = dev.pool
        d, hkv = c.head_dim, c.n_kv_heads
        self.tag = f"kvcache{next(_ids)}/"
        self._graphs = {}
        weakref.finalize(self, dev.release, self.tag, self._graphs)  # memory goes with the cache
        # layers -> arenas of at most the storage-buffer limit; per layer, contiguous:
        # [K codes, K scales, V codes, V scales] for its code slots, then the f16 K and V sink
        # vectors, and on a layer with the key transform its f16 mean and scale tables and
        # the raw float keys of the sinks (re-encoded when the device fits the transform)
        sizes = []  # per layer: word counts of those parts
        for layer, (kf, vf, n, S) in enumerate(zip(c.kfmts, c.vfmts, c.slots, c.sinks)):
            xf = c.transformed[layer]
            sizes.append((layout.region_words(kf, (n - S) * hkv),
                          layout.region_words(vf, (n - S) * hkv), S * hkv * d // 2,
                          S * hkv * d // 2, xf * hkv * d, xf * S * hkv * d))
        limit = dev.max_buffer_bytes // 4
        if max(sum(w) for w in sizes) > limit:
            raise ValueError(f"one layer of this cache needs {4 * max(sum(w) for w in sizes) / 2**20:.1f}"
                             f" MiB, over {dev.name}'s {dev.max_buffer_bytes / 2**20:.0f} MiB "
                             "storage-buffer limit; lower the capacity")
        placed, arena_words = [], [0]  # (arena index, base word) per layer
        for w in sizes:
            if arena_words[-1] + sum(w) > limit:
                arena_words.append(0)
            placed.append((len(arena_words) - 1, arena_words[-1]))
            arena_words[-1] += sum(w)
        arenas = [pool.get(f"{self.tag}arena{a}", n) for a, n in enumerate(arena_words)]
        self.regions = []  # per layer: (arena, (k_base, k_sbase), (v_base, v_sbase))
        self.extra = []    # per layer: sink K, sink V, tables (mean; scale after), raw sinks
        for (a, base), w, kf, vf, n, S in zip(placed, sizes, c.kfmts, c.vfmts, c.slots, c.sinks):
            offs = np.cumsum((base,) + w)  # start word of each part
            self.regions.append((arenas[a], (offs[0], offs[0] + (n - S) * hkv * kf.words),
                                 (offs[1], offs[1] + (n - S) * hkv * vf.words)))
            none = layout.NONE
            self.extra.append(SimpleNamespace(sink_k=int(offs[2]), sink_v=int(offs[3]),
                                              xf=int(offs[4]) if w[4] else none,
                                              raw=int(offs[5]) if w[5] else none))
        self.nbytes = 4 * sum(arena_words)
        # format tables: layer l's K table at tabs[l][0], its V table at tabs[l][1]
        per = layout.TAB_SIGNS + d
        self.tab = pool.get(self.tag + "tab", 2 * c.n_layers * per, np.float32, kind="device")
        self.tabs = []
        for layer, (kf, vf) in enumerate(zip(c.kfmts, c.vfmts)):
            ko, vo = 2 * layer * per, (2 * layer + 1) * per
            self.tab.host[ko:ko + per], self.tab.host[vo:vo + per] = layout.table(kf), layout.table(vf)
            self.tabs.append((ko, vo))
        # [skipped, total] (sparse V) and a flag set by attn_scores on a non-finite score
        self.stats = pool.get(self.tag + "stats", 3, np.uint32, kind="device")
        # the words of the host-array calls (a model's step binds its own)
        self.dyn = pool.get(self.tag + "dyn", dyn_words.size(0), np.uint32, kind="device")
        # scratch (scores, per-split partials) sized for the largest group and `chunk` queries
        H = c.max_heads
        stride = max(c.slots)
        self.target = tuning.get(dev, "attention")["TARGET"]
        one, per_query, self.chunk, parts = c.scratch(self.target)
        one.check_shared_memory(dev.info["limits"]["max_compute_shared_memory_size"], dev.name)
        if per_query > dev.max_buffer_bytes:
            raise ValueError(f"attention over {H} heads x {stride} tokens exceeds {dev.name}'s "
                             "storage-buffer limit; lower the capacity")
        self.scr = pool.get(self.tag + "scores", self.chunk * H * stride, np.float32)
        self.part = pool.get(self.tag + "partials", parts, np.float32)
        self.io = {}  # staging of the host-array calls, for 1 row and for `chunk` rows
        for rows in sorted({1, self.chunk}):
            self.io[rows] = {
                "k": pool.get(f"{self.tag}k{rows}", rows * hkv * d, np.float32, kind="device"),
                "v": pool.get(f"{self.tag}v{rows}", rows * hkv * d, np.float32, kind="device"),
                "q": pool.get(f"{self.tag}q{rows}", rows * H * d, np.float32, kind="device"),
                "o": pool.get(f"{self.tag}o{rows}", rows * H * d, np.float32, kind="device"),
            }
        dev.run(uploads=[self.tab])
        fresh = upload.STAGE not in pool  # (a model loading its weights holds one already)
        for layer in np.flatnonzero(c.transformed):  # initial (or given) tables
            self.set_tables(layer, transform.mean[layer], transform.scale[layer])
        if fresh:
            upload.release(dev)  # the staging buffer and copy pipelines are not kept
        for layer in range(c.n_layers):  # record every graph now, not on the first token
            for rows in self.io:
                self._append_graph(layer, rows)
                if c.sinks[layer]:
                    self._append_graph(layer, rows, values=False)
                if c.n_heads:
                    self._attention_graph(layer, rows, c.n_heads)

    # ---- recording into any graph ---------------------------------------------------------
    def record_append(self, g, dyn, layer, k, v, rows, k_off=0, v_off=0, q=None, q_off=0,
                      n_heads=None):
        """Quantize T tokens of k, v (device buffers holding (rows, hkv, d) float32 at float
        offsets k_off, v_off) into `layer` at positions POS0.. (T, POS0: the words of the Dyn
        buffer `dyn`, nexvk/kernels/dyn.py). With q (a device
        buffer of the same tokens' queries, (rows, n_heads, d) at q_off) the keys are raw: the
        key transform runs here, fitted on the device in the step that holds the layer's first
        non-sink position; without q (v may then be None: keys only) they come transformed."""
        c, dev = self.c, self.dev
        arena, kreg, vreg = self.regions[layer]
        ktab, vtab = self.tabs[layer]
        ex, S, t = self.extra[layer], c.sinks[layer], self.t
        n = rows * c.n_kv_heads
        device_xf = q is not None and t.active[layer]
        fit = device_xf and (t.fit_mean or t.fit_scale)
        if fit:
            hkv = c.n_kv_heads
            pipe = dev.pipeline("key_fit", [k, q, arena, dyn], hkv,
                                [layout.WG, c.head_dim, n_heads // hkv])
            g.dispatch(pipe, [hkv, k_off, q_off, S, ex.xf, int(t.fit_mean), int(t.fit_scale),
                              SCALE_MIN_ROWS])
        for key, x, off, fmt, reg, tabo, sink in (
                (True, k, k_off, c.kfmts[layer], kreg, ktab, ex.sink_k),
                (False, v, v_off, c.vfmts[layer], vreg, vtab, ex.sink_v)):
            if x is None:
                continue
            spec = [layout.WG, c.head_dim, *layout.spec(fmt)]
            bufs = [x, arena, self.tab, dyn]
            xf = key and device_xf
            args = (*reg, tabo, c.n_kv_heads, c.slots[layer], off, S, sink,
                    ex.xf if xf else layout.NONE, ex.raw if xf and S else layout.NONE)
            g.dispatch(dev.pipeline("quantize", bufs, n, spec), layout.quantize_push(*args))
            if key and fit and S:  # sinks stored before this step's fit: re-encoded with it
                g.dispatch(dev.pipeline("quantize", bufs, S * c.n_kv_heads, spec),
                           layout.quantize_push(*args, mode=1))

    def record_attention(self, g, dyn, layer, q, o, rows, n_heads, q_off=0, o_off=0,
                         raw_q=False):
        """Causal attention of T queries (q: device buffer holding (rows, n_heads, d) at
        float offset q_off) at positions POS0.. over `layer`, into o at o_off, with the Dyn
        buffer `dyn`'s SCALE and SPARSE_V; in
        dispatches of `chunk` queries. raw_q: the queries are not yet divided by the key
        scale (the model's step; record_append was given q)."""
        c = self.c
        group = n_heads // c.n_kv_heads
        arena, kreg, vreg = self.regions[layer]
        ex, t = self.extra[layer], self.t
        xs = (ex.xf + c.n_kv_heads * c.head_dim // 2 if raw_q and t.active[layer] and t.scaled
              else layout.NONE)
        bufs = [arena, q, o, self.scr, self.part, self.tab, self.stats, dyn]
        spec = attn_kernel.spec(c.kfmts[layer], c.vfmts[layer], group)
        for q0 in range(0, rows, self.chunk):
            plan = attn_kernel.Plan(c.head_dim, c.n_kv_heads, group, c.keys_seen(layer),
                                    min(self.chunk, rows - q0), self.target)
            push = plan.push(c.n_kv_heads, kreg, vreg, *self.tabs[layer], c.slots[layer], q0,
                             c.windows[layer], q_off, o_off, c.sinks[layer],
                             (ex.sink_k, ex.sink_v), xs)
            for name, n in (("attn_scores", plan.groups), ("attn_values", plan.groups),
                            ("attn_reduce", plan.reduce_groups)):
                g.dispatch(self.dev.pipeline(name, bufs, n, spec), push)

    def set_tables(self, layer, mean, scale):
        """Upload a layer's given key transform tables (f16 (hkv, d) each), for steps that
        transform on the device (record_append with q)."""
        ex = self.extra[layer]
        arena = self.regions[layer][0]
        words = np.concatenate([np.asarray(mean, np.float16).reshape(-1),
                                np.asarray(scale, np.float16).reshape(-1)]).view(np.uint32)
        upload.upload_words(self.dev, arena, ex.xf, words)

    # ---- state (prompt caches) ------------------------------------------------------------
    def _parts(self, layer, read=True):
        """The layer's parts read back from the device, as the numpy store holds them
        (read=False: zeros of those shapes)."""
        c = self.c
        arena, kreg, vreg = self.regions[layer]
        ex, S = self.extra[layer], c.sinks[layer]
        hkv, d, R = c.n_kv_heads, c.head_dim, c.slots[layer] - S
        with self.dev.lock:
            def words(off, n):
                return upload.download_words(self.dev, arena, off, n) if read and n else \
                    np.zeros(n, np.uint32)
            out = []
            for tag, fmt, (base, sbase) in (("k", c.kfmts[layer], kreg), ("v", c.vfmts[layer], vreg)):
                nv = R * hkv
                codes = words(base, nv * fmt.words).reshape(R, hkv, fmt.words)
                scales = words(sbase, (nv * fmt.n_scales + 1) // 2).view(np.float16)
                out += [(f"{tag}_codes", codes),
                        (f"{tag}_scales", scales[:nv * fmt.n_scales].reshape(R, hkv, fmt.n_scales))]
            for tag, off in (("sink_k", ex.sink_k), ("sink_v", ex.sink_v)):
                out.append((tag, words(off, S * hkv * d // 2).view(np.float16).reshape(S, hkv, d)))
        return out

    def _write(self, layer, parts):
        """Upload parts (as _parts gives them) into the layer's regions."""
        arena, kreg, vreg = self.regions[layer]
        ex = self.extra[layer]
        offs = {"k_codes": kreg[0], "k_scales": kreg[1], "v_codes": vreg[0],
                "v_scales": vreg[1], "sink_k": ex.sink_k, "sink_v": ex.sink_v}
        with self.dev.lock:
            for name, a in parts:
                flat = a.reshape(-1)
                if flat.dtype == np.float16 and flat.size % 2:
                    flat = np.concatenate([flat, np.zeros(1, np.float16)])
                upload.upload_words(self.dev, arena, offs[name], flat.view(np.uint32))

    def transform_state(self, layer):
        """The layer's key transform as the device holds it: f16 mean and scale (hkv, d),
        and the raw float32 keys of its sinks (sinks, hkv, d)."""
        c = self.c
        arena, ex = self.regions[layer][0], self.extra[layer]
        hkv, d, S = c.n_kv_heads, c.head_dim, c.sinks[layer]
        with self.dev.lock:
            tab = upload.download_words(self.dev, arena, ex.xf, hkv * d).view(np.float16)
            raw = (upload.download_words(self.dev, arena, ex.raw, S * hkv * d) if S
                   else np.zeros(0, np.uint32)).view(np.float32)
        return tab[:hkv * d].reshape(hkv, d), tab[hkv * d:].reshape(hkv, d), raw.reshape(S, hkv, d)

    def set_raw_sinks(self, layer, raw):
        """Upload the raw float32 keys of a layer's sinks (re-encoded when the device fits)."""
        if len(raw):
            with self.dev.lock:
                upload.upload_words(self.dev, self.regions[layer][0], self.extra[layer].raw,
                                    np.ascontiguousarray(raw, np.float32).view(np.uint32).reshape(-1))

    # ---- host-array calls -------------------------------------------------------------------
    def _append_graph(self, layer, rows, values=True):
        """values=False: keys only (the sinks re-encoded once the transform is fitted)."""
        key = ("append", layer, rows, values)
        if key not in self._graphs:
            io = self.io[rows]
            v = io["v"] if values else None
            g = self.dev.graph().upload(*[b for b in (io["k"], v) if b is not None], self.dyn)
            self.record_append(g, self.dyn, layer, io["k"], v, rows)
            self._graphs[key] = g.prepare()
        return self._graphs[key]

    def _attention_graph(self, layer, rows, n_heads):
        key = ("attention", layer, rows, n_heads)
        if key not in self._graphs:
            io = self.io[rows]
            g = self.dev.graph().upload(io["q"], self.stats, self.dyn)
            self.record_attention(g, self.dyn, layer, io["q"], io["o"], rows, n_heads)
            self._graphs[key] = g.download(io["o"], self.stats).prepare()
        return self._graphs[key]

    def _rows(self, n):
        return 1 if n == 1 else self.chunk

    def append(self, layer, n, kf, vf):
        """Rows kf, vf (T*HKV, d), already transformed, at positions n..; vf None: keys only."""
        c = self.c
        hkv, d = c.n_kv_heads, c.head_dim
        T = len(kf) // hkv
        with self.dev.lock:
            for s in range(0, T, self.chunk):
                m = min(self.chunk, T - s)
                io = self.io[self._rows(m)]
                io["k"].host[: m * hkv * d] = kf[s * hkv:(s + m) * hkv].reshape(-1)
                if vf is not None:
                    io["v"].host[: m * hkv * d] = vf[s * hkv:(s + m) * hkv].reshape(-1)
                dyn_words.fill(self.dyn.host, m, n + s)
                self._append_graph(layer, self._rows(m), vf is not None).run()

    def check_scores(self):
        """After a run: ValueError when attn_scores met a non-finite score, i.e. a key that
        overflowed its fp16 storage (the numpy store refuses such keys as they arrive)."""
        if self.stats.host[2]:
            raise ValueError("non-finite attention scores: keys or queries beyond the fp16 "
                             "range reached the KV cache (the model's weights overflow)")

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
                dyn_words.fill(self.dyn.host, m, pos0 + s, scale=scale, sparse_v=thr)
                self._attention_graph(layer, rows, H).run()
                out[s:s + m] = io["o"].host[: m * H * d].reshape(m, H, d)
                self.check_scores()
                skipped += int(self.stats.host[0])
                total += int(self.stats.host[1])
        if thr <= 0:  # the counters run only with sparse V
            total = H * attn_kernel.visible_keys(pos0, T, c.windows[layer])
        return out, skipped, total
