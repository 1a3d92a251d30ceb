"""The model's tensors, loaded from the GGUF by name and checked against the Arch's shapes.

Every tensor keeps its GGUF name (`blk.{i}.attn_q.weight` is `w.layers[i].attn_q`) and stays a
separate matrix: a backend may fuse q/k/v or gate/up, the weights do not. The numpy backend
holds float32 copies, dequantized once through gguf.quants.dequantize (the specification of
every GGML type); matrices are (out_features, in_features) as GGUF stores them.
"""
import sys
from types import SimpleNamespace


def layer_shapes(a):
    """GGUF tensor name (without `blk.{i}.` and `.weight`) -> shape, for one layer of Arch a."""
    d, hd, q, kv, ffn = a.dim, a.head_dim, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.ffn_dim
    shapes = {"attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
              "attn_output": (d, q), "ffn_norm": (d,), "ffn_gate": (ffn, d), "ffn_up": (ffn, d),
              "ffn_down": (d, ffn)}
    if a.qk_norm:
        shapes.update(attn_q_norm=(hd,), attn_k_norm=(hd,))
    if a.post_norms:
        shapes.update(post_attention_norm=(d,), post_ffw_norm=(d,))
    return shapes


class Weights:
    """tok_embd (vocab, dim); output (vocab, dim), the same array when embeddings are tied;
    output_norm (dim,); layers[i]: a namespace of the layer's tensors by GGUF name."""

    backend = "numpy"  # "vulkan" when the tensors are device weights (model.load_weights)

    def __init__(self, tok_embd, output, output_norm, layers):
        self.tok_embd, self.output, self.output_norm, self.layers = tok_embd, output, output_norm, layers

    @property
    def nbytes(self):
        arrays = [self.tok_embd, self.output_norm] + [t for L in self.layers for t in vars(L).values()]
        if self.output is not self.tok_embd:
            arrays.append(self.output)
        return sum(a.nbytes for a in arrays)

    @classmethod
    def load(cls, g, a, progress=False, loader=None):
        """Every tensor Arch `a` needs from GGUF `g`; ValueError names a missing or misshapen one.
        loader(name, shape) makes each tensor (default: float32 arrays, dequantized); the
        Vulkan backend passes one that uploads the stored blocks (ops_vulkan.weight_loader)."""
        if any(n.endswith(".bias") for n in g.tensors):
            raise ValueError(f"{g.path.name}: bias tensors are not supported in '{a.name}'")
        shapes = layer_shapes(a)
        it = range(a.n_layers)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="loading weights" if loader else "dequantizing weights",
                      unit="layer", file=sys.stderr)

        def dequantized(name, shape):
            t = g.tensor(name)
            if t.shape != shape:
                raise ValueError(f"{g.path.name}: {name} has shape {t.shape}, metadata implies {shape}")
            return t
        get = loader or dequantized

        layers = [SimpleNamespace(**{n: get(f"blk.{i}.{n}.weight", s) for n, s in shapes.items()})
                  for i in it]
        emb = (a.vocab_size, a.dim)
        tok_embd = get("token_embd.weight", emb)
        output = get("output.weight", emb) if g.has_tensor("output.weight") else tok_embd
        return cls(tok_embd, output, get("output_norm.weight", (a.dim,)), layers)
