"""Packed causal GQA attention: the numpy twin of shaders/attn_*.comp and their sizes.

ref() works like the shader: the query is rotated once into the key format's compute
domain and scored against centroids times norms (no inverse rotation of any key); values
are accumulated in the value format's compute domain and un-rotated once per query head.
Weights below the sparse-V threshold are dropped (not renormalized), as in the shader.
"""
import numpy as np

from nexvk.kernels import layout


def ref(kfmt, vfmt, kcodes, kscales, vcodes, vscales, q, pos0, scale, thr=0.0):
    """kcodes/vcodes: (L, HKV, W) uint32, kscales/vscales: (L, HKV, S) float16 for the L
    cached positions; q: (T, H, d) float32 at positions pos0..pos0+T-1 (pos0 + T <= L).
    Returns (out (T, H, d) float32, skipped pairs, total pairs)."""
    T, H, d = q.shape
    L = pos0 + T
    hkv = kcodes.shape[1]
    G = H // hkv
    kc = kfmt.decode_compute(kcodes[:L].reshape(L * hkv, -1), kscales[:L].reshape(L * hkv, -1))
    vc = vfmt.decode_compute(vcodes[:L].reshape(L * hkv, -1), vscales[:L].reshape(L * hkv, -1))
    kc, vc = kc.reshape(L, hkv, d), vc.reshape(L, hkv, d)
    qr = kfmt.to_compute(q).reshape(T, hkv, G, d)
    s = np.einsum("tgrd,lgd->tgrl", qr, kc) * np.float32(scale)      # (T, HKV, G, L)
    visible = np.arange(L)[None, :] <= (pos0 + np.arange(T))[:, None]  # (T, L)
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


def spec(kfmt, vfmt, group):
    """Specialization constants of the three attention passes."""
    return [layout.WG, kfmt.head_dim, group, *layout.spec(kfmt), *layout.spec(vfmt)]


def split_size(head_dim, group):
    """Keys per split: at most ~40k loop iterations per invocation (llvmpipe ends any loop
    after 65535), a multiple of the workgroup width, between 64 and 4096."""
    dpt = -(-head_dim // layout.WG)
    per_key = 2 + group + dpt * (1 + group) + head_dim * (1 + group) // layout.WG
    return int(min(4096, max(layout.WG, 40_000 // per_key // layout.WG * layout.WG)))


class Plan:
    """Sizes of one attention configuration: `rows` queries per dispatch, `group` query
    heads per KV head, each query seeing at most `keys` keys (the layer's capacity, or its
    window)."""

    def __init__(self, head_dim, n_kv_heads, group, keys, rows):
        self.ks = split_size(head_dim, group)
        self.ns = -(-keys // self.ks)
        self.groups = rows * n_kv_heads * self.ns           # scores and values passes
        self.reduce_groups = rows * n_kv_heads
        self.acc_base = self.groups * 2 * group              # m, l per split, then acc
        self.part_floats = self.acc_base + self.groups * group * head_dim

    def push(self, hkv, k_region, v_region, ktab, vtab, cap, q0=0, window=0):
        """The push block shared by the three passes, in declaration order: the layer's
        regions, tables and slots; this dispatch's first query row; the window (0: none)."""
        return [hkv, *k_region, *v_region, ktab, vtab, cap, self.ks, self.ns, self.acc_base,
                q0, window]


def set_dyn(words, n_q, pos0, scale, thr):
    """Write the per-call words of the passes' Dyn buffer into `words` (uint32 (4,))."""
    words[0], words[1] = n_q, pos0
    words[2:4].view(np.float32)[:] = (scale, thr)
