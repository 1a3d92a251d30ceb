"""Memory plan for a model at a context length, from metadata and the tensor table only.

No weight is loaded. Weights cost what the file stores, and 4 bytes per parameter in the numpy
model (`nexvk run` dequantizes them to float32 at load), which is what `--memory` is judged
against; the KV cache costs, per layer,
n_kv_heads[layer] * tokens[layer] * (head_dim * bits_k + head_dim_v * bits_v) / 8, where bits
per value come from the codec (norms and scales included) and tokens[layer] is the context, or
on a sliding-window layer the ring the cache keeps: min(context, window + batch - 1) slots, as
the batch of tokens a forward call appends is written before it attends (llama.cpp keeps the
same window + ubatch). The chosen K/V formats are shown next to f16
and q8_0, and the total is checked against a memory size such as "4GiB".
"""
import re
from dataclasses import dataclass

import numpy as np

from nexvk.cache import ring_slots
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
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_bytes(n):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def kv_bytes(cfg, ctx, k_type, v_type, batch=MAX_BATCH):
    """Bytes of a KV cache holding `ctx` tokens in every layer (windowed layers hold less),
    exactly what nexvk.KVCache allocates for a model forwarding up to `batch` tokens a call."""
    from nexvk.quant import bits_per_value
    bk = bits_per_value(k_type, cfg.head_dim)
    bv = bits_per_value(v_type, cfg.head_dim_v)
    tokens = np.full(cfg.n_layers, ctx, dtype=np.int64)
    if cfg.sliding_window:
        tokens[cfg.swa_layers] = ring_slots(ctx, cfg.sliding_window, min(batch, ctx))
    heads = np.asarray(cfg.n_kv_heads, dtype=np.int64)
    return float(np.sum(heads * tokens) * (cfg.head_dim * bk + cfg.head_dim_v * bv) / 8)


@dataclass
class Plan:
    name: str
    cfg: Config
    ctx: int
    k_type: str
    v_type: str
    weights_bytes: int        # as stored in the GGUF
    weights_f32_bytes: int    # as held by the numpy backend (dequantized float32)
    kv: dict                  # "k/v" label -> bytes, chosen formats first
    memory: int = 0           # budget in bytes, 0 = none given

    @property
    def total(self):
        """Bytes `nexvk run` needs: weights as float32 (as the numpy model holds them) + KV."""
        return self.weights_f32_bytes + self.kv[f"{self.k_type}/{self.v_type}"]

    @property
    def fits(self):
        return self.total <= self.memory if self.memory else None

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
        from nexvk.quant import bits_per_value
        ref = self.kv.get("f16/f16")
        for label, b in self.kv.items():
            k, v = label.split("/")
            bits = (bits_per_value(k, c.head_dim) + bits_per_value(v, c.head_dim_v)) / 2
            ratio = f"{ref / b:.2f}x smaller than f16" if ref and label != "f16/f16" else ""
            out.append(f"KV {label:<13} {fmt_bytes(b):>11}  ({bits:.3f} bits/value) {ratio}")
        chosen = f"{self.k_type}/{self.v_type}"
        stored = self.weights_bytes + self.kv[chosen]
        out.append(f"total        {fmt_bytes(self.total)} (weights as float32, as `nexvk run` "
                   f"holds them, + KV {chosen}; {fmt_bytes(stored)} with weights as stored)")
        if self.memory:
            verdict = "fits" if self.fits else "does NOT fit"
            out.append(f"memory       {fmt_bytes(self.memory)}: {verdict}")
        return out


def plan(path, ctx, k_type="turbo3", v_type="turbo3", memory=0):
    """A Plan for the GGUF at `path` (metadata and tensor table only; nothing dequantized)."""
    if ctx <= 0:
        raise ValueError(f"context must be positive, got {ctx}")
    g = open_gguf(path)
    cfg = Config.from_gguf(g)
    kv = {f"{k_type}/{v_type}": kv_bytes(cfg, ctx, k_type, v_type)}
    for ref in ("f16", "q8_0"):  # comparison rows, where the format can hold this head size
        try:
            kv.setdefault(f"{ref}/{ref}", kv_bytes(cfg, ctx, ref, ref))
        except ValueError:  # e.g. q8_0 at head_dim 16 (blocks of 32)
            pass
    n_params = sum(t.n_elements for t in g.tensors.values())
    return Plan(name=cfg.name or g.path.name, cfg=cfg, ctx=ctx, k_type=k_type, v_type=v_type,
                weights_bytes=g.tensor_bytes(), weights_f32_bytes=4 * n_params, kv=kv,
                memory=parse_size(memory) if memory else 0)
