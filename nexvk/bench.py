"""Benchmarks: codec throughput, decode attention vs context, end-to-end tokens/s, aggregate
decode tokens/s of concurrent sequences, memory per token, and codec error vs bits per value. `nexvk bench` and the pytest-benchmark suite
in benchmarks/ both call these functions.

Every measure returns plain dicts (rows); `run_all` collects them into one JSON-able report.
A measurement that fails (a cache too large for the device, a model not ready) becomes a
row with an "error" field instead of stopping the run.

Sparse-V queries: with random Gaussian keys the softmax over thousands of keys is nearly
uniform and a 1e-6 weight threshold skips nothing. `peaked_queries` therefore builds each
query head as a scaled sum of PEAK_KEYS cached keys of its KV head, scaled so those keys
score about PEAK_LOGIT (after the 1/sqrt(d) scale) while the others score ~N(0, sigma)
with sigma = PEAK_LOGIT * sqrt(PEAK_KEYS / d): attention is peaked, as in trained models.

The codec, attention and memory sections measure the formats as such (plain=True); the
end-to-end rows run the default (hardened) turbo3 next to plain turbo3 and f16.
"""
import json
import os
import platform
import sys
import time

import numpy as np

ATTN_FORMATS = ("f16", "q8_0", "turbo4", "turbo3")
SHAPES = {  # name: (n_heads, n_kv_heads, head_dim) of one attention layer
    "smollm2-135m": (9, 3, 64),
    "8b-class": (32, 8, 128),
}
SPARSE_V = 1e-6
PEAK_KEYS, PEAK_LOGIT = 4, 30.0
FULL = dict(codec_vectors=1 << 18, contexts=(1024, 4096, 16384, 32768), error_vectors=1 << 15,
            e2e_contexts=(512, 2048), decode_tokens=64, concurrent_prompt=128)
SECTIONS = ("memory", "error", "codec", "attention", "e2e", "concurrency")
QUICK = dict(codec_vectors=1 << 14, contexts=(1024, 4096), error_vectors=1 << 13,
             e2e_contexts=(64,), decode_tokens=4, concurrent_prompt=16)
CONCURRENCY = (1, 2, 4)  # sequences decoding at once (nexvk serve -np)
E2E_TEXT = ("The history of computing is a story of memory as much as of arithmetic. Every "
            "generation of machines has been limited by how much it could remember and how "
            "quickly it could recall it. ")


