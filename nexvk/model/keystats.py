"""Key statistics of a model: the mean and channel scale of the hardened cache's key transform
(nexvk.quant.transform), fitted once per model file and cached, so that every sequence of a
model -- a one-token chat turn, a decode, a whole prefill -- stores its keys the same way.

The tokens come from the model itself, so nothing is shipped: SEQUENCES sequences, each from
BOS (a random token without one), sampled one token at a time (top-k, fixed seed) in one
batch (nexvk.model.batch), are joined into TOKENS tokens after one BOS; a prefill of those
records each layer's keys and queries as the cache receives them (after RoPE), and the
statistics are their moments over every position but the first (a sink). They run on the
host (the numpy backend, an f16 cache), whatever backend the model then uses, and are cached
in <nexvk home>/keystats/ under the file's sha256; `nexvk calibrate --key-stats` recomputes
them (with -f TEXT: from that text instead, e.g. a sample of what the model will read).
docs/hardening.md has the measurements behind the recipe.
"""
import json
import sys
from pathlib import Path

import numpy as np

from nexvk.quant.transform import channel_scale

PARTS = ("n", "k", "k2", "q2")  # the sums a Moments holds (and its file)
RECIPE = {"version": 3, "tokens": 2048, "sequences": 8, "top_k": 40, "seed": 0, "block": 256}


