"""KVCache: compressed keys and values per layer, attention computed from the codes.

All memory for `capacity` tokens is reserved at construction; append() and attention()
allocate nothing afterwards. The numpy backend is the reference; the vulkan backend keeps
the cache on the device (only new rows go up, only attention outputs come back) and packs
layers into arenas no larger than the device's storage-buffer limit. One lock serializes the
public methods, so a cache shared by threads never loses or mixes up tokens (calls then run
one at a time, not in parallel).
"""
import contextlib
import itertools
import threading
import weakref
from types import SimpleNamespace

import numpy as np

from nexvk.kernels import attention as attn_kernel
from nexvk.kernels import dyn as dyn_words
from nexvk.kernels import layout
from nexvk.kernels import upload
from nexvk.quant import check_vectors
from nexvk.quant.cachespec import CacheSpec
from nexvk.quant.formats import make
from nexvk.quant.transform import SCALE_MIN_ROWS, KeyTransform

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

    Turbo formats are hardened unless plain=True (see nexvk.quant.cachespec):
    sinks: the first positions of every layer without a window kept as float16 (default 1
      with a turbo format, else 0; a sliding-window layer keeps none);
    layer_types: other K/V formats for some layers, "0-1:q8_0/q8_0" or {0: ("q8_0", "q8_0")};
    key_mean: (n_layers, n_kv_heads, head_dim) key means, e.g. from `nexvk calibrate`.
      Without it each layer's keys are centred on the mean of the non-sink keys of the append
      that holds its first non-sink position (the whole prompt when a model prefills it; one
      token when a sequence is decoded token by token); sink rows that came earlier are
      re-encoded then.
    key_scale: (n_layers, n_kv_heads, head_dim) positive channel scales (keys are stored
      times the scale, queries divided by it), or False for none. Default: fitted with the
      mean, from the keys and the queries append() is given (q=...), when that append holds
      at least SCALE_MIN_ROWS non-sink rows; otherwise 1.
    """

    def __init__(self, n_layers, n_kv_heads, head_dim, capacity, k_type="turbo3",
                 v_type="turbo3", backend="numpy", device=None, seed=0, n_heads=None,
                 max_batch=256, window=None, *, plain=False, sinks=None, layer_types=None,
                 key_mean=None, key_scale=None):
        for name, val in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads),
                          ("head_dim", head_dim), ("capacity", capacity),
                          ("max_batch", max_batch), ("n_heads", n_heads)):
            # NOTE: bool and float are refused: a float's bits once reached a shader constant
            if (val is not None or name != "n_heads") and not (_is_int(val) and val >= 1):
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
        self.max_batch = int(max_batch)
        self.windows = layer_windows(window, self.n_layers, self.capacity)
        self.slots = [ring_slots(self.capacity, w, self.max_batch) for w in self.windows]
        # sinks per layer: none on a ring (sliding-window) layer
        self.layer_sinks = [0 if w else min(spec.sinks, self.capacity) for w in self.windows]
        self.sinks = max(self.layer_sinks)
        self.transform = KeyTransform(self.n_layers, self.n_kv_heads, self.head_dim,
                                      [spec.transformed(i) for i in range(self.n_layers)],
                                      key_mean, None if key_scale is False else key_scale,
                                      spec.scaled)
        # raw keys of sink rows stored before their layer's mean was fitted (re-encoded then)
        self._raw_sinks = [np.zeros((S * self.transform.active[i], self.n_kv_heads, self.head_dim),
                                    np.float32) for i, S in enumerate(self.layer_sinks)]
        self._len = [0] * self.n_layers
        self._lock = threading.Lock()
        self.stats = {"skipped": 0, "total": 0, "skip_rate": 0.0}
        from nexvk.device.manager import resolve_backend
        self.backend = resolve_backend(backend, device)
        # the stores get the geometry, not the cache, so a dropped cache frees at once
        # per layer: K and V formats, slots, window (0: the layer sees its whole context);
        # the first `sinks` positions of every layer are float16 rows (not in the slots); the
        # key transform (tables, fitted or given) is the cache's, shared with the store
        geo = SimpleNamespace(n_layers=self.n_layers, n_kv_heads=self.n_kv_heads,
                              head_dim=self.head_dim, max_heads=self.max_heads, kfmts=self.kfmts,
                              vfmts=self.vfmts, windows=self.windows, slots=self.slots,
                              sinks=self.layer_sinks, transform=self.transform)
        if self.backend == "numpy":
            self._impl = _NumpyStore(geo)
        else:
            self._impl = _VulkanStore(geo, device, max_batch, n_heads)

    @property
    def nbytes(self):
        """Bytes of K and V: codes and scales of every slot, float16 sinks and the key
        transform's tables."""
        return self.n_kv_heads * sum(
            self.spec.layer_bytes(i, self.head_dim, self.head_dim, n, self.layer_sinks[i])
            for i, n in enumerate(self.slots))

    @property
    def bits_per_value(self):
        """Stored bits per cached K or V value, every norm, scale, sink and mean included."""
        return 8 * self.nbytes / (self.n_layers * self.capacity * self.n_kv_heads
                                  * 2 * self.head_dim)

    def length(self, layer):
        self._check_layer(layer)
        with self._lock:
            return self._len[layer]

    def reset(self):
        with self._lock:
            self._len = [0] * self.n_layers
            self.transform.reset()

    def truncate(self, n):
        """Forget every token at position n or later in every layer (rolls back a step
        that failed partway; the codes stay but are never read again).
        NOTE: on a ring layer the failed step's <= max_batch new rows may have overwritten
        slots of positions more than a window before n, which no later query reads."""
        if not (_is_int(n) and n >= 0):
            raise ValueError(f"truncate needs a position >= 0, got {n!r}")
        with self._lock:
            self._len = [min(length, int(n)) for length in self._len]

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
        T = k.shape[0]
        self._check_ring(layer, T, "append")
        kf = check_vectors(k, self.head_dim, "k").reshape(k.shape)
        vf = check_vectors(v, self.head_dim, "v").reshape(v.shape)
        if q is not None:
            if not (isinstance(q, np.ndarray) and q.ndim == 3 and len(q) == T
                    and q.shape[1] % self.n_kv_heads == 0 and q.shape[2] == self.head_dim):
                got = q.shape if isinstance(q, np.ndarray) else type(q).__name__
                raise ValueError(f"q must have shape ({T}, n_heads, {self.head_dim}) with "
                                 f"n_heads a multiple of {self.n_kv_heads}, got {got}")
            q = check_vectors(q, self.head_dim, "q").reshape(q.shape)
        with self._lock:
            n = self._len[layer]
            if n + T > self.capacity:
                raise ValueError(f"cache full: layer {layer} holds {n} of {self.capacity} "
                                 f"tokens; cannot append {T} more")
            S = self.layer_sinks[layer]
            s = max(0, min(S - n, T))  # how many of these rows are sinks
            t = self.transform
            # fit on the append that holds the first non-sink position
            fit = t.active[layer] and not t.ready[layer] and n <= S < n + T
            rows = [(n, kf, vf)]
            if fit and n:  # the sinks stored before the mean was known are re-encoded with it
                rows.insert(0, (0, self._raw_sinks[layer][:n], None))
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
                self._impl.append(layer, pos, kt.reshape(-1, d),
                                  None if vr is None else vr.reshape(-1, d))
            if t.active[layer]:
                self._raw_sinks[layer][n:n + s] = kf[:s]
            self._len[layer] = n + T

    def _check_storable(self, layer, pos, k, v):
        """ValueError (naming the problem) when rows at positions pos.. cannot be stored:
        sinks are float16 vectors in the compute domain (norm at most 65504), the rest
        must fit their format."""
        s = max(0, min(self.layer_sinks[layer] - pos, len(k)))
        for name, x, fmt in (("k", k, self.kfmts[layer]), ("v", v, self.vfmts[layer])):
            if x is None:
                continue
            if s:
                norm = float(np.sqrt(np.einsum("thd,thd->th", x[:s], x[:s],
                                               dtype=np.float64).max()))
                if norm > 65504:
                    raise ValueError(f"{name} has vector norms up to {norm:.4g} in the first "
                                     f"{s} positions, which are stored as float16 "
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
            qf = self.transform.queries(layer, qf)
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

    # ---- state (prompt caches) -------------------------------------------------------------
    def state(self):
        """The cached tokens as {name: array}: each layer's rows in position order (codes,
        scales, float16 sinks), the raw keys of sinks awaiting the key transform, the
        transform's tables and ready flags, and the lengths; restore() puts them back into a
        cache of the same formats (any capacity that holds them, either backend).
        NOTE: on the vulkan backend a layer the host did not fit takes its tables and raw sink
        keys from the device (a model's step fits them there); a cache filled by host-array
        append() calls on vulkan, not yet past its sinks, keeps its raw sink keys on the host
        and saves the device's (unused) ones."""
        with self._lock, self._staging():
            t = self.transform
            out = {"lengths": np.array(self._len, np.int64), "key_mean": t.mean.copy(),
                   "key_scale": t.scale.copy(), "key_ready": t.ready.copy()}
            for layer, n in enumerate(self._len):
                S = self.layer_sinks[layer]
                raw = self._raw_sinks[layer]
                if self.backend == "vulkan" and t.active[layer] and not t.ready[layer]:
                    mean, scale, raw = self._impl.transform_state(layer)
                    out["key_mean"][layer], out["key_scale"][layer] = mean, scale
                    out["key_ready"][layer] = n > S
                out[f"raw_sinks{layer}"] = raw[:min(n, len(raw))].copy()
                out.update({f"{k}{layer}": a for k, a in self._impl.state(layer, n).items()})
            return out

    def restore(self, state):
        """Replace the cache's contents by a state() of a cache with the same formats
        (ValueError, and the cache as it was, when it does not fit this one)."""
        with self._lock, self._staging():
            t = self.transform
            lengths = _state_array(state, "lengths", (self.n_layers,), np.int64)
            if lengths.min() < 0 or lengths.max() > self.capacity:
                raise ValueError(f"the saved cache holds up to {lengths.max()} tokens; this "
                                 f"cache takes {self.capacity}")
            tables = [_state_array(state, name, like.shape, like.dtype)
                      for name, like in (("key_mean", t.mean), ("key_scale", t.scale),
                                         ("key_ready", t.ready))]
            raw = [_state_array(state, f"raw_sinks{i}",
                                (min(n, len(r)),) + r.shape[1:], r.dtype)
                   for i, (n, r) in enumerate(zip(lengths, self._raw_sinks))]
            layers = [self._impl.check_state(i, int(n), state) for i, n in enumerate(lengths)]
            t.mean[:], t.scale[:], t.ready[:] = tables  # everything checked: now write
            for i, rows in enumerate(layers):
                self._impl.restore(i, int(lengths[i]), rows)
                self._raw_sinks[i][:len(raw[i])] = raw[i]
                if self.backend == "vulkan" and t.active[i]:
                    self._impl.set_tables(i, t.mean[i], t.scale[i])
                    self._impl.set_raw_sinks(i, raw[i])
            self._len = [int(n) for n in lengths]

    @contextlib.contextmanager
    def _staging(self):
        """On the vulkan backend, frees the staging buffer that reads and writes went through."""
        try:
            yield
        finally:
            if self.backend == "vulkan":
                upload.release(self._impl.dev)

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
                f"x {self.head_dim}, {self.spec.describe()}, {self.backend})")


