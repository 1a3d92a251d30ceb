"""Packed causal GQA attention: the numpy twin of shaders/attn_*.comp and their sizes.

ref() works like the shader: the query is rotated once into the key format's compute
domain and scored against centroids times norms (no inverse rotation of any key); values
are accumulated in the value format's compute domain and un-rotated once per query head.
Weights below the sparse-V threshold are dropped (not renormalized), as in the shader.
"""
import numpy as np

from nexvk.kernels import layout


def ref(kfmt, vfmt, kcodes, kscales, vcodes, vscales, q, pos0, scale, thr=0.0, window=0,
        sink_k=None, sink_v=None):
    """kcodes/vcodes: (S, HKV, W) uint32, kscales/vscales: (S, HKV, S') float16: the cache's
    S slots; q: (T, H, d) float32 at positions pos0..pos0+T-1, whose keys have been written.
    sink_k/sink_v: (N, HKV, d) float16 rows of positions 0..N-1 in the formats' compute
    domains (the hardened cache's sinks; None: N = 0). Position p >= N lives in slot
    (p - N) % S. window: 0 = causal over everything, else a query at p sees only keys
    p-window+1..p (the slots must hold those window + T - 1 keys; no sinks then).
    Returns (out (T, H, d) float32, skipped pairs, total pairs)."""
    T, H, d = q.shape
    S, hkv = kcodes.shape[:2]
    N = 0 if sink_k is None else len(sink_k)
    G = H // hkv
    lo = max(0, pos0 - window + 1) if window else 0
    pos = np.arange(lo, pos0 + T)                                        # (L,) key positions
    ns = min(max(N - lo, 0), pos.size)                                   # sinks among them
    L = pos.size - ns
    if L > S:
        raise ValueError(f"{L} keys needed but the cache keeps {S} slots")
    first = (lo + ns - N) % S if S else 0
    slot = slice(first, first + L) if first + L <= S else (pos[ns:] - N) % S  # a view unless it wraps
    kc, vc = (fmt.decode_compute(codes[slot].reshape(L * hkv, fmt.words),
                                 scales[slot].reshape(L * hkv, fmt.n_scales)).reshape(L, hkv, d)
              for fmt, codes, scales in ((kfmt, kcodes, kscales), (vfmt, vcodes, vscales)))
    if ns:
        kc = np.concatenate([sink_k[lo:lo + ns].astype(np.float32), kc])
        vc = np.concatenate([sink_v[lo:lo + ns].astype(np.float32), vc])
    qr = kfmt.to_compute(q).reshape(T, hkv, G, d)
    s = np.einsum("tgrd,lgd->tgrl", qr, kc) * np.float32(scale)      # (T, HKV, G, L)
    age = (pos0 + np.arange(T))[:, None] - pos[None, :]               # (T, L) query - key position
    visible = (age >= 0) & ((age < window) if window else True)
    s = np.where(visible[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    skipped = 0
    if thr > 0:
        drop = (p < thr) & visible[:, None, None, :]
        skipped = int(drop.sum())
        p[drop] = 0
    total = int(visible.sum()) * H
    acc = np.einsum("tgrl,lgd->tgrd", p.astype(np.float32), vc)
    return vfmt.from_compute(acc.reshape(T, H, d)), skipped, total


def visible_keys(pos0, T, window=0):
    """(query, key) pairs of T queries at positions pos0.. seeing keys p-window+1..p (all
    keys before them when window is 0), per query head: the sum of min(p + 1, window) over
    the queries, in closed form (called once per layer and token)."""
    lo, hi = pos0 + 1, pos0 + T          # each query sees p + 1 keys, at most window
    if not window:
        return (lo + hi) * T // 2
    n = max(0, min(hi, window) - lo + 1)  # queries that see fewer than window keys
    return (2 * lo + n - 1) * n // 2 + window * (T - n)


def spec(kfmt, vfmt, group):
    """Specialization constants of the three attention passes."""
    return [layout.WG, kfmt.head_dim, group, *layout.spec(kfmt), *layout.spec(vfmt)]


def split_size(head_dim, group, keys=0, parallel=1, target=0):
    """Keys per split, a multiple of the workgroup width. At most ~40k loop iterations per
    invocation (llvmpipe ends any loop after 65535), between 64 and 4096 keys. target > 0
    (tuning's attention TARGET, GPUs): smaller splits, so that `parallel` (query rows x KV
    heads) x splits of `keys` reach `target` workgroups per pass -- a decode step otherwise
    runs one workgroup per KV head, each looping over every key (3 on SmolLM2, whose decode
    at 2048 keys then ran at 0.3x its speed at 512 on an H200)."""
    dpt = -(-head_dim // layout.WG)
    per_key = 2 + group + dpt * (1 + group) + head_dim * (1 + group) // layout.WG
    cap = int(min(4096, max(layout.WG, 40_000 // per_key // layout.WG * layout.WG)))
    if target <= 0 or keys <= 0:
        return cap
    want = -(-keys * parallel // target)
    return min(cap, max(layout.WG, -(-want // layout.WG) * layout.WG))


class Plan:
    """Sizes of one attention configuration: `rows` queries per dispatch, `group` query
    heads per KV head, each query seeing at most `keys` keys (the layer's capacity, or its
    window); `target`: see split_size."""

    def __init__(self, head_dim, n_kv_heads, group, keys, rows, target=0):
        self.ks = split_size(head_dim, group, keys, rows * n_kv_heads, target)
        self.ns = -(-keys // self.ks)
        self.groups = rows * n_kv_heads * self.ns           # scores and values passes
        self.reduce_groups = rows * n_kv_heads
        self.acc_base = self.groups * 2 * group              # m, l per split, then acc
        self.part_floats = self.acc_base + self.groups * group * head_dim
        # the largest pass (scores or values): sh_x[G * D] plus sh_red / sh_p[G * WG] floats
        self.group, self.shared_bytes = group, 4 * group * (head_dim + layout.WG)

    def check_shared_memory(self, limit, device_name):
        """ValueError when the passes need more workgroup shared memory than `limit` bytes
        (VkPhysicalDeviceLimits.maxComputeSharedMemorySize; 16 KiB is the guaranteed minimum)."""
        if self.shared_bytes > limit:
            raise ValueError(
                f"attention with {self.group} query heads per KV head needs "
                f"{self.shared_bytes / 1024:.1f} KiB of shared memory per workgroup, over "
                f"{device_name}'s {limit / 1024:.0f} KiB; use fewer query heads per KV head "
                "(n_heads) or the numpy backend")

    def push(self, hkv, k_region, v_region, ktab, vtab, cap, q0=0, window=0, q_off=0, o_off=0,
             sinks=0, sink_regions=(0, 0), xs=layout.NONE):
        """The push block shared by the three passes, in declaration order: the layer's
        regions, tables and sinks + slots; this dispatch's first query row; the window (0:
        none); the float offsets of the queries and the output in their buffers; the sinks'
        count and K, V regions; the word offset of the f16 key scale queries are divided by."""
        return [hkv, *k_region, *v_region, ktab, vtab, cap, self.ks, self.ns, self.acc_base,
                q0, window, q_off, o_off, sinks, *sink_regions, xs]
