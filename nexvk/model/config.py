"""Model hyperparameters from GGUF metadata, for any architecture (llama.cpp key names).

`Config.from_meta(meta)` takes a plain dict {key: value} so it can be unit-tested without a
file; `Config.from_gguf(g)` feeds it from an opened GGUF. Only what the KV cache and the memory
plan need is required (layers, heads, head dims); the rest has defaults or is None.

Files are untrusted input: every value is checked for type and range before anything is sized
from it (integers must be integers, head counts must divide, at most MAX_LAYERS layers), the
layer count against the blk.N tensors present, and `check_tensors(cfg, g)` checks every tensor
its family's forward pass reads against the shape the metadata implies.
"""
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS: a bound before anything is sized per layer
_BLK = re.compile(r"blk\.(\d+)\.")


@dataclass
class Config:
    arch: str
    n_layers: int                 # block_count
    dim: int                      # embedding_length
    n_heads: int                  # query heads (uniform)
    n_kv_heads: list              # per layer (GGUF may store one number or one per layer)
    head_dim: int                 # key_length (q/k head size)
    head_dim_v: int               # value_length (usually == head_dim)
    ffn_dim: int = 0              # feed_forward_length (0 when unknown or per-layer)
    vocab_size: int = 0
    context_length: int = 0       # training context
    rope_base: float = 10000.0
    rope_base_swa: float = 0.0    # rope.freq_base_swa: base of sliding-window layers (0 = unset)
    rope_dims: int = 0            # rotated dims per head (<= head_dim)
    rope_scale: float = 1.0       # rope.scaling.factor of "linear" scaling: positions / factor
    rope_attn_factor: float = 1.0  # rope.scaling.attn_factor: cos and sin times it (Phi-3 LongRoPE)
    rope_orig_ctx: int = 0        # rope.scaling.original_context_length (0: context_length)
    rms_eps: float = 1e-5
    sliding_window: int = 0       # 0 = none
    swa_layers: list = field(default_factory=list)  # indices of sliding-window layers
    name: str = ""

    @property
    def kv_heads_uniform(self):
        return len(set(self.n_kv_heads)) == 1

    @classmethod
    def from_meta(cls, meta, source="model"):
        """Build from a {key: value} mapping of GGUF metadata; ValueError names what is
        missing, of the wrong type or out of range."""
        arch = meta.get("general.architecture")
        if not arch:
            raise ValueError(f"{source}: missing 'general.architecture'")
        if not isinstance(arch, str):
            raise ValueError(f"{source}: 'general.architecture' must be a string, got {_show(arch)}")

        def get(key, default=KeyError):
            k = f"{arch}.{key}"
            if k in meta:
                return meta[k]
            if default is KeyError:
                raise ValueError(f"{source}: architecture '{arch}' is missing metadata '{k}'")
            return default

        def num(key, default=KeyError, lo=1, kind=int):
            return _number(source, f"{arch}.{key}", get(key, default), lo, kind)

        def per_layer(key, value, lo):
            """A per-layer list: exactly one integer per layer."""
            if len(value) != n_layers:
                raise ValueError(f"{source}: '{arch}.{key}' has {len(value)} entries for "
                                 f"{n_layers} layers")
            return [_number(source, f"{arch}.{key}", v, lo) for v in value]

        n_layers = num("block_count")
        if n_layers > MAX_LAYERS:
            raise ValueError(f"{source}: block_count {n_layers} exceeds {MAX_LAYERS} (llama.cpp's "
                             "limit too)")
        dim = num("embedding_length")
        heads = get("attention.head_count")
        if isinstance(heads, (list, tuple)):  # per-layer (e.g. some hybrids): must be uniform
            heads = per_layer("attention.head_count", heads, 1)
            if len(set(heads)) != 1:
                raise ValueError(f"{source}: per-layer query head counts {sorted(set(heads))} "
                                 "are not supported")
            heads = heads[0]
        n_heads = _number(source, f"{arch}.attention.head_count", heads, 1)
        kv = get("attention.head_count_kv", n_heads)
        if isinstance(kv, (list, tuple)):  # 0 = a layer without attention (hybrids)
            n_kv = per_layer("attention.head_count_kv", kv, 0)
        else:
            n_kv = [_number(source, f"{arch}.attention.head_count_kv", kv, 1)] * n_layers
        if not any(n_kv):
            raise ValueError(f"{source}: '{arch}.attention.head_count_kv' gives no layer a kv head")
        for h in sorted(set(n_kv) - {0}):
            if n_heads % h:
                raise ValueError(f"{source}: {n_heads} query heads are not a multiple of {h} "
                                 "kv heads")
        head_dim = num("attention.key_length", 0, lo=0)
        if not head_dim:
            if dim % n_heads:
                raise ValueError(f"{source}: embedding_length {dim} is not a multiple of "
                                 f"head_count {n_heads} (and no attention.key_length is given)")
            head_dim = dim // n_heads
        head_dim_v = num("attention.value_length", 0, lo=0) or head_dim
        ffn = get("feed_forward_length", 0)
        ffn = 0 if isinstance(ffn, (list, tuple)) else _number(
            source, f"{arch}.feed_forward_length", ffn, 0)
        vocab = num("vocab_size", 0, lo=0) or meta.get("_n_vocab_tokens", 0)
        rope_dims = num("rope.dimension_count", 0, lo=0) or head_dim
        if rope_dims > head_dim or rope_dims % 2:
            raise ValueError(f"{source}: rope.dimension_count {rope_dims} must be even and at "
                             f"most the head size {head_dim}")
        rope_base = num("rope.freq_base", 10000.0, lo=0, kind=float)
        if not rope_base:
            raise ValueError(f"{source}: metadata '{arch}.rope.freq_base' must be positive")
        # RoPE scaling as llama.cpp reads it: "linear" divides positions by the factor;
        # Llama-3's and Phi-3's per-frequency factors are tensors (weights.py); YaRN and other
        # types are math nexvk does not implement, so they are refused
        kind = get("rope.scaling.type", "linear")
        if kind not in ("none", "linear"):
            raise ValueError(f"{source}: RoPE scaling '{str(kind)[:40]}' is not supported "
                             "(none, linear, and per-frequency factor tensors)")
        rope_scale = num("rope.scaling.factor", 0.0, lo=0, kind=float) if kind == "linear" else 0.0
        window = num("attention.sliding_window", 0, lo=0)
        swa_layers = cls._swa_layers(arch, meta, n_layers, window, source) if window else []
        return cls(
            arch=arch, n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=n_kv,
            head_dim=head_dim, head_dim_v=head_dim_v, ffn_dim=ffn, vocab_size=vocab,
            context_length=num("context_length", 0, lo=0),
            rope_base=rope_base,
            rope_base_swa=num("rope.freq_base_swa", 0.0, lo=0, kind=float),
            rope_dims=rope_dims, rope_scale=rope_scale or 1.0,
            rope_attn_factor=num("rope.scaling.attn_factor", 1.0, lo=0, kind=float) or 1.0,
            rope_orig_ctx=num("rope.scaling.original_context_length", 0, lo=0),
            rms_eps=num("attention.layer_norm_rms_epsilon", 1e-5, lo=0, kind=float),
            sliding_window=window, swa_layers=swa_layers,
            name=str(meta.get("general.name", "")))

    @staticmethod
    def _swa_layers(arch, meta, n_layers, window, source):
        """Which layers use the sliding window, following llama.cpp's per-arch rules."""
        pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
        if isinstance(pattern, (list, tuple)):  # explicit per-layer booleans (newer GGUFs)
            if len(pattern) > n_layers:
                raise ValueError(f"{source}: '{arch}.attention.sliding_window_pattern' has "
                                 f"{len(pattern)} entries for {n_layers} layers")
            return [i for i, p in enumerate(pattern) if p]
        if arch == "gemma2":      # alternating, even layers local
            return list(range(0, n_layers, 2))
        if arch == "gemma3":      # 5 local : 1 global
            return [i for i in range(n_layers) if (i + 1) % 6 != 0]
        if arch == "cohere2":     # 3 local : 1 global
            return [i for i in range(n_layers) if (i + 1) % 4 != 0]
        if arch == "phi3":        # llama.cpp disables Phi-3's window (its files set it wrongly)
            return []
        return list(range(n_layers))  # mistral-style: every layer windowed

    @classmethod
    def from_gguf(cls, g):
        """From an opened GGUF; the layer count must match the blk.N tensors it holds."""
        extra = {}
        if g.has("tokenizer.ggml.tokens"):
            extra["_n_vocab_tokens"] = g.array_len("tokenizer.ggml.tokens")
        cfg = cls.from_meta(_LazyMeta(g, extra), source=g.path.name)
        blocks = {int(m.group(1)) for name in g.tensors if (m := _BLK.match(name))}
        if blocks and blocks != set(range(cfg.n_layers)):
            have = (f"blocks 0..{max(blocks)}" if blocks == set(range(max(blocks) + 1))
                    else f"{len(blocks)} blocks numbered {min(blocks)}..{max(blocks)} with gaps")
            raise ValueError(f"{g.path.name}: block_count is {cfg.n_layers} but the file has "
                             f"tensors for {have}")
        return cfg


