#!/usr/bin/env python3
"""Measure hardened-cache candidates by end-to-end KLD against an f16 cache (issue 9).

A fake-quantizing cache stands in for KVCache inside the model: every key and value goes
through nexvk's own codec (encode, decode) and attention is exact float32 over the decoded
rows, so each lever can be switched on alone. Configurations are spec strings:

    k=turbo3 v=turbo3 sinks=4 centre=first:128 scale=none knorm=1 vnorm=1 layers=0-1:q8_0/q8_0

  centre  none | first:M (mean of the first M non-sink keys of each layer's first append)
          | all (the whole first append) | calib (mean from the calibration text)
  scale   none | calib (s_i = (Q_i/K_i)^(1/4) from the calibration text, every layer)
          | calib:L,L,.. (only those layers) | first (from the first append's keys and the
          queries of the same rows, which the model passes to append)
  calib   wiki | code: the calibration text (far wikitext-2 windows, or nexvk's sources)
  sinkfmt f16 | q8_0: how the first `sinks` positions are stored
  knorm, vnorm  factor on the stored turbo norm (1 = norm-preserving, "mse" = gamma * c)
  decode  1: feed each window one token at a time after its first `decode` tokens
          (stats then come from the rows the first quantized append holds)

    python tools/harden_probe.py --chunks 4 "k=turbo3 v=turbo3" "k=turbo3 v=turbo3 sinks=4 centre=first:128"

f16 logits per window are cached in /tmp/nexvk-harden-base (~50 MB per window), so later
invocations only run the quantized model. Results are appended as JSON lines to --out.
"""
import argparse
import json
import time
from pathlib import Path

from types import SimpleNamespace

import numpy as np

import nexvk
import nexvk.cache
from nexvk.model.fetch import resolve_model
from nexvk.quant.formats import Turbo, make

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"
BASE_DIR = Path("/tmp/nexvk-harden-base")
CALIB_WINDOWS = (200, 201)  # windows of 512 far from the scored ones (0..15)


def parse_layers(s, n_layers):
    """'0-1:q8_0/q8_0,29:turbo4/turbo3' -> {layer: (k, v)}."""
    out = {}
    for part in filter(None, s.split(",")):
        rng, fmts = part.split(":")
        k, v = fmts.split("/")
        lo, _, hi = rng.partition("-")
        for layer in range(int(lo), int(hi or lo) + 1):
            out[layer] = (k, v)
    return out


class Spec(dict):
    DEFAULTS = dict(k="turbo3", v="turbo3", sinks="0", centre="none", scale="none", knorm="1",
                    vnorm="1", layers="", decode="0", sinkfmt="f16",
                    calib="wiki")

    @classmethod
    def parse(cls, text):
        s = cls(cls.DEFAULTS)
        for item in text.split():
            key, _, val = item.partition("=")
            if key not in cls.DEFAULTS:
                raise ValueError(f"unknown spec key {key!r}")
            s[key] = val
        return s

    def __str__(self):
        return " ".join(f"{k}={v}" for k, v in self.items() if v != self.DEFAULTS[k] or k in "kv")


def bits(spec, n_layers, d, ctx):
    """Bits per value with every sink, mean and scale amortised over ctx tokens."""
    per = parse_layers(spec["layers"], n_layers)
    tot = 0.0
    n_sink = int(spec["sinks"])
    for layer in range(n_layers):
        k, v = per.get(layer, (spec["k"], spec["v"]))
        bk, bv = make(k, d).bits_per_value, make(v, d).bits_per_value
        q = ctx - n_sink
        bs = make(spec["sinkfmt"], d).bits_per_value
        tot += (q * bk + n_sink * bs) / ctx + (q * bv + n_sink * bs) / ctx
    extra = 0.0
    if spec["centre"] != "none":
        extra += 16.0 / ctx  # one f16 mean vector per layer and head, per key channel
    if spec["scale"] != "none":
        extra += 16.0 / ctx
    return tot / (2 * n_layers) + extra / 2


