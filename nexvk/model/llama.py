"""The llama-family transformer in numpy float32, with attention through nexvk.KVCache.

Laid out like llama2.c's run.c: `Weights` (every tensor, dequantized once at load), `State`
(every activation buffer, allocated once for a batch of up to `max_batch` tokens), building
blocks (rms_norm, rope, swiglu), `forward(tokens, pos)` and `Model.generate`. The KV cache is
the only thing that knows the KV formats: the model applies RoPE to q and k, appends k/v and
asks the cache for attention over everything it holds.

# NOTE: GGUF llama q/k weights are permuted by the converter so that RoPE rotates ADJACENT
# pairs (x[2i], x[2i+1]) (ggml's "normal" mode); the NeoX half-split convention gives garbage.
"""
import sys
import time
from dataclasses import dataclass

import numpy as np

from nexvk.model.config import Config
from nexvk.model.gguf import open_gguf
from nexvk.model.sample import Sampler
from nexvk.model.tokenizer import Tokenizer


# ---- weights and state ---------------------------------------------------------------------
@dataclass
class Weights:
    """float32, C-contiguous; matrices are (out_features, in_features) as GGUF stores them."""
    tok_embd: np.ndarray     # (vocab, dim)
    output: np.ndarray       # (vocab, dim); the same array as tok_embd when embeddings are tied
    output_norm: np.ndarray  # (dim,)
    attn_norm: np.ndarray    # (n_layers, dim)
    wqkv: np.ndarray         # (n_layers, (n_heads + 2 * n_kv_heads) * head_dim, dim): q, k, v rows
    wo: np.ndarray           # (n_layers, dim, n_heads * head_dim)
    ffn_norm: np.ndarray     # (n_layers, dim)
    w13: np.ndarray          # (n_layers, 2 * ffn_dim, dim): gate rows then up rows
    w2: np.ndarray           # (n_layers, dim, ffn_dim)

    @property
    def nbytes(self):
        arrays = [v for k, v in vars(self).items() if not (k == "output" and v is self.tok_embd)]
        return sum(a.nbytes for a in arrays)

    @classmethod
    def load(cls, g, cfg, progress=False):
        L = cfg.n_layers
        names = [n for n in g.tensors if n.startswith("blk.")]
        it = range(L)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="dequantizing weights", unit="layer", file=sys.stderr)
        attn_norm, wqkv, wo, ffn_norm, w13, w2 = [], [], [], [], [], []
        for i in it:
            t = lambda s: g.tensor(f"blk.{i}.{s}.weight")  # noqa: E731
            attn_norm.append(t("attn_norm"))
            wqkv.append(np.concatenate([t("attn_q"), t("attn_k"), t("attn_v")]))
            wo.append(t("attn_output"))
            ffn_norm.append(t("ffn_norm"))
            w13.append(np.concatenate([t("ffn_gate"), t("ffn_up")]))
            w2.append(t("ffn_down"))
        if any(n.endswith(".bias") for n in names):
            raise ValueError(f"{g.path.name}: bias tensors are not supported in '{cfg.arch}'")
        tok_embd = g.tensor("token_embd.weight")
        output = g.tensor("output.weight") if g.has_tensor("output.weight") else tok_embd
        w = cls(tok_embd=tok_embd, output=output, output_norm=g.tensor("output_norm.weight"),
                attn_norm=np.stack(attn_norm), wqkv=np.stack(wqkv), wo=np.stack(wo),
                ffn_norm=np.stack(ffn_norm), w13=np.stack(w13), w2=np.stack(w2))
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads[0]
        want = {"wqkv": (L, (nh + 2 * nkv) * hd, cfg.dim), "wo": (L, cfg.dim, nh * hd),
                "tok_embd": (cfg.vocab_size or tok_embd.shape[0], cfg.dim)}
        for name, shape in want.items():
            if getattr(w, name).shape != shape:
                raise ValueError(f"{g.path.name}: {name} has shape {getattr(w, name).shape}, "
                                 f"metadata implies {shape}")
        return w


class State:
    """Activation buffers for up to `B` tokens per forward call, allocated once."""

    def __init__(self, cfg, B):
        nh, nkv, hd, d = cfg.n_heads, cfg.n_kv_heads[0], cfg.head_dim, cfg.dim
        ffn = cfg.ffn_dim
        self.B = B
        self.x = np.zeros((B, d), np.float32)                      # residual stream
        self.xb = np.zeros((B, d), np.float32)                     # normed input / branch out
        self.qkv = np.zeros((B, (nh + 2 * nkv) * hd), np.float32)  # fused projection
        self.q = np.zeros((B, nh, hd), np.float32)                 # post-RoPE queries
        self.k = np.zeros((B, nkv, hd), np.float32)                # post-RoPE keys
        self.v = np.zeros((B, nkv, hd), np.float32)
        self.att = np.zeros((B, nh * hd), np.float32)              # attention output
        self.h13 = np.zeros((B, 2 * ffn), np.float32)              # gate | up
        self.h = np.zeros((B, ffn), np.float32)                    # silu(gate) * up
        self.logits = np.zeros((B, cfg.vocab_size), np.float32)