# ---- helpers -------------------------------------------------------------------------------
def gaussian(n, d, seed=0):
    """n standard-normal float32 vectors of dimension d."""
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def timeit(fn, repeat=3, min_time=0.0, warmup=1):
    """Run fn warmup times, then at least `repeat` times (and until min_time seconds have
    passed); return (median, best) seconds per call."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 50:
            break
    return float(np.median(times)), float(min(times))


def device_info(device=None):
    """{index, name, driver, type} of the Vulkan device that `device` selects, or None."""
    import nexvk
    if not nexvk.devices():
        return None
    from nexvk.device.probe import choose
    d = choose(device)
    return {k: d.get(k) for k in ("index", "name", "driver", "type", "api_version", "memory_bytes")}


def resolve_backends(backend="all", device=None, log=print):
    """Backends to run: 'numpy', 'cpu', 'vulkan', 'both' (numpy and vulkan) or 'all'; vulkan
    is dropped (with a message) when there is no Vulkan device, cpu when numba is missing."""
    want = {"both": ["numpy", "vulkan"], "all": ["numpy", "cpu", "vulkan"]}.get(backend, [backend])
    if "cpu" in want:
        from nexvk.cpu import jit
        if not jit.available():
            log("numba is not installed: no cpu backend rows")
            want = [b for b in want if b != "cpu"]
    if "vulkan" in want and device_info(device) is None:
        from nexvk.device.probe import last_error
        log(f"no Vulkan device found ({last_error() or 'no driver'}): running numpy only")
        want = [b for b in want if b != "vulkan"]
    if not want:
        raise RuntimeError("no backend to run (vulkan was asked for but there is no device)")
    return want


def _error_row(row, e):
    row["error"] = f"{type(e).__name__}: {e}"
    return row


# ---- codec throughput and error ------------------------------------------------------------
def codec_throughput(fmt, backend="numpy", n=1 << 18, head_dim=128, device=None, repeat=1,
                     x=None):
    """Encode and decode vectors/second of one format on one backend (n vectors of head_dim)."""
    import nexvk
    row = {"format": fmt, "backend": backend, "vectors": n, "head_dim": head_dim}
    try:
        x = gaussian(n, head_dim) if x is None else x
        c = nexvk.codec(fmt, head_dim, backend=backend, device=device)
        c.decode(c.encode(x[:256]))  # pipelines and buffers now, not in the timing
        enc = c.encode(x)
        t_enc, _ = timeit(lambda: c.encode(x), repeat=repeat, warmup=0)
        t_dec, _ = timeit(lambda: c.decode(enc), repeat=repeat, warmup=0)
        row.update(encode_vps=n / t_enc, decode_vps=n / t_dec, encode_s=t_enc, decode_s=t_dec)
    except Exception as e:  # noqa: BLE001 - reported in the row
        _error_row(row, e)
    return row


def codec_error(fmt, head_dim=128, n=1 << 15, seed=0):
    """Normalized MSE (sum (x - x')^2 / sum x^2) of one format on Gaussian vectors (numpy)."""
    import nexvk
    x = gaussian(n, head_dim, seed)
    c = nexvk.codec(fmt, head_dim)
    y = c.decode(c.encode(x))
    nmse = float(((y - x) ** 2).sum() / (x ** 2).sum())
    return {"format": fmt, "head_dim": head_dim, "bits_per_value": nexvk.bits_per_value(fmt, head_dim),
            "nmse": nmse}


def memory_row(fmt, shape="8b-class", capacity=1024):
    """KV bytes per token per layer of a format (K and V) for one layer shape, next to f16."""
    import nexvk
    _, hkv, d = SHAPES[shape]
    per_tok = nexvk.KVCache(1, hkv, d, capacity, fmt, fmt, plain=True).nbytes / capacity
    f16 = nexvk.KVCache(1, hkv, d, capacity, "f16", "f16").nbytes / capacity
    return {"shape": shape, "format": fmt, "bits_per_value": nexvk.bits_per_value(fmt, d),
            "bytes_per_token_layer": per_tok, "f16_bytes_per_token_layer": f16,
            "ratio_to_f16": per_tok / f16}


# ---- decode attention ----------------------------------------------------------------------
def kv_data(shape, ctx, seed=0):
    """Random Gaussian keys and values (ctx, n_kv_heads, head_dim) for one layer shape."""
    _, hkv, d = SHAPES[shape]
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((ctx, hkv, d), dtype=np.float32)
    v = rng.standard_normal((ctx, hkv, d), dtype=np.float32)
    return k, v


def peaked_queries(k, n_heads, seed=1):
    """One decode query (1, n_heads, d): each head is the sum of PEAK_KEYS random cached keys
    of its KV head, scaled so that those keys score about PEAK_LOGIT (see module docstring)."""
    ctx, hkv, d = k.shape
    rng = np.random.default_rng(seed)
    q = np.empty((1, n_heads, d), np.float32)
    for h in range(n_heads):
        g = h // (n_heads // hkv)
        picks = rng.choice(ctx, size=min(PEAK_KEYS, ctx), replace=False)
        q[0, h] = k[picks, g].sum(0) * (PEAK_LOGIT / np.sqrt(d))
    return q


def attention_cache(shape, fmt, ctx, backend="numpy", device=None, kv=None):
    """A one-layer KVCache of `ctx` tokens filled with kv (default: kv_data(shape, ctx))."""
    import nexvk
    H, hkv, d = SHAPES[shape]
    k, v = kv_data(shape, ctx) if kv is None else kv
    cache = nexvk.KVCache(1, hkv, d, ctx, fmt, fmt, backend=backend, device=device, n_heads=H,
                          plain=True)
    step = 8192 if backend == "numpy" else ctx  # the vulkan cache chunks by max_batch itself
    for s in range(0, ctx, step):
        cache.append(0, k[s:s + step], v[s:s + step])
    return cache


def attention_time(cache, q, sparse_v=None, repeat=3, min_time=0.2, out=None):
    """Seconds per decode-attention call (median, best) and the sparse-V skip rate; the last
    output goes to out["o"] when out is a dict."""
    box = {} if out is None else out
    fn = lambda: box.__setitem__("o", cache.attention(0, q, sparse_v=sparse_v))  # noqa: E731
    med, best = timeit(fn, repeat, min_time)
    return {"ms_per_token": med * 1e3, "best_ms": best * 1e3,
            "skip_rate": cache.stats["skip_rate"] if sparse_v else 0.0}


def attention_rows(shape, fmt, ctx, backend="numpy", device=None, kv=None, q=None, repeat=3,
                   min_time=0.2, ref=None):
    """Rows for one (shape, format, ctx, backend): dense and sparse-V decode attention.
    `ref` (a dict shared across backends) holds numpy outputs; other backends' rows get
    max_abs_diff against them, so a fast but wrong kernel shows up in the table."""
    base = {"shape": shape, "format": fmt, "ctx": ctx, "backend": backend}
    try:
        kv = kv_data(shape, ctx) if kv is None else kv
        q = peaked_queries(kv[0], SHAPES[shape][0]) if q is None else q
        t = time.perf_counter()
        cache = attention_cache(shape, fmt, ctx, backend, device, kv)
        fill_s = time.perf_counter() - t
        rows = []
        for sparse in (None, SPARSE_V):
            r = dict(base, sparse_v=sparse or 0.0, fill_s=fill_s)
            box = {}
            r.update(attention_time(cache, q, sparse, repeat, min_time, box))
            if ref is not None and backend == "numpy":
                ref[fmt, sparse] = box["o"]
            elif ref is not None and (fmt, sparse) in ref:
                r["max_abs_diff"] = float(np.nan_to_num(np.abs(box["o"] - ref[fmt, sparse]).max(),
                                                        nan=np.inf))
            rows.append(r)
        del cache
        return rows
    except Exception as e:  # noqa: BLE001
        return [_error_row(dict(base, sparse_v=s), e) for s in (0.0, SPARSE_V)]


def add_f16_ratio(rows):
    """Set row['ratio_to_f16'] = time / time of f16 with the same shape, ctx, backend, sparse."""
    key = lambda r: (r["shape"], r["ctx"], r["backend"], r["sparse_v"])  # noqa: E731
    f16 = {key(r): r["ms_per_token"] for r in rows if r["format"] == "f16" and "error" not in r}
    for r in rows:
        if "error" not in r and key(r) in f16:
            r["ratio_to_f16"] = r["ms_per_token"] / f16[key(r)]
    return rows


# ---- end to end ----------------------------------------------------------------------------
E2E_CACHES = {"f16": ("f16", {}), "turbo3": ("turbo3", {}), "turbo3 plain": ("turbo3", {"plain": True})}


def e2e_models():
    """{name: GGUF path} of the models the end-to-end rows run: the default (SmolLM2), and
    Gemma-3-270M when $NEXVK_GEMMA names it or it was fetched (`nexvk fetch gemma3-270m`; its
    licence is not the default's, so the benchmark never downloads it)."""
    import os
    from nexvk.model.fetch import fetch_default, model_path
    out = {"smollm2-135m": fetch_default(progress=False)}
    gemma = os.environ.get("NEXVK_GEMMA") or model_path("gemma3-270m")
    if gemma and os.path.isfile(gemma):
        out["gemma3-270m"] = gemma
    return out


def load_model(path, ctx, backend="numpy", device=None, threads=None):
    """A model whose weights are held as `backend` holds them (numpy: float32 on the host;
    cpu: GGUF blocks on the host; vulkan: GGUF blocks on the device), with a ctx-token
    context; threads: the cpu backend's."""
    import nexvk
    return nexvk.Model.load(path, ctx=ctx, backend=backend, device=device, threads=threads)


def _prompt_ids(tokenizer, n):
    ids = list(tokenizer.encode(E2E_TEXT * (n // 20 + 1)))[:n]
    if len(ids) < n:
        raise ValueError(f"prompt text gives only {len(ids)} tokens")
    return ids


def e2e(model, cache="turbo3", ctx=512, decode_tokens=64, name="smollm2-135m"):
    """Prefill and greedy-decode tokens/s of `model` with a `cache` (E2E_CACHES) at a context
    of `ctx` tokens: a prompt of ctx - decode_tokens, then decode_tokens steps."""
    prompt_tokens = ctx - decode_tokens
    fmt, opts = E2E_CACHES[cache]
    row = {"model": name, "cache": cache, "backend": model.backend, "ctx": ctx,
           "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens}
    try:
        m = model.with_cache(fmt, fmt, ctx=ctx, cache_opts=opts)
        ids = _prompt_ids(m.tokenizer, prompt_tokens)
        m.forward(ids[:2], 0)  # warm up (device steps are recorded on first use)
        m.reset()
        t0 = time.perf_counter()
        logits = m.forward(ids, 0, last_only=True)
        t1 = time.perf_counter()
        tok = int(np.argmax(logits[-1]))
        for _ in range(decode_tokens):
            tok = int(np.argmax(m.forward([tok], m.pos)[-1]))
        t2 = time.perf_counter()
        per_tok = (t2 - t1) / decode_tokens
        row.update(prefill_tok_s=prompt_tokens / (t1 - t0), decode_tok_s=1 / per_tok,
                   prefill_s=t1 - t0, decode_s=t2 - t1,
                   kv_mib=m.cache.nbytes / 2**20, bits_per_value=m.cache.bits_per_value)
    except Exception as e:  # noqa: BLE001
        _error_row(row, e)
    return row


def concurrency(model, n_seqs, cache="turbo3", prompt_tokens=128, decode_tokens=64,
                name="smollm2-135m"):
    """Aggregate greedy-decode tokens/s of n_seqs sequences, each with its own `cache`
    (E2E_CACHES) holding a prompt of prompt_tokens, their steps batched into one forward as
    `nexvk serve -np n_seqs` runs them (Batch.step)."""
    from nexvk.model.batch import Batch
    fmt, opts = E2E_CACHES[cache]
    row = {"model": name, "cache": cache, "backend": model.cache.backend, "seqs": n_seqs,
           "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens}
    try:
        seqs = [model.with_cache(fmt, fmt, cache_opts=opts) for _ in range(n_seqs)]
        batch = Batch(model, n_seqs)
        ids = _prompt_ids(model.tokenizer, prompt_tokens)
        toks = [int(np.argmax(s.forward(ids, 0, last_only=True)[0])) for s in seqs]
        batch.step(seqs, toks)  # warm up
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            toks = [int(t) for t in np.argmax(batch.step(seqs, toks), axis=1)]
        dt = time.perf_counter() - t0
        row.update(decode_tok_s=n_seqs * decode_tokens / dt, step_ms=1e3 * dt / decode_tokens)
    except Exception as e:  # noqa: BLE001
        _error_row(row, e)
    return row


PEER_CACHES = ("f16", "q8_0")  # llama.cpp's KV types run side by side with ours


def peer_available():
    """Whether llama-cpp-python imports (the optional peer: docs/benchmarks.md says how to
    install it)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def e2e_peer(path, tokenizer, cache="f16", ctx=512, decode_tokens=64, name="smollm2-135m",
             threads=None):
    """The e2e row of llama.cpp (llama-cpp-python) on the same file, prompt tokens, greedy
    decode steps and threads (default: every core), flash attention, a `cache` KV type."""
    import llama_cpp
    from nexvk.cpu import jit
    prompt_tokens = ctx - decode_tokens
    threads = threads or jit.max_threads()
    row = {"model": name, "cache": cache, "backend": f"llama.cpp {llama_cpp.__version__}",
           "ctx": ctx, "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
           "peer": True}
    try:
        kv = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}[cache]
        llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=min(ctx, 512),
                              n_threads=threads, n_threads_batch=threads, flash_attn=True,
                              type_k=kv, type_v=kv, logits_all=False, verbose=False)
        ids = _prompt_ids(tokenizer, prompt_tokens)
        llm.eval(ids[:2])  # warm up
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(decode_tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        t2 = time.perf_counter()
        row.update(prefill_tok_s=prompt_tokens / (t1 - t0), decode_tok_s=decode_tokens / (t2 - t1),
                   prefill_s=t1 - t0, decode_s=t2 - t1)
    except Exception as e:  # noqa: BLE001
        _error_row(row, e)
    return row


def peer_row(path, cache="f16", ctx=512, decode_tokens=64, name="smollm2-135m", threads=None):
    """e2e_peer in a fresh process. NOTE: in a process where the cpu backend has run, numba's
    (and OpenBLAS's) worker threads take cores from llama.cpp's: measured 35 instead of 91
    decode tok/s for SmolLM2 at 512 on 2 cores."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peer_in_child, (str(path), cache, ctx, decode_tokens, name, threads))


def _peer_in_child(path, cache, ctx, decode_tokens, name, threads):
    # NOTE: nexvk.cpu.jit sets OMP_WAIT_POLICY=passive for numba's OpenMP threads; llama.cpp's
    # OpenMP threads meet at a barrier after every op and slow down ~2.5x when they sleep there.
    # llama.cpp runs with OpenMP's defaults: a GOMP_SPINCOUNT given for nexvk is dropped too.
    if os.environ.get("OMP_WAIT_POLICY") == "passive" and "NEXVK_OMP_WAIT_POLICY_SET" in os.environ:
        del os.environ["OMP_WAIT_POLICY"]
    os.environ.pop("GOMP_SPINCOUNT", None)
    from nexvk.model.gguf import open_gguf
    from nexvk.model.tokenizer import Tokenizer
    return e2e_peer(path, Tokenizer(open_gguf(path)), cache, ctx, decode_tokens, name, threads)


def add_one_ratio(rows):
    """x_one: each concurrency row's aggregate tokens/s over one sequence's (same backend
    and cache)."""
    key = lambda r: (r.get("model"), r.get("backend"), r.get("cache"))  # noqa: E731
    one = {key(r): r["decode_tok_s"] for r in rows if r.get("seqs") == 1 and "decode_tok_s" in r}
    for r in rows:
        base = one.get(key(r))
        if base and "decode_tok_s" in r:
            r["x_one"] = r["decode_tok_s"] / base


def add_peer_ratio(rows):
    """Set row['x_peer'] = decode tok/s / llama.cpp's with an f16 cache, same model and ctx."""
    peer = {(r["model"], r["ctx"]): r for r in rows
            if r.get("peer") and r["cache"] == "f16" and "decode_tok_s" in r}
    for r in rows:
        base = peer.get((r["model"], r["ctx"]))
        if base and "decode_tok_s" in r:
            r["x_peer"] = r["decode_tok_s"] / base["decode_tok_s"]
            r["x_peer_prefill"] = r["prefill_tok_s"] / base["prefill_tok_s"]


def merge_rounds(rows):
    """One row per (model, ctx, cache, backend) from several rounds' e2e rows: the median of
    each speed, and decode_range = 'min-max' of decode tok/s. A configuration that failed
    in any round keeps that round's error row instead."""
    groups = {}
    for r in rows:
        groups.setdefault((r.get("model"), r.get("ctx"), r.get("cache"), r.get("backend"),
                           r.get("step")), []).append(r)
    out = []
    for rs in groups.values():
        bad = [r for r in rs if "error" in r]
        if bad or len(rs) == 1:
            out.append(bad[0] if bad else rs[0])
            continue
        row = dict(rs[0])
        for k in ("prefill_tok_s", "decode_tok_s", "prefill_s", "decode_s"):
            if all(k in r for r in rs):
                row[k] = float(np.median([r[k] for r in rs]))
        dec = [r["decode_tok_s"] for r in rs]
        row.update(rounds=len(rs), decode_range=f"{min(dec):.3g}-{max(dec):.3g}")
        out.append(row)
    return out


# ---- the whole run -------------------------------------------------------------------------
def plan(quick=False, backends=("numpy", "vulkan"), device=None, sections=None, peer=False,
         threads=None, rounds=1):
    """The run as a list of (section, label, fn() -> list of rows); peer: llama.cpp e2e rows
    next to ours (same file, prompt and threads); rounds: the e2e rows (ours and llama.cpp's)
    that many times over, one round after the other (merge_rounds takes their medians)."""
    import nexvk
    cfg = QUICK if quick else FULL
    sections = sections or SECTIONS
    steps = []
    if "memory" in sections:
        steps += [("memory", f"memory {s}", lambda s=s: [memory_row(f, s) for f in nexvk.FORMATS])
                  for s in SHAPES]
    if "error" in sections:
        steps.append(("error", "codec error", lambda: [
            codec_error(f, d, cfg["error_vectors"]) for d in (64, 128) for f in nexvk.FORMATS]))
    if "codec" in sections:
        x = []  # generated once, on first use
        data = lambda: x or x.append(gaussian(cfg["codec_vectors"], 128)) or x  # noqa: E731
        steps += [("codec", f"codec {f} {b}", lambda f=f, b=b: [codec_throughput(
                      f, b, cfg["codec_vectors"], device=device, x=data()[0])])
                  for b in backends if b != "cpu" for f in nexvk.FORMATS]
    if "attention" in sections:
        for shape in SHAPES:
            for ctx in cfg["contexts"]:
                kv = {}  # one K/V set and query per (shape, ctx), shared by every format
                def run(shape=shape, ctx=ctx, kv=kv, fmt=None, b=None):
                    if not kv:
                        kv["kv"] = kv_data(shape, ctx)
                        kv["q"] = peaked_queries(kv["kv"][0], SHAPES[shape][0])
                        kv["ref"] = {}
                    return attention_rows(shape, fmt, ctx, b, device, kv["kv"], kv["q"],
                                          repeat=2 if ctx >= 16384 else 3,
                                          min_time=0.0 if quick or ctx >= 16384 else 0.2,
                                          ref=kv["ref"])
                steps += [("attention", f"attention {shape} {ctx} {f} {b}",
                           lambda run=run, f=f, b=b: run(fmt=f, b=b))
                          for b in backends for f in ATTN_FORMATS]
                steps.append(("attention", f"attention {shape} {ctx} done",
                              lambda kv=kv: kv.clear() or []))
    models = {}  # (name, backend) -> model, loaded on first use, one at a time

    def model(name, path, b):
        if (name, b) not in models:
            models.clear()
            models[name, b] = load_model(path, max(cfg["e2e_contexts"]), b, device, threads)
        return models[name, b]
    # a CPU Vulkan driver (lavapipe) prefills at a few tokens/s: there the device rows
    # run the default model at the first context only (a GPU runs them all)
    cpu_device = "vulkan" in backends and (device_info(device) or {}).get("type") == "cpu"
    if "e2e" in sections:
        def e2e_step(name, path, b, cache, ctx):
            return [e2e(model(name, path, b), cache, ctx, cfg["decode_tokens"], name)]

        def peer_step(name, path, cache, ctx):
            return [peer_row(path, cache, ctx, cfg["decode_tokens"], name, threads)]
        e2e_steps = []
        for name, path in e2e_models().items():
            for b in backends:
                ctxs = cfg["e2e_contexts"] if name == "smollm2-135m" else cfg["e2e_contexts"][:1]
                if b == "vulkan" and cpu_device:
                    if name != "smollm2-135m":
                        continue
                    ctxs = ctxs[:1]
                e2e_steps += [("e2e", f"e2e {name} {c} {b} ctx {ctx}",
                               lambda name=name, path=path, b=b, c=c, ctx=ctx:
                                   e2e_step(name, path, b, c, ctx))
                              for ctx in ctxs for c in E2E_CACHES]
            if peer:
                ctxs = cfg["e2e_contexts"] if name == "smollm2-135m" else cfg["e2e_contexts"][:1]
                e2e_steps += [("e2e", f"e2e {name} {c} llama.cpp ctx {ctx}",
                               lambda name=name, path=path, c=c, ctx=ctx:
                                   peer_step(name, path, c, ctx))
                              for ctx in ctxs for c in PEER_CACHES]
        steps += [(sec, f"{label} (round {i + 1}/{rounds})" if rounds > 1 else label, fn)
                  for i in range(rounds) for sec, label, fn in e2e_steps]
    if "concurrency" in sections:  # the default model; on lavapipe too slow to be worth it
        path = e2e_models()["smollm2-135m"]
        prompt = min(cfg["concurrent_prompt"], max(cfg["e2e_contexts"]) // 2)
        steps += [("concurrency", f"concurrency {n} {c} {b}",
                   lambda n=n, c=c, b=b: [concurrency(model("smollm2-135m", path, b), n, c,
                                                      prompt, cfg["decode_tokens"])])
                  for b in backends if not (b == "vulkan" and cpu_device)
                  for c in ("turbo3", "f16") for n in CONCURRENCY]
    return steps


def _guarded(label, fn):
    """fn()'s rows, or one error row when a whole step fails (e.g. the model cannot load)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return [{"step": label, "error": f"{type(e).__name__}: {e}"}]


def run_all(device=None, quick=False, progress=True, backends=None, sections=None, log=None,
            peer=False, threads=None, rounds=1):
    """Run every benchmark; returns the report {meta, memory, error, codec, attention, e2e}.
    peer: llama.cpp e2e rows too (when llama-cpp-python imports; a message otherwise);
    rounds: e2e rows measured that many times, round after round, reported as medians."""
    import nexvk
    log = log or (lambda msg: print(msg, file=sys.stderr))
    backends = list(backends or resolve_backends("all", device, log))
    if peer and not peer_available():
        log("--peer: llama-cpp-python is not installed (docs/benchmarks.md: how to build it); "
            "no llama.cpp rows")
        peer = False
    dev = device_info(device) if "vulkan" in backends else None
    report = {"meta": {"nexvk": nexvk.__version__, "quick": quick, "backends": backends,
                       "device": dev, "host": platform.node(), "machine": platform.machine(),
                       "python": platform.python_version(), "numpy": np.__version__,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "sparse_v": SPARSE_V, "peak_keys": PEAK_KEYS, "peak_logit": PEAK_LOGIT,
                       "loadavg": os.getloadavg(), "threads": threads, "rounds": rounds,
                       "tune": os.environ.get("NEXVK_TUNE", ""), "idle_threads": idle_threads()},
              "memory": [], "error": [], "codec": [], "attention": [], "e2e": [],
              "concurrency": []}
    steps = plan(quick, backends, device, sections, peer, threads, rounds)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(steps), unit="step", file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    for section, label, fn in steps:
        if bar is not None:
            bar.set_description(label[:48])
        report[section] += _guarded(label, fn)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    add_f16_ratio(report["attention"])
    add_one_ratio(report["concurrency"])
    if rounds > 1:
        report["e2e"] = merge_rounds(report["e2e"])
    add_peer_ratio(report["e2e"])
    report["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["meta"]["elapsed_s"] = time.perf_counter() - t0
    return report


# ---- output --------------------------------------------------------------------------------
def _fmt(v):
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.3g}" if abs(v) < 100 or abs(v) >= 1e7 else f"{v:,.0f}"
    return "-" if v is None else str(v)


def table(rows, cols, title=None):
    """Aligned text table of `rows` (dicts) over `cols` [(key, header)]; errors in a last column."""
    if not rows:
        return ""
    errs = any("error" in r for r in rows)
    heads = [h for _, h in cols] + (["error"] if errs else [])
    body = [[_fmt(r.get(k)) for k, _ in cols] + ([r.get("error", "")] if errs else []) for r in rows]
    w = [max(len(x) for x in col) for col in zip(heads, *body)]
    line = lambda cells: "  ".join(c.rjust(n) if i < len(cols) else c  # noqa: E731
                                   for i, (c, n) in enumerate(zip(cells, w))).rstrip()
    out = ([title] if title else []) + [line(heads), line(["-" * n for n in w])] + [line(b) for b in body]
    return "\n".join(out) + "\n"


def idle_threads():
    """How the cpu backend's idle OpenMP threads wait (nexvk.cpu.jit; docs/cpu.md, Threads)."""
    if os.environ.get("GOMP_SPINCOUNT"):
        return f"spin GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
    return os.environ.get("OMP_WAIT_POLICY", "")


def format_report(rep):
    """All tables of a report as text."""
    m = rep["meta"]
    dev = m["device"]
    head = (f"nexvk {m['nexvk']} bench{' --quick' if m['quick'] else ''}: backends "
            f"{', '.join(m['backends'])}; device: "
            f"{dev['name'] + ' / ' + dev['driver'] if dev else 'none'}; {m['started']}, "
            f"{m.get('elapsed_s', 0):.0f} s; load average at start "
            f"{' '.join(f'{x:.2f}' for x in m.get('loadavg', ()))}"
            f"{'; NEXVK_TUNE=' + m['tune'] if m.get('tune') else ''}"
            f"{'; idle threads: ' + m['idle_threads'] if m.get('idle_threads') else ''}\n")
    parts = [head,
             table(rep["memory"], [("shape", "shape"), ("format", "format"), ("bits_per_value", "bits/value"),
                                   ("bytes_per_token_layer", "bytes/token/layer"),
                                   ("ratio_to_f16", "x f16")], "KV memory per token per layer (K+V)"),
             table(rep["error"], [("format", "format"), ("head_dim", "head_dim"),
                                  ("bits_per_value", "bits/value"), ("nmse", "NMSE")],
                   "Codec error on Gaussian vectors (numpy)"),
             table(rep["codec"], [("format", "format"), ("backend", "backend"), ("vectors", "vectors"),
                                  ("encode_vps", "encode vec/s"), ("decode_vps", "decode vec/s")],
                   "Codec throughput (head_dim 128)"),
             table(rep["attention"], [("shape", "shape"), ("ctx", "ctx"), ("backend", "backend"),
                                      ("format", "format"), ("sparse_v", "sparse_v"),
                                      ("ms_per_token", "ms/token"), ("ratio_to_f16", "x f16"),
                                      ("skip_rate", "V skipped"), ("max_abs_diff", "|out-numpy|"),
                                      ("fill_s", "fill s")],
                   "Decode attention, one layer, one query token (peaked queries; x f16 = same "
                   "backend; |out-numpy| = max abs difference from the numpy output)"),
             table(rep["e2e"], [("model", "model"), ("ctx", "ctx"), ("cache", "cache"),
                                ("backend", "backend"), ("prompt_tokens", "prompt"),
                                ("prefill_tok_s", "prefill tok/s"), ("decode_tokens", "decoded"),
                                ("decode_tok_s", "decode tok/s")]
                   + ([("decode_range", "decode range")]
                      if any("decode_range" in r for r in rep["e2e"]) else [])
                   + [("kv_mib", "KV MiB"), ("bits_per_value", "bits/value")]
                   + ([("x_peer_prefill", "prefill x llama.cpp"),
                       ("x_peer", "decode x llama.cpp")]
                      if any("x_peer" in r for r in rep["e2e"]) else []),
                   "End to end (K and V in the same format; turbo3 = the hardened cache; "
                   "numpy: float32 weights, cpu: compiled kernels with weights as stored, "
                   "vulkan: the whole step on the device; x llama.cpp: over llama.cpp's "
                   "f16-cache row in the same run" + (f"; medians of {m.get('rounds')} rounds, "
                   "run one after the other" if (m.get("rounds") or 1) > 1 else "") + ")"),
             table(rep.get("concurrency", []),
                   [("model", "model"), ("backend", "backend"), ("cache", "cache"),
                    ("seqs", "sequences"),
                    ("prompt_tokens", "prompt each"), ("decode_tokens", "steps"),
                    ("step_ms", "ms/step"), ("decode_tok_s", "decode tok/s (all)"),
                    ("x_one", "x one sequence")],
                   "Concurrent sequences (nexvk serve -np N): each its own cache, decode steps "
                   "batched into one forward on numpy and cpu (one step per sequence on vulkan)")]
    bad = sorted({(r["backend"], r["shape"], r["ctx"]) for r in rep["attention"]
                  if r.get("max_abs_diff", 0) > 1e-3})
    if bad:
        parts.append("WARNING: attention output differs from numpy (> 1e-3) for: " +
                     ", ".join(f"{b} {s} ctx {c}" for b, s, c in bad) + "; those timings "
                     "measure a wrong result\n")
    return "\n".join(p for p in parts if p)


def plot(rep, outdir):
    """Write attention.png (log-log ms/token vs context) and error.png; returns the paths."""
    import os
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(outdir, exist_ok=True)
    paths = []
    rows = [r for r in rep["attention"] if "error" not in r]
    if rows:
        shapes = [s for s in SHAPES if any(r["shape"] == s for r in rows)]
        fig, axes = plt.subplots(2, len(shapes), figsize=(6 * len(shapes), 9), squeeze=False)
        colors = dict(zip(ATTN_FORMATS, ("black", "tab:blue", "tab:green", "tab:red")))
        for row_axes, sp in zip(axes, (0.0, SPARSE_V)):
            for ax, shape in zip(row_axes, shapes):
                for b, style in zip(("numpy", "vulkan"), ("-o", "--s")):
                    for f in ATTN_FORMATS:
                        pts = sorted((r["ctx"], r["ms_per_token"]) for r in rows if r["shape"] == shape
                                     and r["backend"] == b and r["format"] == f and r["sparse_v"] == sp)
                        if pts:
                            ax.plot(*zip(*pts), style, color=colors[f], label=f"{f} {b}")
                ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="ms / token / layer",
                       title=f"{shape} {SHAPES[shape]}, " + (f"sparse V {sp:g}" if sp else "dense"))
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7, ncol=2)
        fig.suptitle("decode attention time per token (one layer)")
        fig.tight_layout()
        paths.append(os.path.join(outdir, "attention.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if rep["error"]:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for d in sorted({r["head_dim"] for r in rep["error"]}):
            pts = [r for r in rep["error"] if r["head_dim"] == d and r["nmse"] > 0]
            ax.plot([r["bits_per_value"] for r in pts], [r["nmse"] for r in pts], "o", label=f"head_dim {d}")
            for r in pts if d == 128 else ():
                ax.annotate(r["format"], (r["bits_per_value"], r["nmse"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set(yscale="log", xlabel="bits per value (scales included)", ylabel="normalized MSE",
               title="codec error vs storage")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(outdir, "error.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# ---- command line --------------------------------------------------------------------------
def add_parser(sub):
    """Add `nexvk bench` to an argparse subparsers object."""
    p = sub.add_parser("bench", help="benchmark the codec, attention and end-to-end speed",
                       description="Measure codec throughput, decode attention vs context, "
                       "end-to-end tokens/s, KV memory and codec error; f16 is measured in the "
                       "same run as the baseline.")
    p.add_argument("--device", type=int, default=None, help="Vulkan device index (see `nexvk devices`)")
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute on a CPU)")
    p.add_argument("--backend", choices=("numpy", "cpu", "vulkan", "both", "all"), default="all",
                   help="both = numpy and vulkan; all = numpy, cpu and vulkan (default)")
    p.add_argument("--peer", action="store_true",
                   help="e2e: also run llama.cpp (llama-cpp-python, when installed) on the same "
                        "file, prompt and threads, and print our ratio to it")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="threads of the cpu backend and of llama.cpp (default: every core)")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="e2e: measure every row (ours and llama.cpp's) N times, round after "
                        "round, and report the medians and the decode range: on a shared "
                        "machine one run moves by tens of percent")
    p.add_argument("--only", nargs="+", choices=SECTIONS,
                   help="run only these sections")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts to DIR")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args):
    """Handler of `nexvk bench`; returns the exit code."""
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    backends = resolve_backends(args.backend, args.device, log)
    if args.rounds < 1:
        log(f"--rounds must be at least 1, got {args.rounds}")
        return 2
    rep = run_all(args.device, args.quick, not args.no_progress, backends, args.only, log,
                  args.peer, args.threads, args.rounds)
    print(format_report(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
        log(f"wrote {args.json}")
    if args.plot:
        for path in plot(rep, args.plot):
            log(f"wrote {path}")
    n_err = sum("error" in r for k in ("codec", "attention", "e2e", "concurrency")
                for r in rep[k])
    if n_err:
        log(f"{n_err} measurement(s) failed; see the error column")
    return 0


def main(argv=None):
    """`python -m nexvk.bench` (same flags as `nexvk bench`)."""
    import argparse
    parser = argparse.ArgumentParser(prog="nexvk")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