def check_sparse_v(sparse_v):
    """The sparse-V threshold as a float in [0, 1) (None = 0 = off); ValueError otherwise."""
    if sparse_v is None:
        return 0.0
    if not (_is_real(sparse_v) and 0.0 <= sparse_v < 1.0):
        raise ValueError(f"sparse_v must be a weight threshold in [0, 1), got {sparse_v!r}")
    return float(sparse_v)


def _state_array(state, name, shape, dtype):
    """state[name] checked to have this shape and dtype (ValueError naming it otherwise)."""
    a = state.get(name) if isinstance(state, dict) else None
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else "missing"
        raise ValueError(f"saved cache part {name!r} must be {np.dtype(dtype)} "
                         f"{tuple(shape)}, got {got}")
    return a


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x):
    return _is_int(x) or isinstance(x, (float, np.floating))


class _StateRows:
    """state / check_state / restore of one layer for a store with `_parts(layer, read)`
    (its stored arrays as the numpy store lays them out; read=False: zeros of those shapes
    to fill) and `_write(layer, parts)` (store them)."""

    def _positions(self, layer, n, ring):
        """Positions of the code rows kept for n tokens in a ring of `ring` slots (the last
        ring ones from position sinks on), and their slots."""
        S = self.c.sinks[layer]
        pos = np.arange(max(S, n - ring), max(S, n))
        return pos, (pos - S) % ring if ring else pos

    def state(self, layer, n):
        """The layer's rows of positions < n in position order (see KVCache.state)."""
        S = self.c.sinks[layer]
        out = {}
        for name, a in self._parts(layer):
            if name.startswith("sink"):
                out[name] = a[:min(n, S)].copy()
            else:
                out[name] = a[self._positions(layer, n, len(a))[1]]
        return out

    def check_state(self, layer, n, state):
        """The rows restore() writes for n tokens from a KVCache.state(), checked first."""
        S = self.c.sinks[layer]
        rows = {}
        for name, a in self._parts(layer, read=False):
            key = f"{name}{layer}"
            got = state.get(key)
            if name.startswith("sink"):
                rows[name] = _state_array(state, key, (min(n, S),) + a.shape[1:], a.dtype)
                continue
            pos, _ = self._positions(layer, n, len(a))
            m = got.shape[0] if isinstance(got, np.ndarray) and got.ndim else -1
            if not len(pos) <= m <= n - min(n, S):  # the saved rows must reach back as far
                raise ValueError(f"saved cache part {key!r} holds {m} positions; this cache "
                                 f"needs the last {len(pos)} of {n}")
            rows[name] = _state_array(state, key, (m,) + a.shape[1:], a.dtype)[m - len(pos):]
        return rows

    def restore(self, layer, n, rows):
        parts = self._parts(layer, read=False)
        for name, a in parts:
            if name.startswith("sink"):
                a[:len(rows[name])] = rows[name]
            else:
                a[self._positions(layer, n, len(a))[1]] = rows[name]
        self._write(layer, parts)


