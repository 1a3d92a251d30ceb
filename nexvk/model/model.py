"""The Model: load a GGUF, hold its weights, tokenizer, KV cache and State, and generate.

`Model.load(path, ctx, cache=CacheConfig(...))` reads the file's Config, checks that its family is
supported (arch.py), loads the named weights (weights.py) and runs `forward.forward` through an
Ops backend: numpy (ops_numpy.py: float32 weights, each op executed at once), cpu
(nexvk/cpu: compiled kernels, weights as stored, each op executed at once) or vulkan
(ops_vulkan.py: weights in their GGUF formats on the device, each step shape recorded once
into one graph and replayed, one submission per step). The KV cache (its store per backend)
is the only thing that knows the KV formats; it keeps only the window on sliding-window layers.
"""
import time

import numpy as np

from nexvk.model.arch import MAX_BATCH, Arch
from nexvk.model.config import Config, check_tensors
from nexvk.model.forward import State, forward
from nexvk.model.gguf import open_gguf
from nexvk.model.sample import Sampler
from nexvk.model.tokenizer import Tokenizer

STEP_ROWS = (1, 16, 64, 256)  # device step shapes below the batch (rows per step)


class Model:
    """A loaded model with its own KV cache. Use `Model.load(...)`; `with_cache(...)` gives a
    second model that shares the weights but has its own cache and state."""

    def __init__(self, cfg, weights, tokenizer, ctx, k_type="f16", v_type="f16",
                 backend="numpy", device=None, sparse_v=None, seed=0, max_batch=MAX_BATCH,
                 cache_opts=None, *, cache=None, source=None, key_stats=None, threads=None):
        """cache: the CacheConfig of the model's KV cache (its backend must be the one the
        weights were loaded for); or, as before CacheConfig, the keyword arguments.
        source: the GGUF file, whose key statistics (nexvk.model.keystats) a hardened cache
        uses when its config gives none; key_stats: those (keystats.Moments), when known.
        A model without either fits them per sequence (KVCache's key_mean, key_scale).
        threads: the cpu backend's (default: every core; like llama.cpp's -t)."""
        from nexvk.cache import KVCache
        self.cfg, self.w, self.tokenizer = cfg, weights, tokenizer
        # the RoPE factor tensor for this context (Phi-3: long or short) in the Arch
        a = Arch.from_config(cfg)
        self.arch = a = a.with_rope_factors(weights.rope_factors(a, ctx))
        self.source, self._key_stats = source, key_stats
        self.config = c = self._with_stats(_config(cache, k_type, v_type, backend, device,
                                                   sparse_v, seed, max_batch, cache_opts), ctx)
        self.ctx = ctx
        B = min(c.max_batch, ctx)
        if c.backend != weights.backend:
            raise ValueError(f"these weights were loaded for the {weights.backend} backend, "
                             f"not {c.backend}: load the model with backend={c.backend!r}")
        self.cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, ctx, n_heads=a.n_heads,
                             window=list(a.window), config=c.replace(max_batch=B))
        b = backend_of(c.backend)
        self.threads = threads
        self.ops = b.get("ops")(self.cache, c.sparse_v,
                                **({"threads": threads} if b.threads else {}))
        if not b.device:
            self.state = State(a, B, self.ops)
            self._states = {}
        else:
            # step shapes, each a State and a graph recorded now: decode (1 row), prefill
            # chunks of B rows (last row's logits, or none); whole-window logits (ppl) on
            # first use, in chunks small enough for the logits buffer
            from nexvk.kernels import upload
            with self.ops.dev.lock:  # the staging buffer is released below: no other upload
                self.state = State(a, B, self.ops, logits_rows=1)
                self._states = {(1, 1): State(a, 1, self.ops, logits_rows=1), (B, 1): self.state}
                for T, mode in ((1, "last"), (B, "last"), (B, "none")):
                    self.ops.record(*self._prepare(T, mode)[::2])
                upload.release(self.ops.dev)  # the RoPE tables went up through the staging buffer
        self.pos = 0
        self.tokens = []  # the token ids in the cache, by position
        self.stats = {}

    def _with_stats(self, c, ctx):
        """The CacheConfig c with the model's key statistics over positions below ctx, where
        its cache transforms keys and c gives none."""
        spec = c.spec(self.arch.n_layers)
        if c.key_mean is not None or not any(map(spec.transformed, range(spec.n_layers))):
            return c
        if self._key_stats is None and self.source is not None:
            from nexvk.model.keystats import key_stats
            self._key_stats = key_stats(self.source, progress=True)
        if self._key_stats is None:
            return c
        mean, scale = self._key_stats.tables(ctx)
        return c.replace(key_mean=mean, key_scale=scale if c.key_scale is None else c.key_scale)

    # the cache configuration's parts, as attributes (read by callers before CacheConfig)
    k_type = property(lambda self: self.config.k_type)
    v_type = property(lambda self: self.config.v_type)
    backend = property(lambda self: self.config.backend)
    device = property(lambda self: self.config.device)
    sparse_v = property(lambda self: self.config.sparse_v)
    seed = property(lambda self: self.config.seed)

    @classmethod
    def load(cls, path=None, ctx=2048, k_type="f16", v_type="f16", backend="numpy",
             device=None, sparse_v=None, seed=0, progress=False, max_batch=MAX_BATCH,
             cache_opts=None, *, cache=None, threads=None):
        """Load a GGUF (the default SmolLM2 when path is None) with a ctx-token KV cache of
        the CacheConfig `cache` (its backend may be "auto"); or, as before CacheConfig, the
        keyword arguments. threads: the cpu backend's (default: every core)."""
        from nexvk.model.fetch import resolve_model
        c = _config(cache, k_type, v_type, backend, device, sparse_v, seed, max_batch,
                    cache_opts)
        if ctx <= 0:
            raise ValueError(f"context must be positive, got {ctx}")
        path = resolve_model(path, progress=progress)
        g = open_gguf(path)
        cfg = Config.from_gguf(g)
        Arch.from_config(cfg)  # an unsupported family fails before the slow steps
        # sizes the metadata may leave out come from the tensor table (GGUF lists ne0 first)
        if not cfg.vocab_size and g.has_tensor("token_embd.weight"):
            cfg.vocab_size = int(g.tensors["token_embd.weight"].shape[1])
        if not cfg.ffn_dim and g.has_tensor("blk.0.ffn_down.weight"):
            cfg.ffn_dim = int(g.tensors["blk.0.ffn_down.weight"].shape[0])
        check_tensors(cfg, g)
        tok = Tokenizer(g)
        if cfg.vocab_size != tok.n_vocab:  # as llama.cpp: ids past the token list decode to ""
            raise ValueError(f"{g.path.name}: the model has {cfg.vocab_size} token embeddings "
                             f"(vocab_size) but its tokenizer lists {tok.n_vocab} tokens")
        from nexvk.backends import resolve
        from nexvk.model.plan import kv_bytes
        numpy_bytes = 4 * sum(t.n_elements for t in g.tensors.values()) + \
            kv_bytes(cfg, ctx, c.replace(backend="numpy"), batch=c.max_batch)
        c = c.replace(backend=resolve(c.backend, c.device, numpy_bytes))
        t0 = time.perf_counter()
        w = load_weights(g, Arch.from_config(cfg), c.backend, c.device, progress)
        m = cls(cfg, w, tok, ctx, cache=c, source=path, threads=threads)
        m.stats["load_s"] = time.perf_counter() - t0
        return m

    def with_cache(self, k_type=None, v_type=None, cache=None, ctx=None, **kw):
        """A model sharing these weights with a fresh cache: the CacheConfig `cache`, or
        this model's with the fields given changed (k_type, v_type, sparse_v, seed,
        max_batch, and cache_opts: {plain, sinks, layer_types, key_mean, key_scale}, which
        replaces all five); threads (the cpu backend's) as given, else this model's."""
        threads = kw.pop("threads", self.threads)
        if cache is None:
            changes = {f: v for f, v in (("k_type", k_type), ("v_type", v_type)) if v}
            opts = kw.pop("cache_opts", None)
            if opts is not None:
                changes.update({"plain": False, "sinks": None, "layer_types": None,
                                "key_mean": None, "key_scale": None, **opts})
            cache = self.config.replace(**changes, **kw)
        elif k_type or v_type or kw:
            raise ValueError("give with_cache a CacheConfig or fields to change, not both")
        return Model(self.cfg, self.w, self.tokenizer, ctx or self.ctx, cache=cache,
                     source=self.source, key_stats=self._key_stats, threads=threads)

    def reset(self):
        self.cache.reset()
        self.pos = 0
        self.tokens = []

    def forward(self, tokens, pos, last_only=False):
        """Run tokens (T,) at positions pos..pos+T-1 after the pos tokens already cached.
        Returns logits (T, vocab) float32 (a view of the state; copy to keep), or (1, vocab)
        for the last token when last_only."""
        tokens = self.check_step(tokens, pos)
        T = tokens.size
        B = self._chunk(last_only)
        try:
            if T <= B:
                logits = self._step(tokens, pos, "last" if last_only else "all")
            else:  # more tokens than the state holds: run in slices of B
                logits = None if last_only else np.empty((T, self.arch.vocab_size), np.float32)
                for s in range(0, T, B):
                    last = s + B >= T
                    mode = ("last" if last else "none") if last_only else "all"
                    part = self._step(tokens[s:s + B], pos + s, mode)
                    if logits is not None:
                        logits[s:s + B] = part
                    elif last:
                        logits = part
        except BaseException:  # e.g. non-finite k/v from bad weights: no layer keeps a token
            self.cache.truncate(pos)
            raise
        self.pos = pos + T
        del self.tokens[pos:]
        self.tokens += tokens.tolist()
        return logits

    def check_step(self, tokens, pos):
        """tokens as an int64 array, after the checks of a step at pos (ValueError)."""
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
        if tokens.min() < 0 or tokens.max() >= self.arch.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.arch.vocab_size})")
        return tokens

    def _chunk(self, last_only):
        """Most tokens per step: B, or on the device fewer when every row's logits come back
        (one logits buffer must stay under the storage-buffer limit)."""
        if not backend_of(self.cache.backend).device or last_only:
            return self.state.B
        fit = self.cache.store.dev.max_buffer_bytes // (4 * self.arch.vocab_size)
        return max(1, min(self.state.B, fit))

    def _state_for(self, T, logits):
        """(key, State) of the step shape that runs T tokens with these logits."""
        if not backend_of(self.cache.backend).device:
            return None, self.state
        # the smallest step shape that holds T rows: a step's kernels cover all its rows, so
        # a 10-token prompt in a 512-row step would pay for 512 (each shape: one State and
        # one graph, made on first use)
        cap = self._chunk(logits != "all")
        rows = min(cap, next((r for r in STEP_ROWS if r >= T), cap))
        key = (rows, rows if logits == "all" and rows > 1 else 1)
        if key not in self._states:
            self._states[key] = State(self.arch, rows, self.ops, logits_rows=key[1])
        return key, self._states[key]

    def _prepare(self, T, logits):
        """(graph key, State, the step's forward) for T tokens with these logits."""
        if T == 1 and logits == "all":
            logits = "last"  # one row: the same step, so the same recorded graph
        key, st = self._state_for(T, logits)
        return (key, logits), st, lambda: forward(self.ops, self.arch, self.w, st, logits)

    def _step(self, tokens, pos, logits):
        """One forward call of at most B tokens; the logits rows it asked for (or None)."""
        key, st, record = self._prepare(len(tokens), logits)
        self.ops.set_step(st.tokens, tokens, pos)
        self.ops.execute(key, record)
        if logits == "none":
            return None
        out = self.ops.read(st.logits, 1 if logits == "last" else None)
        if not np.isfinite(out).all():  # on every backend: a device computes on with NaN/Inf
            raise ValueError(f"non-finite logits at positions {pos}..{pos + len(tokens) - 1}: "
                             "the model's weights make its activations overflow")
        return out

    # ---- generation --------------------------------------------------------------------
    def prefill(self, ids, reuse=True):
        """Run the prompt `ids` and return the last token's logits (vocab,). reuse: keep the
        cached tokens that begin it (from an earlier call, a chat turn or load_state) and run
        only the rest; stats["reused_tokens"] says how many were kept."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        keep = self._reusable(ids) if reuse else 0
        if keep:
            self.cache.truncate(keep)
            self.pos = keep
            del self.tokens[keep:]
        else:
            self.reset()
        logits = self.forward(ids[keep:], keep, last_only=True)[0]
        self.stats["reused_tokens"] = keep
        return logits

    def _reusable(self, ids):
        """Cached tokens that can stay for prompt `ids`: their common prefix, less the last
        prompt token (run again for its logits); 0 when rolling back to it is unsafe: on a
        sliding-window layer more than max_batch positions back (the ring has reused their
        slots), or to before the key transform was fitted (position `sinks`)."""
        n = 0
        for a, b in zip(self.tokens, ids[:-1]):
            if a != b:
                break
            n += 1
        drop = len(self.tokens) - n
        if drop and (n <= max(self.cache.layer_sinks) or
                     (any(self.cache.windows) and drop > self.cache.max_batch)):
            return 0
        return n

    def generate(self, prompt, n=64, temperature=0.0, top_k=0, top_p=1.0, seed=0, stream=None,
                 chat=False, bos=None, reuse=False, prompt_cache=None, stop=None):
        """Continue `prompt` by up to n tokens (stops early at an end-of-text token); n = -1
        generates until an end-of-text token or the end of the context. chat: the prompt is
        one user turn of the model's chat template. reuse: keep the cached tokens that begin
        the prompt (e.g. from load_state) and prefill only the rest. prompt_cache: a file
        path: start from its cache when it exists, write the prompt's cache there when not
        (nexvk.model.state.prefill_cached).
        Calls stream(text_piece) as text becomes available; stop() between tokens: True ends
        the reply there (the cache then holds every token processed, so a conversation can go
        on: `nexvk chat`'s Ctrl-C). Returns the generated text and fills self.stats with
        prefill/decode token counts, seconds and tokens/s."""
        tok = self.tokenizer
        ids = (tok.encode_chat([{"role": "user", "content": prompt}]) if chat
               else tok.encode(prompt, bos=bos))
        if not ids:
            if tok.bos_id is None:
                raise ValueError("empty prompt and the model has no BOS token")
            ids = [int(tok.bos_id)]
        n = self._budget(n, len(ids))
        return self._respond(ids, n, Sampler(temperature, top_k, top_p, seed), stream, reuse,
                             prompt_cache, stop)

    def chat(self, messages, n=-1, temperature=0.0, top_k=0, top_p=1.0, seed=0, stream=None,
             prompt_cache=None, stop=None):
        """The assistant's reply to `messages` ([{"role": "system"/"user"/"assistant",
        "content": str}, ...], rendered with the model's chat template), up to n tokens (-1:
        until its end-of-turn token or the end of the context). The tokens of earlier turns
        stay in the cache: only what is new since the last call is prefilled. When the
        conversation and a reply would not fit the context, the oldest turns after the system
        prompt are left out: stats["dropped"] says how many messages (from the first after
        any system message), and the rest is prefilled again. prompt_cache, stop: as
        generate's."""
        tok = self.tokenizer
        room = n if n >= 0 else max(1, self.ctx // 4)  # a reply of at least this many tokens
        first = 1 if messages and isinstance(messages[0], dict) and \
            messages[0].get("role") == "system" else 0
        msgs, dropped = list(messages), 0
        ids = tok.encode_chat(msgs)
        while len(ids) + room > self.ctx and len(msgs) - first > 1:
            k = 1  # drop the oldest turn: its message and any that follow up to a user's
            while len(msgs) - first - k > 1 and msgs[first + k].get("role") != "user":
                k += 1
            del msgs[first:first + k]
            dropped += k
            ids = tok.encode_chat(msgs)
        if len(ids) + room > self.ctx:
            raise ValueError(f"the conversation's last message takes {len(ids)} tokens; with "
                             f"{room} for the reply that exceeds the context of {self.ctx} "
                             "tokens (raise -c or shorten it)")
        n = self._budget(n, len(ids))
        self.stats["dropped"] = dropped  # set before the reply streams, for the caller to say
        return self._respond(ids, n, Sampler(temperature, top_k, top_p, seed), stream, True,
                             prompt_cache, stop)

    def _budget(self, n, prompt_len):
        """Tokens to generate after a prompt: n checked, -1 = the rest of the context."""
        if n == -1:
            return max(self.ctx - prompt_len, 0)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be the number of tokens to generate (>= 0, or -1 for "
                             f"until the end of the context), got {n!r}")
        if prompt_len + n > self.ctx:
            raise ValueError(f"prompt ({prompt_len} tokens) + {n} new tokens exceed the context "
                             f"of {self.ctx} tokens (raise -c or shorten the prompt)")
        return n

    def _respond(self, ids, n, sampler, stream, reuse, prompt_cache=None, stop=None):
        """Prefill ids, then sample up to n tokens, streaming text; stops at a stop id or when
        stop() says so."""
        tok = self.tokenizer
        t0 = time.perf_counter()
        if prompt_cache is None:
            logits = self.prefill(ids, reuse)
        else:
            from nexvk.model.state import prefill_cached
            logits = prefill_cached(self, ids, prompt_cache)
        t1 = time.perf_counter()
        out, text, n_dec = [], "", 0
        for i in range(n):
            if stop is not None and stop():
                break
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
        done = len(ids) - self.stats["reused_tokens"]
        self.stats.update(prompt_tokens=len(ids), prefill_tokens=done, prefill_s=t1 - t0,
                          prefill_tok_s=done / max(t1 - t0, 1e-9),
                          decode_tokens=n_dec, decode_s=t2 - t1,
                          decode_tok_s=n_dec / max(t2 - t1, 1e-9), generated=len(out))
        final = tok.decode(out)
        if stream and final != text:
            stream(final[len(text):])
        return final

    # ---- prompt caches -------------------------------------------------------------------
    def save_state(self, path, meta=None):
        """Write the cache of the tokens processed so far (codes, norms, sinks, key transform,
        token ids) to `path`, with this model's identity and cache format and `meta` (any
        JSON value) (nexvk/model/state.py). Returns the bytes written."""
        from nexvk.model.state import save
        return save(self, path, meta)

    def load_state(self, path):
        """Restore a file written by save_state (ValueError, cache unchanged, when it comes
        from another model or cache format, or is truncated or corrupt) and return its meta;
        a later prompt that starts with its tokens (generate(..., reuse=True), chat)
        prefills only the rest."""
        from nexvk.model.state import load
        return load(self, path)


def load_weights(g, a, backend, device=None, progress=False):
    """The model's Weights for a backend (nexvk.backends names each one's loader)."""
    w = backend_of(backend).get("weights")(g, a, device, progress)
    w.backend = backend
    return w


def backend_of(name):
    from nexvk.backends import backend
    return backend(name)


def _config(cache, k_type, v_type, backend, device, sparse_v, seed, max_batch, cache_opts):
    """The CacheConfig given, or one from the keyword arguments it replaces."""
    from nexvk.cache.config import CacheConfig
    legacy = (k_type, v_type, backend, device, sparse_v, seed, max_batch, cache_opts)
    if cache is None:
        return CacheConfig.of(k_type, v_type, cache_opts, backend=backend, device=device,
                              sparse_v=sparse_v, seed=seed, max_batch=max_batch)
    if not isinstance(cache, CacheConfig):
        raise ValueError(f"cache must be a CacheConfig, got {type(cache).__name__}")
    if legacy != ("f16", "f16", "numpy", None, None, 0, MAX_BATCH, None):
        raise ValueError("give the cache as cache=CacheConfig(...) or as keyword arguments, "
                         "not both")
    return cache
