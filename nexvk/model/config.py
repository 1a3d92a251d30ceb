"""Model hyperparameters from GGUF metadata, for any architecture (llama.cpp key names).

`Config.from_meta(meta)` takes a plain dict {key: value} so it can be unit-tested without a
file; `Config.from_gguf(g)` feeds it from an opened GGUF. Only what the KV cache and the memory
plan need is required (layers, heads, head dims); the rest has defaults or is None.
"""
from dataclasses import dataclass, field


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
    rms_eps: float = 1e-5
    sliding_window: int = 0       # 0 = none
    swa_layers: list = field(default_factory=list)  # indices of sliding-window layers
    name: str = ""

    @property
    def kv_heads_uniform(self):
        return len(set(self.n_kv_heads)) == 1

    @classmethod
    def from_meta(cls, meta, source="model"):
        """Build from a {key: value} dict of GGUF metadata; ValueError names what is missing."""
        arch = meta.get("general.architecture")
        if not arch:
            raise ValueError(f"{source}: missing 'general.architecture'")

        def get(key, default=KeyError):
            k = f"{arch}.{key}"
            if k in meta:
                return meta[k]
            if default is KeyError:
                raise ValueError(f"{source}: architecture '{arch}' is missing metadata '{k}'")
            return default

        n_layers = int(get("block_count"))
        dim = int(get("embedding_length"))
        heads = get("attention.head_count")
        if isinstance(heads, (list, tuple)):  # per-layer (e.g. some hybrids): must be uniform
            if len(set(heads)) != 1:
                raise ValueError(f"{source}: per-layer query head counts {sorted(set(heads))} "
                                 "are not supported")
            heads = heads[0]
        n_heads = int(heads)
        kv = get("attention.head_count_kv", n_heads)
        n_kv = [int(h) for h in kv] if isinstance(kv, (list, tuple)) else [int(kv)] * n_layers
        if len(n_kv) != n_layers:
            raise ValueError(f"{source}: {len(n_kv)} kv head counts for {n_layers} layers")
        head_dim = int(get("attention.key_length", 0)) or dim // n_heads
        head_dim_v = int(get("attention.value_length", 0)) or head_dim
        ffn = get("feed_forward_length", 0)
        ffn = int(ffn) if not isinstance(ffn, (list, tuple)) else 0
        vocab = int(get("vocab_size", 0)) or int(meta.get("_n_vocab_tokens", 0))
        window = int(get("attention.sliding_window", 0) or 0)
        swa_layers = cls._swa_layers(arch, meta, n_layers, window) if window else []
        return cls(
            arch=arch, n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=n_kv,
            head_dim=head_dim, head_dim_v=head_dim_v, ffn_dim=ffn, vocab_size=vocab,
            context_length=int(get("context_length", 0)),
            rope_base=float(get("rope.freq_base", 10000.0)),
            rope_base_swa=float(get("rope.freq_base_swa", 0.0)),
            rope_dims=int(get("rope.dimension_count", 0)) or head_dim,
            rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            sliding_window=window, swa_layers=swa_layers,
            name=str(meta.get("general.name", "")))

    @staticmethod
    def _swa_layers(arch, meta, n_layers, window):
        """Which layers use the sliding window, following llama.cpp's per-arch rules."""
        pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
        if isinstance(pattern, (list, tuple)):  # explicit per-layer booleans (newer GGUFs)
            return [i for i, p in enumerate(pattern) if p]
        if arch == "gemma2":      # alternating, even layers local
            return list(range(0, n_layers, 2))
        if arch == "gemma3":      # 5 local : 1 global
            return [i for i in range(n_layers) if (i + 1) % 6 != 0]
        if arch == "cohere2":     # 3 local : 1 global
            return [i for i in range(n_layers) if (i + 1) % 4 != 0]
        return list(range(n_layers))  # mistral-style: every layer windowed

    @classmethod
    def from_gguf(cls, g):
        meta = {k: g.meta(k) for k in g.fields if not k.startswith("tokenizer.")}
        if g.has("tokenizer.ggml.tokens"):
            meta["_n_vocab_tokens"] = len(g.fields["tokenizer.ggml.tokens"].data)
        return cls.from_meta(meta, source=g.path.name)