class _NumpyStore(_StateRows):
    """Host arrays per layer: codes (slots - sinks, HKV, W) uint32 and scales
    (slots - sinks, HKV, S) float16 for each of K and V in the layer's formats, where position
    p >= sinks lives in slot (p - sinks) % (slots - sinks) (a ring on sliding-window layers),
    and the sink rows (sinks, HKV, d) float16 in each format's compute domain."""

    def __init__(self, c):
        self.c = c
        self.k, self.v, self.sink_k, self.sink_v = [], [], [], []
        for kfmt, vfmt, n, S in zip(c.kfmts, c.vfmts, c.slots, c.sinks):
            for store, fmt in ((self.k, kfmt), (self.v, vfmt)):
                store.append((np.zeros((n - S, c.n_kv_heads, fmt.words), np.uint32),
                              np.zeros((n - S, c.n_kv_heads, fmt.n_scales), np.float16)))
            self.sink_k.append(np.zeros((S, c.n_kv_heads, c.head_dim), np.float16))
            self.sink_v.append(np.zeros((S, c.n_kv_heads, c.head_dim), np.float16))

    @property
    def arrays(self):
        return [a for pair in self.k + self.v for a in pair] + self.sink_k + self.sink_v

    def _parts(self, layer, read=True):
        """(name, array) of the layer's stored parts: K and V codes and scales by slot, and
        the float16 sink rows (the arrays themselves: writes land in the cache)."""
        (kc, ks), (vc, vs) = self.k[layer], self.v[layer]
        return (("k_codes", kc), ("k_scales", ks), ("v_codes", vc), ("v_scales", vs),
                ("sink_k", self.sink_k[layer]), ("sink_v", self.sink_v[layer]))

    def _write(self, layer, parts):
        """Nothing to do: _parts gave the stored arrays themselves."""

    def append(self, layer, n, kf, vf):
        """Rows kf, vf (T*HKV, d) at positions n..n+T-1; vf None rewrites keys only."""
        c = self.c
        hkv = c.n_kv_heads
        T = len(kf) // hkv
        S = c.sinks[layer]
        s = max(0, min(S - n, T))
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
                rows = (np.arange(n + s, n + T) - S) % len(codes)  # slots of positions n+s..
                codes[rows] = enc[0].reshape(T - s, hkv, -1)
                scales[rows] = enc[1].reshape(T - s, hkv, -1)

    def attention(self, layer, q, pos0, scale, thr):
        c = self.c
        (kc, ks), (vc, vs) = self.k[layer], self.v[layer]
        return attn_kernel.ref(c.kfmts[layer], c.vfmts[layer], kc, ks, vc, vs, q, pos0, scale,
                               thr, window=c.windows[layer], sink_k=self.sink_k[layer],
                               sink_v=self.sink_v[layer])


