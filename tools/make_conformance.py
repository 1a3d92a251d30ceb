#!/usr/bin/env python3
"""Build the conformance fixtures under tests/conformance/: tiny random models per family made
with Hugging Face transformers, their reference logits computed by torch on the CPU, and
byte-level BPE tokenizer cases.

For each family (llama with Llama-3 RoPE scaling, qwen2, qwen3, phi3 with LongRoPE) a model
of a few layers with GQA, head_dim 64 or 128 and sizes that are not powers of two is drawn
with fixed seeds, every parameter (norms and biases included) re-drawn so nothing is at its
identity init. It is written as GGUF through the gguf package's writer and tensor-name map,
the way llama.cpp's convert_hf_to_gguf.py writes such a model (llama q/k rows permuted for
ggml's adjacent-pair RoPE, Llama-3's rope_freqs tensor, Phi-3's long/short factors and
attention factor), twice: F32, and with every matrix in Q8_0. The expected logits of the
Q8_0 file come from the same transformers model with its matrices replaced by their Q8_0
dequantization, so both files are held to the same tolerance.

<family>.npz holds, per case, the context the test loads the model with, the token ids and
transformers' logits for every position (one forward over the whole sequence), and the same
with every key and value rounded to float16 after RoPE (logits_f16kv_N), which is what an
f16 KV cache stores: nexvk with an f16 cache must match that far more closely.

Tokenizer fixtures (tokenizer_<pre>.gguf + .json): a 256-byte alphabet plus merges learnt
from a small text, and the ids of test strings as the reference computes them: each
pre-tokenizer's original regex (as in the model's tokenizer.json) applied with the `regex`
module, then a plain rank-ordered byte-level BPE written here, independent of nexvk's
`tokenizers`-based one.

Needs the `conformance` extra (torch, transformers): `pip install torch==2.13.0 transformers`.
Run: python tools/make_conformance.py   (rewrites tests/conformance/)
"""
import contextlib
import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np
import regex
import torch
import transformers
from gguf.quants import dequantize, quantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "conformance"
Q8 = gguf.GGMLQuantizationType.Q8_0

# family -> (transformers class, config, GGUF arch, tokenizer pre, cases [(ctx, n_tokens)])
FAMILIES = {
    # Llama-3.x: GQA 2:1, head_dim 64 with q wider than the model (128 vs 96), tied
    # embeddings, "llama3" RoPE scaling whose wavelength bands all occur at head_dim 64
    "llama3": ("LlamaForCausalLM", dict(
        vocab_size=277, hidden_size=96, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
        max_position_embeddings=256, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64)),
        "llama", "llama-bpe", [(64, 24)]),
    # Qwen2.5: q/k/v biases (drawn large, as Qwen's key biases are), GQA 4:1, head_dim 64
    # with q four times the model's width
    "qwen2": ("Qwen2ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-6,
        max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        "qwen2", "qwen2", [(64, 24)]),
    # Qwen3: per-head q/k RMSNorm, no biases, head_dim 128 with q wider than the model
    "qwen3": ("Qwen3ForCausalLM", dict(
        vocab_size=263, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128, rms_norm_eps=1e-6,
        max_position_embeddings=256, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        "qwen3", "qwen2", [(64, 24)]),
    # Phi-3: fused qkv and gate|up, LongRoPE trained at 16 positions and stretched to 64:
    # 24 tokens in a 64-token context use the long factors, 12 in a 16-token one the short
    "phi3": ("Phi3ForCausalLM", dict(
        vocab_size=290, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-5,
        max_position_embeddings=64, original_max_position_embeddings=16,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        sliding_window=None,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                             long_factor=None, short_factor=None)),
        "phi3", "gpt-2", [(64, 24), (16, 12)]),
}

# the original pre-tokenizer regexes of the models' tokenizer.json files (Qwen2, Llama-3)
REFERENCE_SPLIT = {
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "llama-bpe": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "gpt-2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
}

CORPUS = ("The quick brown fox jumps over the lazy dog. It's 2024 and we'll see 12345 items; "
          "they're here, I'd say. Don't STOP: \"quoted\" text -- and   spaces\n\nnew lines\r\n"
          "numbers 3.14159 and 1,000,000 in the year 1999. Äpfel und Öl, naïve café, "
          "東京 and привет мир! tabs\tand\ttabs. The the THE tHe.")