def check_tensors(cfg, g):
    """ValueError unless every tensor the model reads for cfg's family is in `g` with the
    shape cfg implies, checked on the tensor table before anything is dequantized: a
    block_count or head count that disagrees with the weights, or a norm of the wrong size,
    is named at once (weights.py checks the same shapes again as it loads)."""
    from nexvk.model.arch import Arch
    from nexvk.model.weights import model_refs, rope_factor_tensors
    a = Arch.from_config(cfg)
    want = {r.name: r.file_shape for r in model_refs(a, g)}
    for name, shape in want.items():
        t = g.tensors.get(name)
        if t is None:
            raise ValueError(f"{g.path.name}: missing tensor '{name}'")
        got = tuple(reversed(t.shape))  # numpy order, as weights.py holds it (GGUF: ne0 first)
        if got != shape:
            raise ValueError(f"{g.path.name}: tensor '{name}' has shape {got}, but the metadata "
                             f"implies {shape}")
    rope_factor_tensors(a, g)


class _LazyMeta(Mapping):
    """A GGUF's metadata as a read-only mapping that reads a value only when asked for.
    Config reads scalars and per-layer lists, so a longer array is refused before it is read."""

    def __init__(self, g, extra):
        self.g, self.extra = g, extra

    def __getitem__(self, key):
        if key in self.extra:
            return self.extra[key]
        if not self.g.has(key):
            raise KeyError(key)
        n = self.g.fields[key].count
        if n > MAX_LAYERS:
            raise ValueError(f"{self.g.path.name}: metadata '{key}' has {n} elements; at most "
                             f"{MAX_LAYERS} (one per layer) are expected")
        return self.g.meta(key)

    def __contains__(self, key):
        return key in self.extra or self.g.has(key)

    def __iter__(self):
        yield from self.extra
        yield from self.g.fields

    def __len__(self):
        return len(self.extra) + len(self.g.fields)


def _show(v):
    """A short description of a bad metadata value for error messages."""
    if isinstance(v, (list, tuple)):
        return f"an array of {len(v)} values"
    text = repr(v)
    return f"{type(v).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _number(source, key, v, lo, kind=int):
    """v as int (kind=int: a true integer, not bool or float) or float (finite), >= lo."""
    ok = (int, np.integer) + ((float, np.floating) if kind is float else ())
    if isinstance(v, bool) or not isinstance(v, ok) or (kind is float and not math.isfinite(v)):
        what = "an integer" if kind is int else "a finite number"
        raise ValueError(f"{source}: metadata '{key}' must be {what}, got {_show(v)}")
    if v < lo:
        raise ValueError(f"{source}: metadata '{key}' must be at least {lo}, got {v}")
    return kind(v)