# ---- building blocks -----------------------------------------------------------------------
def linear(x, w, out):
    """out = x @ w.T for x (T, in) and w (out, in). NOTE: for one token OpenBLAS is ~7x faster
    as a matrix-vector product than as a 1-row matrix product, and decode is all 1-row."""
    if x.shape[0] == 1:
        np.matmul(w, x[0], out=out[0])
    else:
        np.matmul(x, w.T, out=out)


def rms_norm(x, w, eps, out):
    """out = x / sqrt(mean(x^2) + eps) * w;  x, out: (T, dim)."""
    ms = np.einsum("td,td->t", x, x)[:, None] / x.shape[1]  # (T, 1)
    np.multiply(x, 1.0 / np.sqrt(ms + eps, dtype=np.float32), out=out)
    out *= w


def rope_tables(ctx, rot, base):
    """cos, sin: (ctx, rot/2) float32 for positions 0..ctx-1, theta_i = base^(-2i/rot)."""
    inv = base ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)  # (rot/2,)
    ang = np.arange(ctx, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope(x, cos, sin, rot):
    """Rotate adjacent pairs (x[2i], x[2i+1]) of the first `rot` dims in place.
    x: (T, heads, head_dim); cos, sin: (T, rot/2)."""
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, rot/2)
    x0 = x[..., 0:rot:2].copy()              # (T, heads, rot/2)
    x1 = x[..., 1:rot:2]
    x[..., 0:rot:2] = x0 * c - x1 * s
    x[..., 1:rot:2] = x0 * s + x1 * c


