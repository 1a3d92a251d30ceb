"""The model's tensors, loaded from the GGUF by name and checked against the Arch's shapes.

Every tensor keeps its GGUF name (`blk.{i}.attn_q.weight` is `w.layers[i].attn_q`, its bias
`blk.{i}.attn_q.bias` is `attn_q_bias`) and stays a separate matrix: a backend may fuse q/k/v
or gate/up, the weights do not. A family that stores them fused (Phi-3's attn_qkv, its
ffn_up of gate|up) is read as row ranges of the stored tensor (a `Ref` with row0), so the
forward pass sees the same separate matrices. The numpy backend holds float32 copies,
dequantized once through gguf.quants.dequantize (the specification of every GGML type);
matrices are (out_features, in_features) as GGUF stores them.

RoPE frequency factors (Llama-3's `rope_freqs`, Phi-3's `rope_factors_long`/`_short`) are
float32 vectors kept on the host by every backend: they only shape the RoPE tables.
"""
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

ROPE_FACTORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


@dataclass(frozen=True)
class Ref:
    """Rows row0 .. row0 + shape[0] - 1 of GGUF tensor `name`, whose whole (numpy-order)
    shape is `stored` (None: the tensor is exactly `shape`)."""
    name: str
    shape: tuple
    row0: int = 0
    stored: tuple = None

    @property
    def key(self):
        """A unique label: the name, with the first row for a part of a fused tensor."""
        return self.name if self.stored is None else f"{self.name}@{self.row0}"

    @property
    def file_shape(self):
        return self.stored or self.shape


def layer_refs(a, i):
    """Attribute -> Ref of every tensor of layer i that forward() reads, for Arch a."""
    d, hd, q, kv, ffn = a.dim, a.head_dim, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.ffn_dim
    b = f"blk.{i}."
    qkv, gu = (q + 2 * kv, d), (2 * ffn, d)
    fq, fg = b + "attn_qkv.weight", b + "ffn_up.weight"
    refs = {"attn_norm": Ref(b + "attn_norm.weight", (d,))}
    refs.update(dict(attn_q=Ref(fq, (q, d), 0, qkv), attn_k=Ref(fq, (kv, d), q, qkv),
                     attn_v=Ref(fq, (kv, d), q + kv, qkv)) if a.fused_qkv else
                dict(attn_q=Ref(b + "attn_q.weight", (q, d)), attn_k=Ref(b + "attn_k.weight", (kv, d)),
                     attn_v=Ref(b + "attn_v.weight", (kv, d))))
    refs.update(attn_output=Ref(b + "attn_output.weight", (d, q)),
                ffn_norm=Ref(b + "ffn_norm.weight", (d,)))
    refs.update(dict(ffn_gate=Ref(fg, (ffn, d), 0, gu), ffn_up=Ref(fg, (ffn, d), ffn, gu))
                if a.fused_gate_up else
                dict(ffn_gate=Ref(b + "ffn_gate.weight", (ffn, d)), ffn_up=Ref(fg, (ffn, d))))
    refs["ffn_down"] = Ref(b + "ffn_down.weight", (d, ffn))
    if a.qkv_bias:
        refs.update(attn_q_bias=Ref(b + "attn_q.bias", (q,)), attn_k_bias=Ref(b + "attn_k.bias", (kv,)),
                    attn_v_bias=Ref(b + "attn_v.bias", (kv,)))
    if a.qk_norm:
        refs.update(attn_q_norm=Ref(b + "attn_q_norm.weight", (hd,)),
                    attn_k_norm=Ref(b + "attn_k_norm.weight", (hd,)))
    if a.post_norms:
        refs.update(post_attention_norm=Ref(b + "post_attention_norm.weight", (d,)),
                    post_ffw_norm=Ref(b + "post_ffw_norm.weight", (d,)))
    return refs


