"""Key statistics of a model: the mean and channel scale of the hardened cache's key transform
(nexvk.quant.transform), fitted once per model file and cached, so that every sequence of a
model -- a one-token chat turn, a decode, a whole prefill -- stores its keys the same way.

The tokens come from the model itself, so nothing is shipped: from BOS and random tokens,
ROUNDS passes each replace every token by a sample of the model's next-token distribution at
the position before it (top-k, fixed seed); after the last pass a prefill of those TOKENS
tokens records each layer's keys and queries as the cache receives them (after RoPE), and
the statistics are their moments over every position but the first (a sink). They run on the
host (the numpy backend, an f16 cache), whatever backend the model then uses, and are cached
in <nexvk home>/keystats/ under the file's sha256; `nexvk calibrate --key-stats` recomputes
them. docs/hardening.md has the measurements behind the recipe.
"""
import json

import numpy as np

from nexvk.quant.transform import channel_scale

RECIPE = {"version": 1, "tokens": 512, "rounds": 2, "top_k": 40, "seed": 0}


class Moments:
    """Sums of k, k^2 and the grouped q^2 per (layer, KV head, channel), from cache appends."""

    def __init__(self, n_layers, n_kv_heads, head_dim, skip=1):
        shape = (n_layers, n_kv_heads, head_dim)
        self.n = np.zeros(n_layers)
        self.k, self.k2, self.q2 = (np.zeros(shape) for _ in range(3))
        self.skip = skip  # positions before this one are not counted (sinks)

    def __call__(self, layer, pos0, k, q):
        """A KVCache observer: the keys k (T, HKV, d) and queries q (T, H, d) at pos0.."""
        s = max(0, self.skip - pos0)
        k = k[s:].astype(np.float64)
        T, hkv, d = k.shape
        self.n[layer] += T
        self.k[layer] += k.sum(0)
        self.k2[layer] += (k * k).sum(0)
        q = q[s:].astype(np.float64).reshape(T, hkv, q.shape[1] // hkv, d)
        self.q2[layer] += (q * q).mean(axis=2).sum(0)

    def tables(self):
        """(mean, scale), float16 (L, HKV, d) each, as KeyTransform.fit makes them."""
        n = self.n[:, None, None]
        mean = self.k / n
        scale = channel_scale(self.q2 / n, np.maximum(self.k2 / n - mean ** 2, 0.0))
        return mean.astype(np.float16), scale.astype(np.float16)


def calibration_tokens(model, n, rounds, top_k, seed):
    """n token ids the model writes itself (see the module docstring)."""
    rng = np.random.default_rng(seed)
    vocab = model.arch.vocab_size
    bos = model.tokenizer.bos_id
    x = rng.integers(0, vocab, n)
    x[0] = 0 if bos is None else bos
    for _ in range(rounds):
        model.reset()
        logits = model.forward(x, 0)                               # (n, vocab)
        k = min(top_k, vocab)
        for r in range(0, n - 1, 32):  # in blocks of rows: a vocab of 262k is 1 MiB a row
            block = logits[r:min(r + 32, n - 1)]
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            z = np.take_along_axis(block, top, 1) + rng.gumbel(size=top.shape)
            x[r + 1:r + 1 + len(block)] = top[np.arange(len(block)), z.argmax(1)]
    return x


def compute(path, progress=False):
    """(mean, scale) of the model file at `path` by RECIPE, on the host."""
    from nexvk.cache.config import CacheConfig
    from nexvk.model.model import Model
    r = RECIPE
    m = Model.load(path, ctx=r["tokens"], progress=progress,
                   cache=CacheConfig("f16", "f16", max_batch=r["tokens"]))
    x = calibration_tokens(m, r["tokens"], r["rounds"], r["top_k"], r["seed"])
    a = m.arch
    moments = Moments(a.n_layers, a.n_kv_heads, a.head_dim)
    m.cache.observer = moments
    m.reset()
    m.forward(x, 0, last_only=True)
    return moments.tables()


def key_stats(path, progress=False, refresh=False):
    """(mean, scale) of the model file at `path`: from the cache directory, or computed (and
    saved there) when missing, stale or refresh=True."""
    from nexvk.model.fetch import home, sha256
    digest = sha256(path)
    out = home() / "keystats" / f"{digest[:32]}.npz"
    if out.is_file() and not refresh:
        try:
            with np.load(out) as f:
                if json.loads(str(f["recipe"])) == RECIPE:
                    return f["mean"], f["scale"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable: computed again below
    mean, scale = compute(path, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, mean=mean, scale=scale, recipe=json.dumps(RECIPE))
    tmp.replace(out)
    return mean, scale