def swiglu(h13, ffn, out):
    """out = silu(gate) * up;  h13: (T, 2*ffn) gate | up, out: (T, ffn)."""
    gate, up = h13[:, :ffn], h13[:, ffn:]
    np.negative(gate, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.divide(gate, out, out=out)
    out *= up


# ---- model ---------------------------------------------------------------------------------
class Model:
    """A loaded model with its own KV cache. Use `Model.load(...)`; `with_cache(...)` gives a
    second model that shares the weights but has its own cache and state. cache_opts: more
    KVCache keywords (plain, sinks, layer_types, key_mean, key_scale)."""

    def __init__(self, cfg, weights, tokenizer, ctx, k_type="f16", v_type="f16",
                 backend="numpy", device=None, sparse_v=None, seed=0, max_batch=512,
                 cache_opts=None):
        from nexvk.cache import KVCache
        self.cfg, self.w, self.tokenizer = cfg, weights, tokenizer
        self.ctx, self.k_type, self.v_type = ctx, k_type, v_type
        self.backend, self.device, self.sparse_v, self.seed = backend, device, sparse_v, seed
        self.cache_opts = dict(cache_opts or {})
        self.state = State(cfg, min(max_batch, ctx))
        self.cache = KVCache(cfg.n_layers, cfg.n_kv_heads[0], cfg.head_dim, ctx,
                             k_type=k_type, v_type=v_type, backend=backend, device=device,
                             seed=seed, n_heads=cfg.n_heads, max_batch=self.state.B,
                             **self.cache_opts)
        self.cos, self.sin = rope_tables(ctx, cfg.rope_dims, cfg.rope_base)  # (ctx, rot/2)
        self.pos = 0
        self.stats = {}

    @classmethod
    def load(cls, path=None, ctx=2048, k_type="f16", v_type="f16", backend="numpy",
             device=None, sparse_v=None, seed=0, progress=False, max_batch=512, cache_opts=None):
        """Load a GGUF (the default SmolLM2 when path is None) with a ctx-token KV cache."""
        from nexvk.model.fetch import resolve_model
        g = open_gguf(resolve_model(path, progress=progress))
        cfg = Config.from_gguf(g)
        cfg.check_supported(ctx)
        if ctx <= 0:
            raise ValueError(f"context must be positive, got {ctx}")
        tok = Tokenizer(g)
        t0 = time.perf_counter()
        w = Weights.load(g, cfg, progress=progress)
        if not cfg.vocab_size:
            cfg.vocab_size = w.output.shape[0]
        if not cfg.ffn_dim:
            cfg.ffn_dim = w.w2.shape[2]
        m = cls(cfg, w, tok, ctx, k_type, v_type, backend, device, sparse_v, seed, max_batch,
                cache_opts)
        m.stats["load_s"] = time.perf_counter() - t0
        return m

    def with_cache(self, k_type=None, v_type=None, **kw):
        """A model sharing these weights with a fresh cache of other formats."""
        args = dict(ctx=self.ctx, k_type=k_type or self.k_type, v_type=v_type or self.v_type,
                    backend=self.backend, device=self.device, sparse_v=self.sparse_v,
                    seed=self.seed, max_batch=self.state.B, cache_opts=self.cache_opts)
        args.update(kw)
        return Model(self.cfg, self.w, self.tokenizer, **args)

    def reset(self):
        self.cache.reset()
        self.pos = 0

    def forward(self, tokens, pos, last_only=False):
        """Run tokens (T,) at positions pos..pos+T-1 after the pos tokens already cached.
        Returns logits (T, vocab) float32 (a view of the state; copy to keep), or (1, vocab)
        for the last token when last_only."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = tokens.size
        if T == 0:
            raise ValueError("forward needs at least one token")
        if pos != self.cache.length(0):
            raise ValueError(f"forward at position {pos}, but the cache holds "
                             f"{self.cache.length(0)} tokens (call reset() to start over)")
        if pos + T > self.ctx:
            raise ValueError(f"{pos + T} tokens exceed the context of {self.ctx} "
                             "(load the model with a larger ctx, e.g. -c)")
        if tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size})")
        B = self.state.B
        if T <= B:
            logits = self._forward(tokens, pos)
        else:  # more tokens than the state holds: run in slices of B
            logits = None if last_only else np.empty((T, self.cfg.vocab_size), np.float32)
            for s in range(0, T, B):
                last = s + B >= T
                part = self._forward(tokens[s:s + B], pos + s, skip_logits=last_only and not last)
                if logits is not None:
                    logits[s:s + B] = part
                elif last:
                    logits = part
        self.pos = pos + T
        return logits[-1:] if last_only else logits

    def _forward(self, tokens, pos, skip_logits=False):
        cfg, w, s = self.cfg, self.w, self.state
        T = tokens.size
        nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads[0], cfg.head_dim
        x, xb, qkv = s.x[:T], s.xb[:T], s.qkv[:T]          # (T, dim), (T, dim), (T, qkv)
        q, k, v, att = s.q[:T], s.k[:T], s.v[:T], s.att[:T]
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]  # (T, rot/2)
        np.take(w.tok_embd, tokens, axis=0, out=x)
        for layer in range(cfg.n_layers):
            # attention
            rms_norm(x, w.attn_norm[layer], cfg.rms_eps, out=xb)
            linear(xb, w.wqkv[layer], qkv)
            q[:] = qkv[:, :nh * hd].reshape(T, nh, hd)
            k[:] = qkv[:, nh * hd:(nh + nkv) * hd].reshape(T, nkv, hd)
            v[:] = qkv[:, (nh + nkv) * hd:].reshape(T, nkv, hd)
            rope(q, cos, sin, cfg.rope_dims)
            rope(k, cos, sin, cfg.rope_dims)
            self.cache.append(layer, k, v, q=q)  # q: the cache fits its key scale on it
            o = self.cache.attention(layer, q, sparse_v=self.sparse_v)  # (T, nh, hd)
            att[:] = o.reshape(T, nh * hd)
            linear(att, w.wo[layer], xb)
            x += xb
            # feed-forward
            rms_norm(x, w.ffn_norm[layer], cfg.rms_eps, out=xb)
            linear(xb, w.w13[layer], s.h13[:T])
            swiglu(s.h13[:T], cfg.ffn_dim, out=s.h[:T])
            linear(s.h[:T], w.w2[layer], xb)
            x += xb
        if skip_logits:
            return None
        rms_norm(x, w.output_norm, cfg.rms_eps, out=xb)
        linear(xb, w.output, s.logits[:T])
        return s.logits[:T]

    # ---- generation --------------------------------------------------------------------
    def generate(self, prompt, n=64, temperature=0.0, top_k=0, top_p=1.0, seed=0, stream=None,
                 chat=False, bos=None):
        """Continue `prompt` by up to n tokens (stops early at an end-of-text token).
        Calls stream(text_piece) as text becomes available; returns the generated text and
        fills self.stats with prefill/decode token counts, seconds and tokens/s."""
        tok = self.tokenizer
        if chat:
            prompt = tok.chat(prompt)
        ids = tok.encode(prompt, bos=bos)
        if not ids:
            if tok.bos_id is None:
                raise ValueError("empty prompt and the model has no BOS token")
            ids = [int(tok.bos_id)]
        if len(ids) + n > self.ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) + {n} new tokens exceed the context "
                             f"of {self.ctx} tokens (raise -c or shorten the prompt)")
        sampler = Sampler(temperature, top_k, top_p, seed)
        self.reset()
        t0 = time.perf_counter()
        logits = self.forward(ids, 0, last_only=True)[0]
        t1 = time.perf_counter()
        out, text, n_dec = [], "", 0
        for i in range(n):
            nxt = sampler(logits)
            if nxt in tok.stop_ids:
                break
            out.append(nxt)
            new = tok.decode(out)
            if not new.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                if stream:
                    stream(new[len(text):])
                text = new
            if i + 1 < n:
                logits = self.forward([nxt], self.pos)[0]
                n_dec += 1
        t2 = time.perf_counter()
        self.stats.update(prompt_tokens=len(ids), prefill_s=t1 - t0,
                          prefill_tok_s=len(ids) / max(t1 - t0, 1e-9),
                          decode_tokens=n_dec, decode_s=t2 - t1,
                          decode_tok_s=n_dec / max(t2 - t1, 1e-9), generated=len(out))
        final = tok.decode(out)
        if stream and final != text:
            stream(final[len(text):])
        return final