def model_refs(a, g):
    """Every Ref the model reads from GGUF g: the layers', then token_embd, output_norm and
    output (absent when the embeddings are tied). ValueError for a bias tensor the family
    does not add (math nexvk would otherwise silently leave out)."""
    refs = [r for i in range(a.n_layers) for r in layer_refs(a, i).values()]
    emb = (a.vocab_size, a.dim)
    refs += [Ref("token_embd.weight", emb), Ref("output_norm.weight", (a.dim,))]
    if g.has_tensor("output.weight"):
        refs.append(Ref("output.weight", emb))
    read = {r.name for r in refs}
    extra = sorted(n for n in g.tensors if n.endswith(".bias") and n not in read)
    if extra:
        raise ValueError(f"{g.path.name}: bias tensors are not supported in '{a.name}' "
                         f"({extra[0]}{' ...' if len(extra) > 1 else ''})")
    return refs


def rope_factor_tensors(a, g):
    """{GGUF name: float32 (rope_dims/2,)} of the RoPE factor tensors the file carries,
    each checked (finite, positive) before anything uses it."""
    out = {}
    for name in ROPE_FACTORS:
        if not g.has_tensor(name):
            continue
        t = np.asarray(g.tensor(name), np.float32).reshape(-1)
        if t.shape != (a.rope_dims // 2,) or not (np.isfinite(t).all() and (t > 0).all()):
            raise ValueError(f"{g.path.name}: {name} must hold {a.rope_dims // 2} positive "
                             f"finite factors (rope_dims / 2), got {t.size} values")
        out[name] = t
    return out


class Weights:
    """tok_embd (vocab, dim); output (vocab, dim), the same array when embeddings are tied;
    output_norm (dim,); layers[i]: a namespace of the layer's tensors by GGUF name;
    rope: {name: factors} of the file's RoPE factor tensors (host float32)."""

    backend = "numpy"  # "vulkan" when the tensors are device weights (model.load_weights)

    def __init__(self, tok_embd, output, output_norm, layers, rope=None):
        self.tok_embd, self.output, self.output_norm, self.layers = tok_embd, output, output_norm, layers
        self.rope = rope or {}

    @property
    def nbytes(self):
        arrays = [self.tok_embd, self.output_norm] + [t for L in self.layers for t in vars(L).values()]
        if self.output is not self.tok_embd:
            arrays.append(self.output)
        return sum(a.nbytes for a in arrays)

    def rope_factors(self, a, ctx):
        """The RoPE frequency factors for a context of ctx tokens, as llama.cpp picks them
        (llama_model::get_rope_factors): rope_freqs when present, else Phi-3's long factors
        when ctx exceeds the training context the file names, its short ones otherwise;
        None when the file has none."""
        r = self.rope
        if "rope_freqs.weight" in r:
            return r["rope_freqs.weight"]
        long = ctx > a.rope_orig_ctx
        return r.get("rope_factors_long.weight" if long else "rope_factors_short.weight")

    @classmethod
    def load(cls, g, a, progress=False, loader=None):
        """Every tensor Arch `a` needs from GGUF `g`; ValueError names a missing or misshapen one.
        loader(ref) makes each tensor (default: float32 arrays, dequantized); the Vulkan
        backend passes one that uploads the stored blocks (ops_vulkan.weight_loader)."""
        model_refs(a, g)  # refuses biases the family does not read
        it = range(a.n_layers)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="loading weights" if loader else "dequantizing weights",
                      unit="layer", file=sys.stderr)
        last = {}  # the last fused tensor dequantized, reused for its other parts

        def dequantized(ref):
            t = last.get(ref.name)
            if t is None:
                t = g.tensor(ref.name)
                if t.shape != ref.file_shape:
                    raise ValueError(f"{g.path.name}: {ref.name} has shape {t.shape}, metadata "
                                     f"implies {ref.file_shape}")
                last.clear()
                if ref.stored is not None:
                    last[ref.name] = t
            return t if ref.stored is None else t[ref.row0:ref.row0 + ref.shape[0]]
        get = loader or dequantized

        layers = [SimpleNamespace(**{n: get(r) for n, r in layer_refs(a, i).items()}) for i in it]
        emb = (a.vocab_size, a.dim)
        tok_embd = get(Ref("token_embd.weight", emb))
        output = get(Ref("output.weight", emb)) if g.has_tensor("output.weight") else tok_embd
        return cls(tok_embd, output, get(Ref("output_norm.weight", (a.dim,))), layers,
                   rope_factor_tensors(a, g))
