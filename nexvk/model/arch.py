"""What differs between the transformer families nexvk runs, as data read by forward.py.

The forward pass is written once (forward.py). A family (the GGUF `general.architecture`) adds
only the traits llama.cpp hard-codes for it beyond the metadata: FFN activation, RoPE style,
norm placement, q/k norm, q/k/v biases, fused tensors, embedding scale and the RoPE base of
sliding-window layers. `Arch` combines those with the file's Config into per-layer values
(RoPE base, frequency factors, window). Adding a family that uses the same building blocks is
one FAMILIES entry.
"""
import dataclasses
import math
from dataclasses import dataclass

MAX_BATCH = 512  # tokens per forward call (one prefill chunk); window rings hold window + 511


@dataclass(frozen=True)
class Family:
    act: str = "silu"             # FFN gate activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    rope_neox: bool = False       # NeoX half-split pairs (i, i + rot/2); else adjacent (2i, 2i+1)
    post_norms: bool = False      # RMSNorm of the attention and FFN outputs before each residual add
    qk_norm: bool = False         # RMSNorm of every q and k head (weights of head_dim) before RoPE
    embed_sqrt_dim: bool = False  # embeddings multiplied by sqrt(dim)
    rope_base_swa: float = 0.0    # RoPE base of sliding-window layers (0: the file's base)
    rope_unscaled_swa: bool = False  # sliding-window layers ignore the file's linear RoPE scaling
    qkv_bias: bool = False        # q, k and v projections add a bias (blk.N.attn_q.bias, ...)
    fused_qkv: bool = False       # q|k|v stored as one matrix blk.N.attn_qkv (rows q, then k, v)
    fused_gate_up: bool = False   # gate|up stored as one blk.N.ffn_up of 2 * ffn rows (gate first)


# NOTE: GGUF llama q/k weights are permuted by the converter so that RoPE rotates ADJACENT
# pairs (ggml's "normal" mode); the gemma converters keep the HF layout, rotated NeoX style.
FAMILIES = {
    "llama": Family(),
    "mistral": Family(),
    # llama.cpp src/models/gemma3.cpp and llama-model.cpp (LLM_ARCH_GEMMA3): GeGLU with tanh
    # GELU, post-attention and post-FFN norms, per-head q/k norms, embeddings * sqrt(n_embd),
    # NeoX RoPE, base 10000 on sliding-window layers. The stored norm weights already include
    # Gemma's +1 (convert_hf_to_gguf.py, norm_shift), so they are used as they are.
    "gemma3": Family(act="gelu_tanh", rope_neox=True, post_norms=True, qk_norm=True,
                     embed_sqrt_dim=True, rope_base_swa=10000.0, rope_unscaled_swa=True),
    # llama.cpp src/models/qwen2.cpp, qwen3.cpp, phi3.cpp; their converters keep the HF q/k
    # layout, so RoPE is NeoX style (LLAMA_ROPE_TYPE_NEOX for all three)
    "qwen2": Family(rope_neox=True, qkv_bias=True),
    "qwen3": Family(rope_neox=True, qk_norm=True),
    "phi3": Family(rope_neox=True, fused_qkv=True, fused_gate_up=True),
}


@dataclass(frozen=True)
class Arch:
    """Everything forward() reads about the model: sizes, traits, and per-layer RoPE base and
    sliding window (0 = the whole context)."""
    name: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    eps: float
    act: str
    rope_neox: bool
    rope_dims: int
    post_norms: bool
    qk_norm: bool
    qkv_bias: bool
    fused_qkv: bool
    fused_gate_up: bool
    embed_scale: float
    attn_scale: float
    rope_base: tuple              # (n_layers,) float
    rope_scale: tuple             # (n_layers,) linear scaling factor (positions / factor)
    rope_attn_factor: float       # cos and sin times it (Phi-3 LongRoPE's attention factor)
    rope_orig_ctx: int            # the training context the long/short factors switch at
    rope_factors: tuple           # (n_layers,) per-frequency divisors (rope_dims/2) or None
    window: tuple                 # (n_layers,) int, 0 = full context

    @classmethod
    def from_config(cls, cfg):
        """ValueError for a family or shape the forward pass does not cover."""
        fam = FAMILIES.get(cfg.arch)
        if fam is None:
            raise ValueError(f"architecture '{cfg.arch}' is not supported for running "
                             f"(supported: {', '.join(FAMILIES)}); `nexvk plan` still works for it")
        if not cfg.kv_heads_uniform:
            raise ValueError(f"per-layer kv head counts {cfg.n_kv_heads} are not supported "
                             f"for '{cfg.arch}'")
        if cfg.head_dim_v != cfg.head_dim:
            raise ValueError(f"value head size {cfg.head_dim_v} differs from key head size "
                             f"{cfg.head_dim}, which the cache does not support")
        if cfg.n_heads % cfg.n_kv_heads[0]:
            raise ValueError(f"{cfg.n_heads} query heads are not a multiple of "
                             f"{cfg.n_kv_heads[0]} kv heads")
        swa = set(cfg.swa_layers) if cfg.sliding_window else set()
        base_swa = cfg.rope_base_swa or fam.rope_base_swa or cfg.rope_base
        # NOTE: llama.cpp scales Gemma-3 27B queries by 1/sqrt(dim/n_heads), every other size by
        # 1/sqrt(head_dim) (LLM_TYPE_27B is the 62-layer model); llama's scale is 1/sqrt(head_dim).
        head_scale = (cfg.dim // cfg.n_heads if cfg.arch == "gemma3" and cfg.n_layers == 62
                      else cfg.head_dim)
        return cls(
            name=cfg.arch, n_layers=cfg.n_layers, dim=cfg.dim, n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads[0], head_dim=cfg.head_dim, ffn_dim=cfg.ffn_dim,
            vocab_size=cfg.vocab_size, eps=cfg.rms_eps, act=fam.act, rope_neox=fam.rope_neox,
            rope_dims=cfg.rope_dims, post_norms=fam.post_norms, qk_norm=fam.qk_norm,
            qkv_bias=fam.qkv_bias, fused_qkv=fam.fused_qkv, fused_gate_up=fam.fused_gate_up,
            embed_scale=math.sqrt(cfg.dim) if fam.embed_sqrt_dim else 1.0,
            attn_scale=1.0 / math.sqrt(head_scale),
            rope_base=tuple(base_swa if i in swa else cfg.rope_base for i in range(cfg.n_layers)),
            rope_scale=tuple(1.0 if i in swa and fam.rope_unscaled_swa else cfg.rope_scale
                             for i in range(cfg.n_layers)),
            rope_attn_factor=cfg.rope_attn_factor,
            rope_orig_ctx=cfg.rope_orig_ctx or cfg.context_length,
            rope_factors=(),
            window=tuple(cfg.sliding_window if i in swa else 0 for i in range(cfg.n_layers))
        ).with_rope_factors(None)

    def with_rope_factors(self, factors):
        """This Arch with the file's RoPE factor tensor (rope_dims/2 values, or None; chosen
        for the context by Weights.rope_factors) in every layer's frequency divisors."""
        return dataclasses.replace(self, rope_factors=self._factors(factors))

    def _factors(self, factors):
        """Per layer: the frequency divisors, the factor tensor times the layer's linear
        scale; None where both are absent (plain RoPE)."""
        out = []
        for scale in self.rope_scale:
            if factors is None and scale == 1.0:
                out.append(None)
            else:
                base = (1.0,) * (self.rope_dims // 2) if factors is None else factors
                out.append(tuple(float(f) * scale for f in base))
        return tuple(out)
