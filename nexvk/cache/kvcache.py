"""KVCache: compressed keys and values per layer, attention computed from the codes.

All memory for `capacity` tokens is reserved at construction; append() and attention()
allocate nothing afterwards. The numpy backend is the reference; the vulkan backend keeps
the cache on the device (only new rows go up, only attention outputs come back) and packs
layers into arenas no larger than the device's storage-buffer limit. One lock serializes the
public methods, so a cache shared by threads never loses or mixes up tokens (calls then run
one at a time, not in parallel).
"""
import contextlib
import threading

import numpy as np

from nexvk.backends import backend as backend_of
from nexvk.backends import resolve
from nexvk.cache.config import DEFAULT_MAX_BATCH, CacheConfig, check_sparse_v
from nexvk.cache.layout import CacheLayout, count
from nexvk.cache.state_rows import state_array
from nexvk.quant import check_vectors
from nexvk.quant.transform import KeyTransform


class KVCache:
    """A KV cache of n_layers x capacity tokens x n_kv_heads vectors of head_dim, with key
    and value formats chosen independently from nexvk.FORMATS.

    backend: "numpy" (reference), "cpu" (the cpu backend's store: nexvk.backends), "vulkan"
    (device `device`, else NEXVK_DEVICE, else the best) or "auto" (vulkan on a GPU, else cpu,
    with a message).
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
    key_mean: (n_layers, n_kv_heads, head_dim) key means, e.g. a model file's statistics
      (nexvk.model.keystats; Model.load passes them). Without it each layer's keys are
      centred on the mean of the non-sink keys of the append that holds its first non-sink
      position (the whole prompt when a model prefills it; one token when a sequence is
      decoded token by token), so the transform depends on how a sequence arrives, and
      truncate() forgets tables fitted on positions it forgets; sink rows that came earlier are
      re-encoded then.
    key_scale: (n_layers, n_kv_heads, head_dim) positive channel scales (keys are stored
      times the scale, queries divided by it), or False for none. Default: fitted with the
      mean, from the keys and the queries append() is given (q=...), when that append holds
      at least SCALE_MIN_ROWS non-sink rows; otherwise 1.

    config: a CacheConfig holding all of the above (formats, backend, device, seed,
    max_batch, hardening) in one object, instead of the keyword arguments.
    """

    def __init__(self, n_layers, n_kv_heads, head_dim, capacity, k_type="turbo3",
                 v_type="turbo3", backend="numpy", device=None, seed=0, n_heads=None,
                 max_batch=DEFAULT_MAX_BATCH, window=None, *, plain=False, sinks=None,
                 layer_types=None, key_mean=None, key_scale=None, config=None):
        legacy = CacheConfig(k_type, v_type, plain, sinks, layer_types, key_mean, key_scale,
                             None, seed, max_batch, backend, device)
        if config is None:  # the keyword arguments, as before CacheConfig
            config = legacy
        elif not isinstance(config, CacheConfig):
            raise ValueError(f"config must be a CacheConfig, got {type(config).__name__}")
        elif not legacy.is_default():
            raise ValueError("give the cache's formats, backend and options either as "
                             "config= or as keyword arguments, not both")
        self.config = c = config
        n_layers = count("n_layers", n_layers)
        self.layout = lay = CacheLayout.build(c.spec(n_layers), n_kv_heads, head_dim, capacity,
                                              window, c.max_batch, n_heads, seed=c.seed)
        self.spec = lay.spec
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, lay.n_kv_heads, lay.head_dim
        self.capacity, self.k_type, self.v_type = lay.capacity, c.k_type, c.v_type
        self.max_heads, self.max_batch = lay.max_heads, lay.max_batch
        # per layer, as lists (read by callers before CacheLayout)
        self.windows, self.slots = list(lay.windows), list(lay.slots)
        self.layer_sinks = list(lay.sinks)
        self.kfmts, self.vfmts = list(lay.kfmts), list(lay.vfmts)
        self.sinks = max(lay.sinks)
        self.transform = KeyTransform(n_layers, self.n_kv_heads, self.head_dim, lay.transformed,
                                      c.key_mean, None if c.key_scale is False else c.key_scale,
                                      lay.spec.scaled)
        # raw keys of sink rows stored before their layer's mean was fitted (re-encoded then)
        self._raw_sinks = [np.zeros((S * self.transform.active[i], self.n_kv_heads, self.head_dim),
                                    np.float32) for i, S in enumerate(self.layer_sinks)]
        self._len = [0] * self.n_layers
        self.observer = None  # observer(layer, first position, k, q) after each append()
        self._lock = threading.Lock()
        self.stats = {"skipped": 0, "total": 0, "skip_rate": 0.0}
        self.backend = resolve(c.backend, c.device)
        # the store gets the layout and the transform, not the cache, so a dropped cache
        # frees at once
        self._impl = backend_of(self.backend).get("store")(lay, self.transform, c.device)

    @property
    def nbytes(self):
        """Bytes of K and V: codes and scales of every slot, float16 sinks and the key
        transform's tables."""
        return self.layout.nbytes

    @property
    def bits_per_value(self):
        """Stored bits per cached K or V value, every norm, scale, sink and mean included."""
        return self.layout.bits_per_value

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
            # tables fitted on a position now forgotten are refitted by the next append
            self.transform.reset([i for i, S in enumerate(self.layer_sinks) if n <= S])

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
        if T == 1 and self._append_one(layer, k, v, q):
            return
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
            saved = (t.mean[layer].copy(), t.scale[layer].copy()) if fit else None
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
            if self.observer is not None:
                self.observer(layer, n, kf, q)

    def _append_one(self, layer, k, v, q):
        """A decode token past the sinks, with no fit and no observer, in the store's one
        compiled call when it has one (the cpu store): the checks, key transform and encoding
        of the path below, without its numpy calls. False (nothing changed): take that path,
        which also names whatever the compiled checks refused."""
        one = getattr(self._impl, "append_one", None)
        if one is None or self.observer is not None or not all(
                type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous
                for x in ((k, v) if q is None else (k, v, q))):
            return False
        if q is not None and not (q.ndim == 3 and len(q) == 1 and q.shape[2] == self.head_dim
                                  and q.shape[1] % self.n_kv_heads == 0):
            return False
        with self._lock:
            n, t = self._len[layer], self.transform
            if n < self.layer_sinks[layer] or n >= self.capacity or \
                    (t.active[layer] and not t.ready[layer]):
                return False
            tables = (t.mean[layer], t.scale[layer]) if t.active[layer] else (None, None)
            if not one(layer, n, k, v, q, *tables):
                return False
            self._len[layer] = n + 1
            return True

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
        if not backend_of(self.backend).device:
            raise ValueError("advance() is for steps recorded on a device backend")
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
        NOTE: on a device backend a layer the host did not fit takes its tables and raw sink
        keys from the device (a model's step fits them there); a cache filled by host-array
        append() calls on a device, not yet past its sinks, keeps its raw sink keys on the host
        and saves the device's (unused) ones."""
        device = backend_of(self.backend).device
        with self._lock, self._staging():
            t = self.transform
            out = {"lengths": np.array(self._len, np.int64), "key_mean": t.mean.copy(),
                   "key_scale": t.scale.copy(), "key_ready": t.ready.copy()}
            for layer, n in enumerate(self._len):
                S = self.layer_sinks[layer]
                raw = self._raw_sinks[layer]
                if device and t.active[layer] and not t.ready[layer]:
                    mean, scale, raw = self._impl.transform_state(layer)
                    out["key_mean"][layer], out["key_scale"][layer] = mean, scale
                    out["key_ready"][layer] = n > S
                out[f"raw_sinks{layer}"] = raw[:min(n, len(raw))].copy()
                out.update({f"{k}{layer}": a for k, a in self._impl.state(layer, n).items()})
            return out

    def restore(self, state):
        """Replace the cache's contents by a state() of a cache with the same formats
        (ValueError, and the cache as it was, when it does not fit this one)."""
        device = backend_of(self.backend).device
        with self._lock, self._staging():
            t = self.transform
            lengths = state_array(state, "lengths", (self.n_layers,), np.int64)
            if lengths.min() < 0 or lengths.max() > self.capacity:
                raise ValueError(f"the saved cache holds up to {lengths.max()} tokens; this "
                                 f"cache takes {self.capacity}")
            tables = [state_array(state, name, like.shape, like.dtype)
                      for name, like in (("key_mean", t.mean), ("key_scale", t.scale),
                                         ("key_ready", t.ready))]
            raw = [state_array(state, f"raw_sinks{i}",
                                (min(n, len(r)),) + r.shape[1:], r.dtype)
                   for i, (n, r) in enumerate(zip(lengths, self._raw_sinks))]
            layers = [self._impl.check_state(i, int(n), state) for i, n in enumerate(lengths)]
            t.mean[:], t.scale[:], t.ready[:] = tables  # everything checked: now write
            for i, rows in enumerate(layers):
                self._impl.restore(i, int(lengths[i]), rows)
                self._raw_sinks[i][:len(raw[i])] = raw[i]
                if device and t.active[i]:
                    self._impl.set_tables(i, t.mean[i], t.scale[i])
                    self._impl.set_raw_sinks(i, raw[i])
            self._len = [int(n) for n in lengths]

    @contextlib.contextmanager
    def _staging(self):
        """On a device backend, frees the staging buffer that reads and writes went through."""
        try:
            yield
        finally:
            if backend_of(self.backend).device:
                from nexvk.kernels import upload
                upload.release(self._impl.dev)

    @property
    def store(self):
        """The device store, for recording cache writes and attention into a caller's graph
        (record_append, record_attention, and its dyn and stats buffers)."""
        if not backend_of(self.backend).device:
            raise ValueError(f"the {self.backend} backend has no device store")
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


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x):
    return _is_int(x) or isinstance(x, (float, np.floating))