TOKENIZER_CASES = [
    "Hello world", "It's 2024, isn't it? I'D say we'LL", "12345 678 9", "  leading and trailing  ",
    "line one\nline two\r\n\n  indented", "naïve café Äpfel 東京 привет", "a--b...c!!!d ?? e",
    "tabs\tand\t\ttabs", "1,000,000 and 3.14159", "MiXeD CaSe 'S 'T 'Re",
]


def byte_alphabet():
    """GPT-2's byte -> printable character map (the byte-level BPE alphabet)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def words(text, pre):
    """Pre-tokenized pieces as byte-level symbol lists."""
    enc = byte_alphabet()
    return [[enc[b] for b in w.encode()] for w in regex.findall(REFERENCE_SPLIT[pre], text)]


def learn_merges(pre, n):
    """n BPE merges learnt greedily from CORPUS (most frequent adjacent pair first)."""
    ws, merges = words(CORPUS, pre), []
    while len(merges) < n:
        counts = {}
        for w in ws:
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + 1
        if not counts:
            raise SystemExit("corpus too small for the vocabulary")
        best = max(counts, key=lambda p: (counts[p], p))
        merges.append(best)
        ws = [merge_word(w, best) for w in ws]
    return merges


def merge_word(w, pair):
    out, i = [], 0
    while i < len(w):
        if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
            out.append(w[i] + w[i + 1])
            i += 2
        else:
            out.append(w[i])
            i += 1
    return out


def bpe_encode(text, pre, merges, vocab):
    """The reference: the original regex, then the lowest-ranked merge first, repeatedly."""
    rank = {p: i for i, p in enumerate(merges)}
    ids = []
    for w in words(text, pre):
        while len(w) > 1:
            pairs = [(rank.get(p, math.inf), j) for j, p in enumerate(zip(w, w[1:]))]
            r, j = min(pairs)
            if r == math.inf:
                break
            w = w[:j] + [w[j] + w[j + 1]] + w[j + 2:]
        ids += [vocab[s] for s in w]
    return ids


def vocab_for(pre, n_vocab):
    """(tokens, merges) of a byte-level vocabulary of n_vocab tokens."""
    alphabet = list(byte_alphabet().values())
    merges = learn_merges(pre, n_vocab - 256)
    return alphabet + [a + b for a, b in merges], merges


def add_tokenizer(w, pre, tokens, merges):
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)


def randomize(model, seed):
    """Redraw every parameter: matrices N(0, 0.08), norm weights 1 + N(0, 0.1), biases
    N(0, 0.5) (large, like Qwen's key biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("bias"):
                p.copy_(0.5 * r)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.08 * r)


def llama3_rope_freqs(rp, head_dim):
    """Per-frequency divisors of "llama3" RoPE scaling (what the converter stores)."""
    base, factor = rp["rope_theta"], rp["factor"]
    lo, hi, old = rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
    out = []
    for f in 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim):
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def permute(w, n_head):
    """llama q/k rows from HF's half-split pairs to ggml's adjacent pairs (the converter's)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(name, model, cfg, arch):
    """(GGUF name, float32 array) of every tensor, as the converter names and lays them out."""
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), cfg.num_hidden_layers)
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().numpy().astype(np.float32)
        if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            a = permute(a, cfg.num_attention_heads if "q_proj" in hf else cfg.num_key_value_heads)
        yield tmap.get_name(hf, try_suffixes=(".weight", ".bias")), a
    if name == "llama3":
        yield "rope_freqs.weight", llama3_rope_freqs(cfg.rope_parameters, cfg.head_dim)
    if name == "phi3":
        rp = cfg.rope_parameters
        yield "rope_factors_long.weight", np.array(rp["long_factor"], np.float32)
        yield "rope_factors_short.weight", np.array(rp["short_factor"], np.float32)


def write_gguf(path, name, model, cfg, arch, pre, quant):
    """The model as GGUF (F32, or every matrix Q8_0); returns {hf name: dequantized matrix}
    of what was quantized, for the reference to load."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"conformance-{name}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if name == "phi3":
        orig, ctx = cfg.original_max_position_embeddings, cfg.max_position_embeddings
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(ctx / orig) / math.log(orig)))
    tokens, merges = vocab_for(pre, cfg.vocab_size)
    add_tokenizer(w, pre, tokens, merges)
    deq = {}
    for gname, a in gguf_tensors(name, model, cfg, arch):
        if quant and a.ndim == 2:
            q = quantize(a, Q8)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=Q8)
            deq[gname] = dequantize(q, Q8)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return deq