def scratch_plan(head_dim, n_kv_heads, max_heads, slots, windows, max_batch):
    """(attention Plan of one query, scratch bytes per query, queries per dispatch `chunk`):
    how the Vulkan store sizes its score and partial-sum scratch."""
    keys = max(w or n for w, n in zip(windows, slots))
    one = attn_kernel.Plan(head_dim, n_kv_heads, max_heads // n_kv_heads, keys, 1)
    per_query = 4 * (max_heads * max(slots) + one.part_floats)
    return one, per_query, max(1, min(max_batch, max(_SCRATCH_BYTES, per_query) // per_query))


def vulkan_working_bytes(head_dim, n_kv_heads, max_heads, slots, windows, max_batch):
    """Device bytes a Vulkan store holds besides the cache itself: the attention scratch and
    the staging of host-array calls (host-visible buffers count twice: device + host copy)."""
    _, per_query, chunk = scratch_plan(head_dim, n_kv_heads, max_heads, slots, windows,
                                       max_batch)
    staging = sum(4 * rows * head_dim * 2 * (n_kv_heads + max_heads) for rows in {1, chunk})
    return chunk * per_query + 2 * staging


def ring_slots(capacity, window, max_batch):
    """Slots a layer keeps: its capacity, or with a window the keys that max_batch queries
    appended together can see (window + max_batch - 1), when that is fewer."""
    return capacity if not window else min(capacity, window + max_batch - 1)


def layer_windows(window, n_layers, capacity):
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


class _VulkanStore(_StateRows):
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
        weakref.finalize(self, dev.release, self.tag, self._graphs)  # memory goes with the cache
        # layers -> arenas of at most the storage-buffer limit; per layer, contiguous:
        # [K codes, K scales, V codes, V scales] for its code slots, then the f16 K and V sink
        # vectors, and on a layer with the key transform its f16 mean and scale tables and
        # the raw float keys of the sinks (re-encoded when the device fits the transform)
        sizes = []  # per layer: word counts of those parts
        for layer, (kf, vf, n, S) in enumerate(zip(c.kfmts, c.vfmts, c.slots, c.sinks)):
            xf = c.transform.active[layer]
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
        self.stats = pool.get(self.tag + "stats", 2, np.uint32, kind="device")
        # the per-call words (nexvk/kernels/dyn.py), with room for a model step's token ids
        self.dyn = pool.get(self.tag + "dyn", dyn_words.size(max_batch), np.uint32, kind="device")
        # scratch (scores, per-split partials) sized for the largest group and `chunk` queries
        H = c.max_heads
        stride = max(c.slots)
        one, per_query, self.chunk = scratch_plan(d, hkv, H, c.slots, c.windows, max_batch)
        one.check_shared_memory(dev.info["limits"]["max_compute_shared_memory_size"], dev.name)
        if per_query > dev.max_buffer_bytes:
            raise ValueError(f"attention over {H} heads x {stride} tokens exceeds {dev.name}'s "
                             "storage-buffer limit; lower the capacity")
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
        fresh = upload.STAGE not in pool  # (a model loading its weights holds one already)
        for layer in np.flatnonzero(c.transform.active):  # initial (or given) tables
            self.set_tables(layer, c.transform.mean[layer], c.transform.scale[layer])
        if fresh:
            upload.release(dev)  # the staging buffer and copy pipelines are not kept
        for layer in range(c.n_layers):  # record every graph now, not on the first token
            for rows in self.io:
                self._append_graph(layer, rows)
                if c.sinks[layer]:
                    self._append_graph(layer, rows, values=False)
                if n_heads:
                    self._attention_graph(layer, rows, n_heads)

    def _keys(self, layer):
        """Most keys one query of `layer` sees."""
        return self.c.windows[layer] or self.c.slots[layer]

    # ---- recording into any graph ---------------------------------------------------------
    def record_append(self, g, layer, k, v, rows, k_off=0, v_off=0, q=None, q_off=0,
                      n_heads=None):
        """Quantize dyn[0] tokens of k, v (device buffers holding (rows, hkv, d) float32 at
        float offsets k_off, v_off) into `layer` at positions dyn[1].. . With q (a device
        buffer of the same tokens' queries, (rows, n_heads, d) at q_off) the keys are raw: the
        key transform runs here, fitted on the device in the step that holds the layer's first
        non-sink position; without q (v may then be None: keys only) they come transformed."""
        c, dev = self.c, self.dev
        arena, kreg, vreg = self.regions[layer]
        ktab, vtab = self.tabs[layer]
        ex, S, t = self.extra[layer], c.sinks[layer], c.transform
        n = rows * c.n_kv_heads
        device_xf = q is not None and t.active[layer]
        fit = device_xf and (t.fit_mean or t.fit_scale)
        if fit:
            hkv = c.n_kv_heads
            pipe = dev.pipeline("key_fit", [k, q, arena, self.dyn], hkv,
                                [layout.WG, c.head_dim, n_heads // hkv])
            g.dispatch(pipe, [hkv, k_off, q_off, S, ex.xf, int(t.fit_mean), int(t.fit_scale),
                              SCALE_MIN_ROWS])
        for key, x, off, fmt, reg, tabo, sink in (
                (True, k, k_off, c.kfmts[layer], kreg, ktab, ex.sink_k),
                (False, v, v_off, c.vfmts[layer], vreg, vtab, ex.sink_v)):
            if x is None:
                continue
            spec = [layout.WG, c.head_dim, *layout.spec(fmt)]
            bufs = [x, arena, self.tab, self.dyn]
            xf = key and device_xf
            args = (*reg, tabo, c.n_kv_heads, c.slots[layer], off, S, sink,
                    ex.xf if xf else layout.NONE, ex.raw if xf and S else layout.NONE)
            g.dispatch(dev.pipeline("quantize", bufs, n, spec), layout.quantize_push(*args))
            if key and fit and S:  # sinks stored before this step's fit: re-encoded with it
                g.dispatch(dev.pipeline("quantize", bufs, S * c.n_kv_heads, spec),
                           layout.quantize_push(*args, mode=1))

    def record_attention(self, g, layer, q, o, rows, n_heads, q_off=0, o_off=0, raw_q=False):
        """Causal attention of dyn[0] queries (q: device buffer holding (rows, n_heads, d) at
        float offset q_off) at positions dyn[1].. over `layer`, into o at o_off; in
        dispatches of `chunk` queries. raw_q: the queries are not yet divided by the key
        scale (the model's step; record_append was given q)."""
        c = self.c
        group = n_heads // c.n_kv_heads
        arena, kreg, vreg = self.regions[layer]
        ex, t = self.extra[layer], c.transform
        xs = (ex.xf + c.n_kv_heads * c.head_dim // 2 if raw_q and t.active[layer] and t.scaled
              else layout.NONE)
        bufs = [arena, q, o, self.scr, self.part, self.tab, self.stats, self.dyn]
        spec = attn_kernel.spec(c.kfmts[layer], c.vfmts[layer], group)
        for q0 in range(0, rows, self.chunk):
            plan = attn_kernel.Plan(c.head_dim, c.n_kv_heads, group, self._keys(layer),
                                    min(self.chunk, rows - q0))
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
            self.record_append(g, layer, io["k"], v, rows)
            self._graphs[key] = g.prepare()
        return self._graphs[key]

    def _attention_graph(self, layer, rows, n_heads):
        key = ("attention", layer, rows, n_heads)
        if key not in self._graphs:
            io = self.io[rows]
            g = self.dev.graph().upload(io["q"], self.stats, self.dyn)
            self.record_attention(g, layer, io["q"], io["o"], rows, n_heads)
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
                self.dyn.host[:2] = (m, n + s)
                self._append_graph(layer, self._rows(m), vf is not None).run()

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