def _scaled_norm_decode(fmt, codes, scales, mode):
    """Decode with the stored norm replaced: '1' keeps it, 'mse' uses gamma * c, else a factor."""
    x = fmt.decode_rows(codes, scales)
    if mode == "1" or not isinstance(fmt, Turbo):
        return x
    if mode == "mse":  # gamma*c = (gamma/||c||) * ||c|| * c_hat: multiply by ||c||
        from nexvk.quant import pack
        c = fmt.centroids[pack.unpack(codes, fmt.bits, fmt.head_dim)]
        return x * np.sqrt((c * c).sum(1, keepdims=True))
    return x * np.float32(mode)


class ProbeCache:
    """KVCache's interface (append, attention, length, reset) with fake quantization."""

    def __init__(self, spec, n_layers, hkv, d, capacity, seed=0, calib=None):
        self.probe, self.L, self.hkv, self.d, self.cap = spec, n_layers, hkv, d, capacity
        # what perplexity() reads of a KVCache: its spec and bits
        self.spec = SimpleNamespace(k_types=("probe",), v_types=("probe",),
                                    describe=lambda: str(spec))
        self.bits_per_value = bits(spec, n_layers, d, capacity)
        per = parse_layers(spec["layers"], n_layers)
        self.fmts = [tuple(make(f, d, seed) for f in per.get(i, (spec["k"], spec["v"])))
                     for i in range(n_layers)]
        self.K = np.zeros((n_layers, capacity, hkv, d), np.float32)
        self.V = np.zeros_like(self.K)
        self.sinks = int(spec["sinks"])
        self.calib = calib
        self.stats = {}
        self.reset()

    def reset(self):
        self._len = [0] * self.L
        self.mean = [None] * self.L
        self.scale = [None] * self.L
        self.raw_sink_k = [[] for _ in range(self.L)]

    def length(self, layer):
        return self._len[layer]

    def _transform(self, layer, k, pos):
        spec = self.probe
        c = spec["centre"]
        if self.mean[layer] is None:
            m = np.zeros((self.hkv, self.d), np.float32)
            if c == "calib":
                m = self.calib["kmean"][layer]
            elif c != "none":
                sel = k[pos >= self.sinks]
                if c.startswith("first:"):
                    sel = sel[:int(c[6:])]
                if len(sel) == 0:
                    return False
                m = sel.mean(0)
            self.mean[layer] = m.astype(np.float32)
            s = np.ones((self.hkv, self.d), np.float32)
            sc = spec["scale"]
            if sc == "first" and self.scale[layer] is not None:
                return True
            if sc.startswith("calib") and (sc == "calib" or str(layer) in sc[6:].split(",")):
                s = self.calib["scale"][layer]
            self.scale[layer] = s.astype(np.float32)
        return True

    def append(self, layer, k, v, q=None):
        n, T = self._len[layer], len(k)
        self._len[layer] = n + T
        if self.probe["scale"] == "first" and self.scale[layer] is None and n + T > self.sinks:
            self._fit_scale(layer, n, k, q)
        self._store(layer, n, k, v)

    def _fit_scale(self, layer, n, k, q):
        """s = (Q/K)^(1/4) from the first append's non-sink rows (queries group-averaged)."""
        sel = (n + np.arange(len(k))) >= self.sinks
        self._transform(layer, k, n + np.arange(len(k)))
        kc = k[sel] - self.mean[layer]
        T, H, d = q.shape
        Q2 = (q[sel].reshape(-1, self.hkv, H // self.hkv, d) ** 2).mean((0, 2))
        K2 = (kc ** 2).mean(0)
        s = (Q2 / np.maximum(K2, 1e-12)) ** 0.25
        self.scale[layer] = (s / np.exp(np.log(s).mean(-1, keepdims=True))).astype(np.float32)

    def _store(self, layer, n, k, v):
        T = len(k)
        pos = n + np.arange(T)
        kfmt, vfmt = self.fmts[layer]
        ready = self._transform(layer, k, pos)
        if ready:
            m, s = self.mean[layer], self.scale[layer]
            kt = (k - m) * s
            kq = self._fq(kfmt, kt, self.probe["knorm"])
            sink = pos < self.sinks
            kq[sink] = self._sink(kt[sink])
            self.K[layer, n:n + T] = kq / s + m
            # sinks that arrived before the transform was known: re-encode them now
            for p, raw in self.raw_sink_k[layer]:
                self.K[layer, p] = self._sink(((raw - m) * s)[None])[0] / s + m
            self.raw_sink_k[layer] = []
        else:  # only sink rows so far: exact, transform applied later
            for i in range(T):
                self.raw_sink_k[layer].append((n + i, k[i].copy()))
            self.K[layer, n:n + T] = self._sink(k)
        vq = self._fq(vfmt, v, self.probe["vnorm"])
        sink = pos < self.sinks
        vq[sink] = self._sink(v[sink])
        self.V[layer, n:n + T] = vq

    def _sink(self, x):
        if not len(x):
            return x
        return self._fq(make(self.probe["sinkfmt"], self.d), x, "1")

    @staticmethod
    def _fq(fmt, x, norm_mode):
        T, h, d = x.shape
        codes, scales = fmt.encode_rows(np.ascontiguousarray(x.reshape(-1, d), np.float32))
        return _scaled_norm_decode(fmt, codes, scales, norm_mode).reshape(T, h, d)

    def attention(self, layer, q, scale=None, sparse_v=None):
        T, H, d = q.shape
        L = self._len[layer]
        G = H // self.hkv
        k, v = self.K[layer, :L], self.V[layer, :L]
        qg = q.reshape(T, self.hkv, G, d)
        s = np.einsum("tgrd,lgd->tgrl", qg, k) * np.float32(1 / np.sqrt(d))
        pos0 = L - T
        vis = np.arange(L)[None, :] <= (pos0 + np.arange(T))[:, None]
        s = np.where(vis[:, None, None, :], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.einsum("tgrl,lgd->tgrd", p, v).reshape(T, H, d)


def calibrate(model, text, windows=CALIB_WINDOWS, ctx=512, n_first=None):
    """Per layer and KV head: key mean and (Q/K)^(1/4) channel scales from an f16 run."""
    cfg = model.cfg
    L, hkv, d, G = cfg.n_layers, cfg.n_kv_heads[0], cfg.head_dim, cfg.n_heads // cfg.n_kv_heads[0]
    ks, qs = [[] for _ in range(L)], [[] for _ in range(L)]
    m = model.with_cache("f16", "f16")
    orig_append, orig_attn = m.cache.append, m.cache.attention
    m.cache.append = lambda layer, k, v, **kw: (ks[layer].append(k[1:].copy()), orig_append(layer, k, v))[1]
    m.cache.attention = lambda layer, q, **kw: (qs[layer].append(q[1:].copy()), orig_attn(layer, q, **kw))[1]
    ids = np.asarray(model.tokenizer.encode(text, bos=False))
    for w in windows:
        win = ids[w * ctx:(w + 1) * ctx].copy()
        win[0] = model.tokenizer.bos_id
        m.reset()
        m.forward(win, 0, last_only=True)
    kmean, scale = [], []
    for layer in range(L):
        k = np.concatenate(ks[layer])                       # (N, hkv, d)
        q = np.concatenate(qs[layer]).reshape(-1, hkv, G, d)
        mu = k.mean(0)
        K2 = ((k - mu) ** 2).mean(0)                         # (hkv, d)
        Q2 = (q ** 2).mean((0, 2))
        s = (Q2 / np.maximum(K2, 1e-12)) ** 0.25
        s /= np.exp(np.log(s).mean(-1, keepdims=True))
        kmean.append(mu.astype(np.float32))
        scale.append(s.astype(np.float32))
    return {"kmean": kmean, "scale": scale}


def calib_text(name, wiki):
    """(text, windows): 'wiki' = two far windows of wikitext-2; 'code' = nexvk's own Python
    and Markdown sources (another domain), first two windows."""
    if name == "wiki":
        return wiki, CALIB_WINDOWS
    root = Path(__file__).resolve().parents[1]
    files = sorted(root.glob("nexvk/**/*.py")) + sorted(root.glob("docs/*.md"))
    return "\n".join(f.read_text() for f in files), (0, 1)


def load_base(model, text, ctx, chunks):
    """kld_base dict for perplexity(), filled from /tmp when the f16 logits were stored."""
    base = {}
    BASE_DIR.mkdir(exist_ok=True)
    files = [BASE_DIR / f"ctx{ctx}_w{i}.npy" for i in range(chunks)]
    if all(f.exists() for f in files):
        key = ("weights", id(model.w), "ctx", ctx, "bos", None, "text", hash(text))
        base["key"] = key
        for i, f in enumerate(files):
            base[i] = np.load(f)
    else:
        nexvk.perplexity(model, text, ctx=ctx, chunks=chunks, progress=False, kld_base=base)
        for i in range(chunks):
            np.save(files[i], base[i])
    return base


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--out", default="/tmp/nexvk-harden.jsonl")
    ap.add_argument("--bits-ctx", type=int, default=None, help="context for amortised bits (default ctx)")
    args = ap.parse_args()
    text = TEXT.read_text(encoding="utf-8")
    model = nexvk.Model.load(resolve_model(None), ctx=args.ctx)
    cfg = model.cfg
    base = load_base(model, text, args.ctx, args.chunks)
    calibs = {}
    real_kv = nexvk.cache.KVCache
    for spec_text in args.specs:
        spec = Spec.parse(spec_text)
        calib = None
        if "calib" in spec["centre"] + spec["scale"]:
            if spec["calib"] not in calibs:
                calibs[spec["calib"]] = calibrate(model, *calib_text(spec["calib"], text))
            calib = calibs[spec["calib"]]

        def factory(n_layers, n_kv_heads, head_dim, capacity, k_type="f16", v_type="f16", **kw):
            if k_type != "probe":
                return real_kv(n_layers, n_kv_heads, head_dim, capacity, k_type, v_type, **kw)
            return ProbeCache(spec, n_layers, n_kv_heads, head_dim, capacity, calib=calib)

        nexvk.cache.KVCache = factory
        t = time.perf_counter()
        try:
            dec = int(spec["decode"])
            if dec:
                r = decode_perplexity(model, text, args.ctx, args.chunks, dec, base)
            else:
                r = nexvk.perplexity(model, text, ctx=args.ctx, chunks=args.chunks, k_type="probe",
                                     v_type="probe", kld=True, kld_base=base, progress=False)
        finally:
            nexvk.cache.KVCache = real_kv
        b = bits(spec, cfg.n_layers, cfg.head_dim, args.bits_ctx or args.ctx)
        row = dict(spec=str(spec), chunks=args.chunks, ctx=args.ctx, bits=round(b, 4),
                   kld=round(r["kld_mean"], 5), kld_err=round(r["kld_err"], 5),
                   kld_p99=round(r["kld_p99"], 4), top1=round(r["top1_agree"], 2),
                   ppl=round(r["ppl"], 3), ppl_f16=round(r["ppl_f16"], 3),
                   seconds=round(time.perf_counter() - t))
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def decode_perplexity(model, text, ctx, chunks, first, base):
    """KLD when each window's first `first` tokens are one forward call and the rest are
    decoded one token at a time (as from an empty cache when first == 1)."""
    from nexvk.model.eval import _log_softmax
    m = model.with_cache("probe", "probe")
    ids = np.asarray(model.tokenizer.encode(text, bos=False))
    kl, agree = [], []
    half = ctx // 2
    for i in range(chunks):
        win = ids[i * ctx:(i + 1) * ctx].copy()
        win[0] = model.tokenizer.bos_id
        m.reset()
        logits = [m.forward(win[:first], 0).copy()]  # forward returns a view of its state
        for t in range(first, ctx):
            logits.append(m.forward(win[t:t + 1], t).copy())
        lp = _log_softmax(np.concatenate(logits)[half:ctx - 1])
        lr = _log_softmax(base[i])
        kl.append(np.sum(np.exp(lr) * (lr - lp), axis=1))
        agree.append(lr.argmax(1) == lp.argmax(1))
    kl = np.concatenate(kl)
    return dict(kld_mean=float(kl.mean()), kld_err=float(kl.std(ddof=1) / np.sqrt(kl.size)),
                kld_p99=float(np.percentile(kl, 99)), top1_agree=100 * float(np.concatenate(agree).mean()),
                ppl=float("nan"), ppl_f16=float("nan"))


if __name__ == "__main__":
    main()