def load_dequantized(model, cfg, arch, name, deq):
    """Put the Q8_0-dequantized matrices back into the transformers model (undoing the
    llama permutation), so its logits are the reference of the quantized file."""
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), cfg.num_hidden_layers)
    sd = model.state_dict()
    with torch.no_grad():
        for hf, t in sd.items():
            g = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
            if g not in deq:
                continue
            a = deq[g]
            if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg.num_attention_heads if "q_proj" in hf else cfg.num_key_value_heads
                n = a.shape[0]  # the inverse of permute: swap the same axes back
                a = a.reshape(heads, n // heads // 2, 2, -1).swapaxes(1, 2).reshape(a.shape)
            t.copy_(torch.from_numpy(np.ascontiguousarray(a)))
        if cfg.tie_word_embeddings:
            model.tie_weights()


def make_model(name, seed):
    cls, kw, arch, pre, cases = FAMILIES[name]
    kw = json.loads(json.dumps(kw))
    if name == "phi3":  # LongRoPE factors, rope_dims/2 of them, drawn in [1, 4] and [1, 1.5]
        g = np.random.default_rng(seed)
        half = kw["hidden_size"] // kw["num_attention_heads"] // 2
        kw["rope_parameters"]["long_factor"] = (1 + 3 * g.random(half)).round(4).tolist()
        kw["rope_parameters"]["short_factor"] = (1 + 0.5 * g.random(half)).round(4).tolist()
    cfg = getattr(transformers, cls.replace("ForCausalLM", "Config"))(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(cfg).eval()
    randomize(model, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model, cfg, arch, pre, cases


def reference_logits(model, cases, seed, vocab):
    g = np.random.default_rng(seed + 1)
    out = {}
    for i, (ctx, n) in enumerate(cases):
        ids = torch.tensor(g.integers(0, vocab, n)[None])
        with torch.no_grad():
            logits = model(ids).logits[0].float().numpy()
            with f16_keys_values(model):
                f16kv = model(ids).logits[0].float().numpy()
        out[f"ctx_{i}"], out[f"tokens_{i}"] = np.int64(ctx), ids[0].numpy()
        out[f"logits_{i}"], out[f"logits_f16kv_{i}"] = logits, f16kv
    return out


@contextlib.contextmanager
def f16_keys_values(model):
    """The model's eager attention with keys and values rounded to float16 (after RoPE)."""
    mod = sys.modules[type(model).__module__]
    orig = mod.eager_attention_forward

    def rounded(module, q, k, v, *args, **kw):
        return orig(module, q, k.half().float(), v.half().float(), *args, **kw)
    mod.eager_attention_forward = rounded
    try:
        yield
    finally:
        mod.eager_attention_forward = orig


def make_family(name, seed):
    model, cfg, arch, pre, cases = make_model(name, seed)
    f32 = reference_logits(model, cases, seed, cfg.vocab_size)
    write_gguf(OUT / f"{name}.f32.gguf", name, model, cfg, arch, pre, quant=False)
    np.savez(OUT / f"{name}.f32.npz", **f32)
    deq = write_gguf(OUT / f"{name}.q8_0.gguf", name, model, cfg, arch, pre, quant=True)
    load_dequantized(model, cfg, arch, name, deq)
    q8 = reference_logits(model, cases, seed, cfg.vocab_size)
    np.savez(OUT / f"{name}.q8_0.npz", **q8)
    spread = max(np.abs(f32[f"logits_{i}"]).max() for i in range(len(cases)))
    print(f"{name}: {arch}, max |logit| {spread:.3f}, q8_0 vs f32 max diff "
          f"{max(np.abs(f32[f'logits_{i}'] - q8[f'logits_{i}']).max() for i in range(len(cases))):.4f}")


def make_tokenizer(pre, n_vocab=330):
    tokens, merges = vocab_for(pre, n_vocab)
    vocab = {t: i for i, t in enumerate(tokens)}
    w = gguf.GGUFWriter(str(OUT / f"tokenizer_{pre}.gguf"), "llama")
    add_tokenizer(w, pre, tokens, merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cases = {text: bpe_encode(text, pre, merges, vocab) for text in TOKENIZER_CASES}
    (OUT / f"tokenizer_{pre}.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    print(f"tokenizer {pre}: {len(tokens)} tokens, {len(cases)} cases")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for i, name in enumerate(FAMILIES):
        make_family(name, 1000 + i)
    for pre in ("qwen2", "llama-bpe"):
        make_tokenizer(pre)


if __name__ == "__main__":
    main()
