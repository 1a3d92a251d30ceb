#!/usr/bin/env python3
"""Which calibration text gives the best key statistics (issue 15; docs/hardening.md): make
tokens, fit moments on them, and score the tables they give against a per-window fit.

    python tools/keystats_sweep.py gen bos /tmp/bos.npy --n 8 --len 256   # from BOS (recipe 3)
    python tools/keystats_sweep.py gen chat /tmp/chat.npy                 # answers to PROMPTS
    python tools/keystats_sweep.py stats /tmp/bos.npy /tmp/bos.npz        # moments, f16 prefill
    python tools/keystats_sweep.py eval sequence /tmp/bos.npz --texts head,mid,gpl

eval: turbo3 KLD vs f16 over 4 x 512 windows of each text: `head` the start of wikitext-2
test (the README's windows), `mid` its second half (held out), `gpl` the GPL-3 text of
/usr/share/common-licenses (a different kind of text); `sequence`: fitted per window, as
before issue 15. A .npz from <nexvk home>/keystats/ (e.g. recipe 2's, made by an older
nexvk) can be scored as it is. Run from the repo
root with PYTHONPATH=. (a script's own folder comes first on sys.path).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import nexvk
from nexvk.model import keystats
from nexvk.model.batch import Batch
from nexvk.model.fetch import resolve_model
from nexvk.model.model import Model

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"
GPL = Path("/usr/share/common-licenses/GPL-3")

PROMPTS = [
    "Write a short encyclopedia article about the history of a port city.",
    "Explain how photosynthesis works, step by step.",
    "Tell me a story about a sailor caught in a storm.",
    "Describe the rules and history of a popular sport.",
    "Write a short biography of a scientist of the nineteenth century.",
    "What causes inflation, and how do central banks respond to it?",
    "Describe the geography and climate of a large mountain range.",
    "Summarize the plot of a classic novel and discuss its themes.",
]


def gen_ar(m, prompts, per_seq, rng, k, temp, stop_at_eos):
    """Each prompt (token list) continued by up to per_seq sampled tokens, in one batch."""
    seqs = [m.with_cache(ctx=m.ctx) for _ in prompts]
    out = [list(p) for p in prompts]
    nxt = []
    for s, p in zip(seqs, prompts):
        s.reset()
        nxt.append(s.forward(np.array(p), 0)[-1].copy())
    toks = keystats.sample_top_k(np.stack(nxt), rng, k, temp)
    live = list(range(len(seqs)))
    batch = Batch(m, len(seqs))
    stops = m.tokenizer.stop_ids
    n_new = [0] * len(seqs)
    t = time.perf_counter()
    while live:
        for i, tk in zip(live, toks):
            out[i].append(int(tk))
            n_new[i] += 1
        keep = [j for j, i in enumerate(live)
                if n_new[i] < per_seq and not (stop_at_eos and int(toks[j]) in stops)
                and len(out[i]) < m.ctx]
        live = [live[j] for j in keep]
        toks = toks[keep]
        if not live:
            break
        logits = batch.step([seqs[i] for i in live], toks)
        toks = keystats.sample_top_k(logits, rng, k, temp)
    print(f"gen: {sum(n_new)} tokens in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out


def cmd_gen(a):
    path = resolve_model(a.model)
    m = Model.load(path, ctx=a.ctx, cache=nexvk.CacheConfig("f16", "f16"))
    rng = np.random.default_rng(0)
    tok = m.tokenizer
    bos = [tok.bos_id] if tok.bos_id is not None else []
    if a.method == "bos":
        seqs = gen_ar(m, [bos] * a.n, a.len, rng, a.top_k, a.temp, False)
    elif a.method == "chat":
        ps = [tok.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS[:a.n]]
        seqs = gen_ar(m, ps, a.len, rng, a.top_k, a.temp, True)
        if a.answers_only:
            seqs = [s[len(p):] for s, p in zip(seqs, ps)]
    if a.strip_bos:
        seqs = [seqs[0]] + [s[1:] if bos and s[:1] == bos else s for s in seqs[1:]]
    x = [t for s in seqs for t in s]
    if bos and x[0] != bos[0]:
        x = bos + x
    x = np.array(x[:a.tokens])
    for s in seqs[:3]:
        print(repr(tok.decode(s)[:600]), file=sys.stderr)
    print(f"{len(x)} tokens ({[len(s) for s in seqs]})", file=sys.stderr)
    np.save(a.out, x)


def cmd_stats(a):
    path = resolve_model(a.model)
    x = np.load(a.tokens)
    m = Model.load(path, ctx=len(x), cache=nexvk.CacheConfig("f16", "f16"))
    t = time.perf_counter()
    mo = keystats.record(m, x, -(-len(x) // keystats.RECIPE["block"]))
    print(f"stats prefill {len(x)} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    np.savez(a.out, **{n: getattr(mo, n) for n in keystats.PARTS})


def cmd_eval(a):
    path = resolve_model(a.model)
    model = nexvk.Model.load(path, ctx=a.ctx, cache=nexvk.CacheConfig("f16", "f16"))
    model = Model(model.cfg, model.w, model.tokenizer, a.ctx, cache=model.config)  # no file stats
    texts = {}
    wt = TEXT.read_text(encoding="utf-8")
    if "head" in a.texts:
        texts["head"] = wt
    if "mid" in a.texts:
        texts["mid"] = wt[len(wt) // 2:]
    if "gpl" in a.texts:
        texts["gpl"] = GPL.read_text()
    for name, text in texts.items():
        base = {}
        for f in a.files:
            if f == "sequence":
                opts = {}
            else:
                with np.load(f) as z:
                    mean, scale = keystats.read(z).tables(a.ctx)
                opts = {"key_mean": mean, "key_scale": scale}
            for cfg in a.configs.split(","):
                kt, vt = cfg.split("/")
                t = time.perf_counter()
                r = nexvk.perplexity(model, text, ctx=a.ctx, chunks=a.chunks, k_type=kt,
                                     v_type=vt, kld=True, kld_base=base, progress=False,
                                     cache_opts=opts, bos_insert=a.bos_insert)
                print(f"{name} {cfg} {f}: KLD {r['kld_mean']:.4f} ppl {r['ppl']:.3f} "
                      f"top1 {r['top1_agree']:.2f} ({time.perf_counter() - t:.0f} s)",
                      flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    g = sub.add_parser("gen")
    g.add_argument("method", choices=("bos", "chat"))
    g.add_argument("out")
    g.add_argument("--n", type=int, default=8)
    g.add_argument("--len", type=int, default=256)
    g.add_argument("--ctx", type=int, default=512)
    g.add_argument("--tokens", type=int, default=2048)
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--temp", type=float, default=1.0)
    g.add_argument("--answers-only", action="store_true")
    g.add_argument("--strip-bos", action="store_true")
    s = sub.add_parser("stats")
    s.add_argument("tokens")
    s.add_argument("out")
    e = sub.add_parser("eval")
    e.add_argument("files", nargs="+")
    e.add_argument("--ctx", type=int, default=512)
    e.add_argument("--chunks", type=int, default=4)
    e.add_argument("--configs", default="turbo3/turbo3")
    e.add_argument("--texts", default="head")
    e.add_argument("--bos-insert", action="store_true")
    for p in (g, s, e):
        p.add_argument("--model", default=None)
    a = ap.parse_args()
    {"gen": cmd_gen, "stats": cmd_stats, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