class Moments:
    """Sums of k, k^2 and the grouped q^2 per (block of `block` positions, layer, KV head,
    channel), from cache appends. The keys a cache stores are after RoPE, whose slow pairs
    turn with the position, so their mean depends on the positions a cache holds: tables()
    counts the blocks below a capacity."""

    def __init__(self, n_layers, n_kv_heads, head_dim, n_blocks=1, block=1 << 30, skip=1):
        shape = (n_blocks, n_layers, n_kv_heads, head_dim)
        self.n = np.zeros(shape[:2])
        self.k, self.k2, self.q2 = (np.zeros(shape) for _ in range(3))
        self.block = block
        self.skip = skip  # positions before this one are not counted (sinks)

    def __call__(self, layer, pos0, k, q):
        """A KVCache observer: the keys k (T, HKV, d) and queries q (T, H, d) at pos0.."""
        T, hkv, d = k.shape
        q = q.reshape(T, hkv, q.shape[1] // hkv, d)
        a, last = max(0, self.skip - pos0), len(self.n) - 1
        while a < T:  # rows a..e-1 fall in block b
            b = min((pos0 + a) // self.block, last)
            e = T if b == last else min(T, (b + 1) * self.block - pos0)
            kb, qb = k[a:e].astype(np.float64), q[a:e].astype(np.float64)
            self.n[b, layer] += e - a
            self.k[b, layer] += kb.sum(0)
            self.k2[b, layer] += (kb * kb).sum(0)
            self.q2[b, layer] += (qb * qb).mean(axis=2).sum(0)
            a = e

    def tables(self, capacity=None):
        """(mean, scale), float16 (L, HKV, d) each, as KeyTransform.fit makes them, from the
        blocks of positions below `capacity` (default: all)."""
        nb = len(self.n) if capacity is None else max(1, min(len(self.n),
                                                            -(-capacity // self.block)))
        n = self.n[:nb].sum(0)[:, None, None]
        mean = self.k[:nb].sum(0) / n
        scale = channel_scale(self.q2[:nb].sum(0) / n,
                              np.maximum(self.k2[:nb].sum(0) / n - mean ** 2, 0.0))
        return mean.astype(np.float16), scale.astype(np.float16)


def calibration_tokens(model, n, sequences, top_k, seed, progress=False):
    """n token ids the model writes itself (see the module docstring); model: an f16 cache."""
    from nexvk.model.batch import Batch
    rng = np.random.default_rng(seed)
    vocab = model.arch.vocab_size
    k = min(top_k, vocab)
    bos = model.tokenizer.bos_id
    steps = -(-(n - 1) // sequences)            # tokens each sequence writes
    gen = model.with_cache(ctx=steps + 1)
    seqs = [gen.with_cache() for _ in range(sequences)]
    batch = Batch(gen, sequences)
    x = np.empty((steps + 1, sequences), np.int64)
    x[0] = rng.integers(0, vocab, sequences) if bos is None else bos
    bar = range(steps)
    if progress:
        from tqdm import tqdm
        bar = tqdm(bar, desc="key statistics: self-written text", unit="step",
                   file=sys.stderr)
    for i in bar:
        x[i + 1] = sample_top_k(batch.step(seqs, x[i]), rng, k)    # logits (sequences, vocab)
    return np.concatenate([x[:1, 0], x[1:].T.reshape(-1)])[:n]


def sample_top_k(logits, rng, k, temp=1.0):
    """One token per row of logits (rows, vocab): a sample of the top k at temperature temp
    (Gumbel-max, in float64)."""
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    z = np.take_along_axis(logits, top, 1).astype(np.float64) / temp + rng.gumbel(size=top.shape)
    return top[np.arange(len(top)), z.argmax(1)]


def compute(path, progress=False, text=None):
    """The Moments of the model file at `path` by RECIPE, on the host; with `text`, from BOS
    and that text's first tokens instead of tokens the model writes."""
    from nexvk.cache.config import CacheConfig
    from nexvk.model.model import Model
    r = RECIPE
    m = Model.load(path, ctx=r["tokens"], progress=progress, cache=CacheConfig("f16", "f16"))
    if text is None:
        x = calibration_tokens(m, r["tokens"], r["sequences"], r["top_k"], r["seed"], progress)
    else:
        x = np.array(m.tokenizer.encode(text, bos=True)[:r["tokens"]])
        if len(x) < 2 * r["block"]:
            raise ValueError(f"key statistics need at least {2 * r['block']} tokens of text, "
                             f"got {len(x)}")
    return record(m, x, -(-r["tokens"] // r["block"]), progress)


def record(m, x, n_blocks, progress=False):
    """The Moments (n_blocks blocks of RECIPE's) of the keys and queries the f16-cache model m
    stores for the token ids x, from position 0."""
    a, block = m.arch, RECIPE["block"]
    moments = Moments(a.n_layers, a.n_kv_heads, a.head_dim, n_blocks, block)
    m.cache.observer = moments
    m.reset()
    B = m.state.B
    starts = range(0, len(x), B)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="key statistics: keys and queries", unit="step",
                      file=sys.stderr)
    for s in starts:
        m.forward(x[s:s + B], s, last_only=True)
    return moments


def read(f):
    """The Moments saved in the open .npz f (as key_stats saves them)."""
    m = Moments(*f["k"].shape[1:], len(f["n"]), RECIPE["block"])
    for name in PARTS:
        getattr(m, name)[:] = f[name]
    return m


def cache_file(path):
    """Where the key statistics of the model file at `path` are cached: one file per model
    (its sha256) and recipe version, so that installs of different versions sharing a home
    keep theirs."""
    from nexvk.model.fetch import home, sha256
    return home() / "keystats" / f"{sha256(path)[:32]}-r{RECIPE['version']}.npz"


def key_stats(path, progress=False, refresh=False, text=None):
    """The Moments of the model file at `path` (tables(capacity) gives a cache's mean and
    scale): from the cache directory, or computed (and saved there) when missing, stale or
    refresh=True; text: compute them from this text (saved until the next refresh)."""
    out = cache_file(path)
    if out.is_file() and not refresh:
        try:
            with np.load(out) as f:
                saved = json.loads(str(f["recipe"]))
                if {k: v for k, v in saved.items() if k != "text"} == RECIPE:
                    return read(f)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: computed again below
    if progress:
        print(f"nexvk: key statistics of {Path(path).name} are computed once (the model writes "
              f"{RECIPE['tokens']} tokens and reads them back on the host; a few minutes on 2 "
              f"cores) and cached in {out.parent}", file=sys.stderr)
    m = compute(path, progress, text)
    recipe = RECIPE if text is None else dict(RECIPE, text=sha256_text(text))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, recipe=json.dumps(recipe), **{name: getattr(m, name) for name in PARTS})
    tmp.replace(out)
    return m


def sha256_text(text):
    import hashlib
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
