"""Memory plan for a model at a context length, from metadata and the tensor table only.

No weight is loaded. Weights cost what the file stores, and 4 bytes per parameter in the numpy
model (`nexvk run` dequantizes them to float32 at load), which is what `--memory` is judged
against; the KV cache costs, per layer,
n_kv_heads[layer] * tokens[layer] * (head_dim * bits_k + head_dim_v * bits_v) / 8, where bits
per value come from the codec (norms and scales included) and tokens[layer] is the context, or
on a sliding-window layer the ring the cache keeps: min(context, window + batch - 1) slots, as
the batch of tokens a forward call appends is written before it attends (llama.cpp keeps the
same window + ubatch); a hardened cache adds its float16 sinks and key means
(CacheSpec.layer_bytes). The chosen K/V formats are shown next to f16 and q8_0, and the
total is checked against a memory size such as "4GiB".
"""
import re
from dataclasses import dataclass

import numpy as np

from nexvk.cache.config import CacheConfig
from nexvk.cache.layout import CacheLayout, ring_slots
from nexvk.model.arch import MAX_BATCH
from nexvk.model.config import Config
from nexvk.model.gguf import open_gguf

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(s):
    """'4GiB', '512MiB', '8GB', '1.5g', '123' -> bytes (int). ValueError when unparsable."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(s))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse memory size {s!r} (examples: 4GiB, 512MiB, 8GB)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < 1:  # 0 used to mean "no budget given": a plan with no verdict and exit 0
        raise ValueError(f"memory size {s!r} is less than one byte")
    return n


def fmt_bytes(n):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def cache_layout(cfg, ctx, config=None, batch=MAX_BATCH):
    """The CacheLayout (nexvk.cache.layout) of a model's KV cache at ctx tokens, forwarding up
    to `batch` tokens a call: per-layer formats, windows, slots, sinks and bytes per KV head,
    exactly what nexvk.KVCache allocates (config: a CacheConfig; default turbo3/turbo3)."""
    config = config or CacheConfig()
    swa = set(cfg.swa_layers) if cfg.sliding_window else set()
    windows = [cfg.sliding_window if i in swa else 0 for i in range(cfg.n_layers)]
    return CacheLayout.build(config.spec(cfg.n_layers), max(cfg.n_kv_heads), cfg.head_dim, ctx,
                             windows, min(batch, ctx), head_dim_v=cfg.head_dim_v,
                             seed=config.seed, max_heads=max(cfg.n_heads, max(cfg.n_kv_heads)))


def kv_bytes(cfg, ctx, config=None, v_type=None, batch=MAX_BATCH, cache_opts=None):
    """Bytes of a KV cache holding `ctx` tokens in every layer (windowed layers hold less),
    exactly what nexvk.KVCache allocates for a model forwarding up to `batch` tokens a call.
    config: a CacheConfig, or as before it a k_type with v_type and cache_opts."""
    lay = cache_layout(cfg, ctx, as_config(config, v_type, cache_opts), batch)
    return float(sum(h * b for h, b in zip(cfg.n_kv_heads, lay.head_bytes)))


def as_config(config, v_type=None, cache_opts=None):
    """A CacheConfig from one, or from (k_type, v_type, cache_opts) (default turbo3)."""
    if isinstance(config, CacheConfig):
        if v_type is not None or cache_opts:
            raise ValueError("give a CacheConfig or k_type/v_type/cache_opts, not both")
        return config
    return CacheConfig.of(config or "turbo3", v_type or "turbo3", cache_opts)


@dataclass
class Plan:
    name: str
    cfg: Config
    ctx: int
    k_type: str
    v_type: str
    label: str                # the chosen cache's label (kv key)
    weights_bytes: int        # as stored in the GGUF
    weights_f32_bytes: int    # as held by the numpy backend (dequantized float32)
    kv: dict                  # "k/v" label -> bytes, chosen formats first
    memory: int = 0           # budget in bytes, 0 = none given

    working_bytes: int = 0    # vulkan: activations, logits and attention scratch (estimate)

    @property
    def totals(self):
        """Bytes each backend holds for weights, KV and working buffers: numpy keeps float32
        weights on the host; vulkan keeps the GGUF blocks on the device (device memory is
        host memory on lavapipe and integrated GPUs)."""
        kv = self.kv[self.label]
        return {"numpy": self.weights_f32_bytes + kv,
                "vulkan": self.weights_bytes + kv + self.working_bytes}

    @property
    def total(self):
        """Bytes `nexvk run --backend numpy` needs: weights as float32 + KV."""
        return self.totals["numpy"]

    @property
    def fits(self):
        """With a memory budget: whether some backend fits it (None without a budget)."""
        return any(t <= self.memory for t in self.totals.values()) if self.memory else None

    def lines(self):
        c = self.cfg
        heads = (f"{c.n_kv_heads[0]}" if c.kv_heads_uniform
                 else f"per layer {min(c.n_kv_heads)}..{max(c.n_kv_heads)}")
        out = [f"model        {self.name} ({c.arch}, {c.n_layers} layers, {c.n_heads} q heads, "
               f"{heads} kv heads, head_dim {c.head_dim})",
               f"context      {self.ctx} tokens (trained: {c.context_length or '?'})"]
        if c.sliding_window:
            n = len(c.swa_layers)
            used = ring_slots(self.ctx, c.sliding_window, min(MAX_BATCH, self.ctx))
            out.append(f"sliding win  {n} of {c.n_layers} layers use a {c.sliding_window}-token "
                       f"window: they cache only {used} tokens each"
                       + (f" (window + batch of {MAX_BATCH} - 1)" if used < self.ctx else ""))
        out.append(f"weights      {fmt_bytes(self.weights_bytes)} as stored "
                   f"({fmt_bytes(self.weights_f32_bytes)} as float32 in the numpy backend)")
        ref = self.kv.get("f16/f16")
        slots = cache_layout(c, self.ctx, CacheConfig("f16", "f16")).slots
        values = float(np.dot(c.n_kv_heads, slots)) * (c.head_dim + c.head_dim_v)
        for label, b in self.kv.items():
            ratio = f"{ref / b:.2f}x smaller than f16" if ref and label != "f16/f16" else ""
            out.append(f"KV {label:<13} {fmt_bytes(b):>11}  ({8 * b / values:.3f} bits/value) "
                       f"{ratio}")
        t = self.totals
        out.append(f"total numpy  {fmt_bytes(t['numpy'])} (weights as float32, as the numpy "
                   f"backend holds them, + KV {self.label})")
        out.append(f"total vulkan {fmt_bytes(t['vulkan'])} (weights as stored, on the device, "
                   f"+ KV + {fmt_bytes(self.working_bytes)} of activations and scratch)")
        if self.memory:
            verdict = ", ".join(f"{b} {'fits' if n <= self.memory else 'does NOT fit'}"
                                for b, n in t.items())
            out.append(f"memory       {fmt_bytes(self.memory)}: {verdict}")
        return out


def plan(path, ctx, config=None, v_type=None, memory=None, cache_opts=None):
    """A Plan for the GGUF at `path` (metadata and tensor table only; nothing dequantized)
    with the cache of `config` (a CacheConfig; or as before it k_type, v_type, cache_opts;
    default turbo3/turbo3). The f16 and q8_0 rows are always the plain formats."""
    if ctx <= 0:
        raise ValueError(f"context must be positive, got {ctx}")
    budget = 0 if memory is None else parse_size(memory)
    config = as_config(config, v_type, cache_opts)
    g = open_gguf(path)
    cfg = Config.from_gguf(g)
    lay = cache_layout(cfg, ctx, config)
    kv = {lay.spec.label: kv_bytes(cfg, ctx, config)}
    for ref in ("f16", "q8_0"):  # comparison rows, where the format can hold this head size
        try:
            kv.setdefault(f"{ref}/{ref}", kv_bytes(cfg, ctx, CacheConfig(ref, ref)))
        except ValueError:  # e.g. q8_0 at head_dim 16 (blocks of 32)
            pass
    n_params = sum(t.n_elements for t in g.tensors.values())
    return Plan(name=cfg.name or g.path.name, cfg=cfg, ctx=ctx, k_type=config.k_type,
                v_type=config.v_type, label=lay.spec.label, weights_bytes=g.tensor_bytes(),
                weights_f32_bytes=4 * n_params, kv=kv,
                memory=budget,
                working_bytes=working_bytes(cfg, ctx, lay))


def working_bytes(cfg, ctx, layout=None, batch=MAX_BATCH):
    """The vulkan model's working buffers: activations of a decode and a prefill step
    (forward.State: 4 bytes x rows x (2 dim + 2 q + 2 kv + 2 ffn)), two host-visible logits
    rows (counted twice: device + host copy), and its cache's attention scratch and staging
    (CacheLayout.vulkan_working_bytes)."""
    layout = layout or cache_layout(cfg, ctx, CacheConfig("f16", "f16"), batch)
    B = min(batch, ctx)
    kv_heads = max(cfg.n_kv_heads)
    q, kv = cfg.n_heads * cfg.head_dim, kv_heads * cfg.head_dim
    per_row = 4 * (2 * cfg.dim + 2 * q + 2 * kv + 2 * (cfg.ffn_dim or 4 * cfg.dim))
    logits = 2 * 2 * 4 * (cfg.vocab_size or 0)
    return int((B + 1) * per_row + logits + layout.vulkan_working_bytes())
