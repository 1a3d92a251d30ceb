"""CacheLayout: what a KV cache holds, layer by layer, built once from its CacheSpec and the
model's dimensions -- the only description of the cache the planner (model/plan.py), KVCache
and each store read.

Per layer: K and V formats, the window (0: the layer sees its whole context), the slots it
keeps (the context, or a ring of window + max_batch - 1 on a sliding-window layer), the float16
sink positions (none on a ring layer), whether its keys go through the key transform, and the
bytes one KV head holds. Every geometry number is a Python int, converted and range-checked
here once (numpy integer types accepted; bool and float refused: a float's bits once reached a
shader constant, a uint16 once overflowed a device offset).
"""
from dataclasses import dataclass

import numpy as np

from nexvk.kernels import attention as attn_kernel, tuning
from nexvk.quant.formats import make

SCRATCH_BYTES = 16 << 20  # scores + split partials of one dispatch of queries (vulkan)
GPU_TARGET = tuning.TABLE["gpu"]["attention"]["TARGET"]  # what the memory plan assumes
# upper bounds of the geometry (far beyond any model; they keep every offset in range)
LIMITS = {"n_layers": 1 << 12, "n_kv_heads": 1 << 12, "n_heads": 1 << 14,
          "head_dim": 1 << 12, "capacity": 1 << 28, "max_batch": 1 << 16}


def count(name, val, lo=1, hi=None, what=""):
    """val as a Python int in [lo, hi] (hi: LIMITS[name]); ValueError otherwise."""
    hi = LIMITS.get(name) if hi is None else hi
    kind = f"{'positive' if lo == 1 else 'non-negative'} integer{what}"
    if not (isinstance(val, (int, np.integer)) and not isinstance(val, (bool, np.bool_))) \
            or val < lo:
        raise ValueError(f"{name} must be a {kind}, got {val!r}")
    if hi is not None and val > hi:
        raise ValueError(f"{name} must be a {kind} up to {hi}, got {val}")
    return int(val)


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
        w = count("window", 0 if w is None else w, lo=0, hi=1 << 28, what=" or None")
        out.append(w if w < capacity else 0)
    return out


def scratch_plan(head_dim, n_kv_heads, max_heads, slots, windows, max_batch, target=0):
    """(attention Plan of one query, scratch bytes per query, queries per dispatch `chunk`,
    partial-sum floats of the largest dispatch): how the Vulkan store sizes its score and
    partial-sum scratch. target: tuning's attention TARGET of the device (split_size)."""
    keys = [w or n for w, n in zip(windows, slots)]
    group = max_heads // n_kv_heads
    one = attn_kernel.Plan(head_dim, n_kv_heads, group, max(keys), 1)
    per_query = 4 * (max_heads * max(slots) + one.part_floats)
    chunk = max(1, min(max_batch, max(SCRATCH_BYTES, per_query) // per_query))
    # with a target, fewer rows take more (smaller) splits: the largest over every row count
    parts = chunk * one.part_floats if not target else max(
        attn_kernel.Plan(head_dim, n_kv_heads, group, k, rows, target).part_floats
        for k in set(keys) for rows in range(1, chunk + 1))
    return one, per_query, chunk, parts


@dataclass(frozen=True, eq=False)
class CacheLayout:
    spec: object           # CacheSpec: formats per layer, sinks, key transform
    n_kv_heads: int
    head_dim: int
    head_dim_v: int
    capacity: int
    max_batch: int
    max_heads: int         # most query heads an attention call may use
    n_heads: int           # the query heads given (None: not known in advance)
    kfmts: tuple           # per layer: Format objects (nexvk.quant.formats)
    vfmts: tuple
    windows: tuple         # per layer: 0, or the sliding window in tokens
    slots: tuple           # per layer: positions kept (sinks included)
    sinks: tuple           # per layer: float16 sink positions
    transformed: tuple     # per layer: keys go through the key transform
    head_bytes: tuple      # per layer: bytes one KV head holds (K and V, everything)

    @classmethod
    def build(cls, spec, n_kv_heads, head_dim, capacity, window=None, max_batch=256,
              n_heads=None, head_dim_v=None, seed=0, max_heads=None):
        """max_heads: most query heads an attention call may use (default: n_heads, else
        8 x n_kv_heads)."""
        L = count("n_layers", spec.n_layers)
        hkv, d = count("n_kv_heads", n_kv_heads), count("head_dim", head_dim)
        dv = d if head_dim_v is None else count("head_dim", head_dim_v)
        cap, B = count("capacity", capacity), count("max_batch", max_batch)
        if n_heads is not None:
            n_heads = count("n_heads", n_heads)
            if n_heads < hkv or n_heads % hkv:
                raise ValueError(f"n_heads {n_heads} must be a multiple of n_kv_heads {hkv}")
        windows = layer_windows(window, L, cap)
        slots = [ring_slots(cap, w, B) for w in windows]
        sinks = [0 if w else min(spec.sinks, cap) for w in windows]
        max_heads = count("n_heads", max_heads or n_heads or min(8 * hkv, LIMITS["n_heads"]))
        return cls(spec, hkv, d, dv, cap, B, max_heads,
                   n_heads, tuple(make(f, d, seed) for f in spec.k_types),
                   tuple(make(f, dv, seed) for f in spec.v_types), tuple(windows),
                   tuple(slots), tuple(sinks),
                   tuple(spec.transformed(i) for i in range(L)),
                   tuple(spec.layer_bytes(i, d, dv, n, S)
                         for i, (n, S) in enumerate(zip(slots, sinks))))

    @property
    def n_layers(self):
        return len(self.slots)

    @property
    def nbytes(self):
        """Bytes of K and V: codes and scales of every slot, float16 sinks and the key
        transform's tables."""
        return self.n_kv_heads * sum(self.head_bytes)

    @property
    def bits_per_value(self):
        """Stored bits per cached K or V value, every norm, scale, sink and mean included."""
        return 8 * self.nbytes / (self.n_layers * self.capacity * self.n_kv_heads
                                  * (self.head_dim + self.head_dim_v))

    def keys_seen(self, layer):
        """Most keys one query of `layer` sees."""
        return self.windows[layer] or self.slots[layer]

    def scratch(self, target=GPU_TARGET):
        """scratch_plan of this cache (vulkan) on a device of attention TARGET `target`."""
        return scratch_plan(self.head_dim, self.n_kv_heads, self.max_heads, self.slots,
                            self.windows, self.max_batch, target)

    def vulkan_working_bytes(self):
        """Device bytes a Vulkan store holds besides the cache itself: the attention scratch
        and the staging of host-array calls (host-visible buffers count twice: device + host
        copy)."""
        _, _, chunk, parts = self.scratch()
        d, hkv, H = self.head_dim, self.n_kv_heads, self.max_heads
        staging = sum(4 * rows * d * 2 * (hkv + H) for rows in {1, chunk})
        return 4 * (chunk * H * max(self.slots) + parts) + 2 * staging
