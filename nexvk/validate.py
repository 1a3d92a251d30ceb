"""Every shader on a Vulkan device against the numpy reference: `nexvk validate`.

Plays the role of llama.cpp's test-backend-ops. Each Case names a kernel and its
parameters (the string form `attention kfmt=turbo3,vfmt=turbo3,d=128,gqa=4,...` is what
--filter matches); run_case() builds seeded inputs, runs the numpy twin and the device, and
checks NaN/Inf first, then the case's error against its tolerance:
- quantize:   fraction of code words that differ (ties at thresholds only) <= 1e-4, fp16
              scales within one step, and sentinel words around the output untouched;
- dequantize: max relative error of the decoded floats <= 1e-5, sentinel rows untouched;
- attention:  max relative error <= 1e-4 against numpy attention over the very codes the
              device produced (so quantization ties cannot blur the attention check).
- the token-step kernels (mul_mv, mul_mm, get_rows for every GGML weight type; rms_norm,
  rope, glu, add): NaN/Inf first, then every word outside the outputs (spare tokens the
  dispatch was sized for, sentinel words after) untouched, then NMSE against the numpy twin
  within a bound derived per op from fp32 rounding (WEIGHT_BOUNDS).
tests/test_validate.py runs the quick grid; CI runs `nexvk validate --quick` on lavapipe.
"""
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nexvk.quant import FORMATS
from nexvk.quant.formats import make

SENTINEL = 0xDEADBEEF
PAIRS = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo2", "turbo2"),
         ("turbo3", "turbo3"), ("turbo4", "turbo4"), ("q8_0", "turbo3"), ("q8_0", "turbo4")]
DATA = {  # name -> per-vector norm scale of Gaussian data (zeros: every 7th vector is 0)
    "gauss": 1.0, "zeros": 1.0, "large": 400.0, "small": 1e-3}


@dataclass
class Case:
    kernel: str
    params: dict = field(default_factory=dict)

    @property
    def name(self):
        return f"{self.kernel} " + ",".join(f"{k}={v}" for k, v in self.params.items())

    @property
    def group(self):
        p = self.params
        return f"{self.kernel} {p['kfmt']}/{p['vfmt']}" if "kfmt" in p \
            else f"{self.kernel} {p['fmt']}"


@dataclass
class Result:
    case: Case
    error: float
    tol: float
    ok: bool
    seconds: float
    detail: str = ""


def cases(quick=False):
    """The grid: every format, head_dim 64/128/256, GQA 1/3/4/8, decode and prefill,
    contexts on and off the workgroup size, sparse V on and off, edge-case norms."""
    dims = (64, 128) if quick else (64, 128, 256)
    out = []
    for fmt in FORMATS:
        for d in dims:
            for data in (("gauss", "large") if quick else DATA):
                out.append(Case("quantize", dict(fmt=fmt, d=d, data=data)))
            out.append(Case("dequantize", dict(fmt=fmt, d=d)))
    pairs = [("f16", "f16"), ("turbo3", "turbo3"), ("q8_0", "turbo3")] if quick else PAIRS
    gqas = (1, 4) if quick else (1, 3, 4, 8)
    shapes = [("decode", 5000, 1, 1e-6), ("prefill", 65, 65, 0.0)] if quick else [
        ("decode", 1, 1, 0.0), ("decode", 64, 1, 0.0), ("decode", 1000, 1, 0.0),
        ("decode", 1000, 1, 1e-6), ("decode", 9000, 1, 1e-6), ("prefill", 63, 63, 0.0),
        ("prefill", 300, 44, 0.0)]
    for kfmt, vfmt in pairs:
        for d in dims:
            for gqa in gqas:
                for mode, ctx, T, sparse in shapes:
                    out.append(Case("attention", dict(kfmt=kfmt, vfmt=vfmt, d=d, gqa=gqa,
                                                      mode=mode, ctx=ctx, T=T, sparse=sparse)))
    if not quick:  # softmax at the edges: huge and tiny key norms
        for data in ("large", "small"):
            out.append(Case("attention", dict(kfmt="turbo3", vfmt="turbo3", d=128, gqa=4,
                                              mode="decode", ctx=500, T=1, sparse=1e-6, data=data)))
    for d in dims:  # the hardened cache: f16 sinks, keys centred and scaled
        for mode, ctx, T in (("decode", 300, 1), ("prefill", 65, 65)):
            out.append(Case("hardened", dict(kfmt="turbo3", vfmt="turbo3", d=d, gqa=3,
                                             mode=mode, ctx=ctx, T=T)))
    return out + step_cases(quick)


def _data(n, d, kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * np.float32(DATA[kind])
    if kind == "zeros":
        x[::7] = 0
    return x


def _rel(a, b):
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max()) / scale if scale else float(np.abs(a - b).max())


def _quantize(dev, p, seed):
    """Raw quantize.comp dispatch into a buffer with sentinel words before and after."""
    from nexvk.kernels import layout
    fmt = make(p["fmt"], p["d"])
    n, d = 500, p["d"]
    x = _data(n, d, p["data"], seed)
    # vectors 1..n of n+2: vector 0 and n+1 stay sentinel; a spare word pads the scales
    words = layout.region_words(fmt, n + 2) + 1
    tag = f"validate/quantize/{p['fmt']}/{d}/"
    pool = dev.pool
    xb = pool.get(tag + "x", n * d, np.float32, kind="device")
    kv = pool.get(tag + "kv", words, np.uint32, kind="device")
    tab = pool.get(tag + "tab", layout.TAB_SIGNS + d, np.float32, kind="device")
    dyn = pool.get(tag + "dyn", 2, np.uint32, kind="device")
    try:
        xb.host[:] = x.reshape(-1)
        kv.host[:] = SENTINEL
        tab.host[:] = layout.table(fmt)
        dyn.host[:] = (n, 1)
        # one workgroup more than rows: its bounds check must keep vector n+1 intact
        pipe = dev.pipeline("quantize", [xb, kv, tab, dyn], n + 1, [layout.WG, d, *layout.spec(fmt)])
        sbase = (n + 2) * fmt.words
        dev.run([xb, kv, tab, dyn], [(pipe, layout.quantize_push(0, sbase, 0))], [kv])
        got = kv.host.copy()
    finally:
        dev.release(tag)
    codes = got[: (n + 2) * fmt.words].reshape(n + 2, fmt.words)
    halves = got[sbase:].view(np.uint16)
    scales = halves[: (n + 2) * fmt.n_scales].reshape(n + 2, fmt.n_scales)
    ref_codes, ref_scales = fmt.encode_rows(x)
    s16 = np.uint16(SENTINEL & 0xFFFF), np.uint16(SENTINEL >> 16)
    sentinel_ok = (np.all(codes[0] == SENTINEL) and np.all(codes[-1] == SENTINEL)
                   and np.all(got[layout.region_words(fmt, n + 2):] == SENTINEL))
    if fmt.n_scales:
        flat = halves[: (n + 2) * fmt.n_scales]
        first, last = fmt.n_scales, (n + 1) * fmt.n_scales  # half indices of vectors 1..n
        expect = np.where(np.arange(len(flat)) % 2 == 0, s16[0], s16[1])
        sentinel_ok &= bool(np.all(flat[:first] == expect[:first]) and
                            np.all(flat[last:] == expect[last:]))
    mismatch = float(np.mean(codes[1:-1] != ref_codes))
    ulps = np.abs(scales[1:-1].astype(np.int32) - ref_scales.view(np.uint16).astype(np.int32))
    ok = sentinel_ok and mismatch <= 1e-4 and ulps.max(initial=0) <= 1
    detail = "" if sentinel_ok else "sentinel words overwritten"
    if ulps.max(initial=0) > 1:
        detail = f"fp16 scales differ by up to {int(ulps.max())} steps"
    return mismatch, 1e-4, ok, detail


def _dequantize(dev, p, seed):
    """Raw dequantize.comp dispatch into an output with two sentinel rows after the n rows."""
    from nexvk.kernels import layout
    fmt = make(p["fmt"], p["d"])
    n, d = 700, p["d"]
    codes, scales = fmt.encode_rows(_data(n, d, "gauss", seed))
    ref = fmt.decode_rows(codes, scales)
    tag = f"validate/dequantize/{p['fmt']}/{d}/"
    pool = dev.pool
    kv = pool.get(tag + "kv", layout.region_words(fmt, n), np.uint32, kind="device")
    y = pool.get(tag + "y", (n + 2) * d, np.float32, kind="device")
    tab = pool.get(tag + "tab", layout.TAB_SIGNS + d, np.float32, kind="device")
    dyn = pool.get(tag + "dyn", 2, np.uint32, kind="device")
    try:
        sbase = n * fmt.words
        kv.host[:sbase] = codes.reshape(-1)
        kv.host[sbase:].view(np.float16)[: n * fmt.n_scales] = scales.reshape(-1)
        y.host.view(np.uint32)[:] = SENTINEL
        tab.host[:] = layout.table(fmt)
        dyn.host[:] = (n, 0)
        # two workgroups more than rows: their bounds check must keep the sentinel rows
        pipe = dev.pipeline("dequantize", [kv, y, tab, dyn], n + 2, [layout.WG, d, *layout.spec(fmt)])
        dev.run([kv, y, tab, dyn], [(pipe, [0, sbase, 0])], [y])
        got = y.host.copy()
    finally:
        dev.release(tag)
    if not np.all(got.view(np.uint32)[n * d:] == SENTINEL):
        return float("inf"), 1e-5, False, "sentinel rows overwritten"
    got = got[: n * d].reshape(n, d)
    if not np.isfinite(got).all():
        return float("inf"), 1e-5, False, "NaN/Inf in output"
    err = _rel(got, ref)
    return err, 1e-5, err <= 1e-5, ""


def _attention(dev, p, seed):
    from nexvk import KVCache
    from nexvk.kernels.codec import VulkanCodec
    d, G, ctx, T = p["d"], p["gqa"], p["ctx"], p["T"]
    hkv = max(1, 8 // G) if d <= 128 else 2
    H = hkv * G
    rng = np.random.default_rng(seed)
    k = _data(ctx * hkv, d, p.get("data", "gauss"), seed).reshape(ctx, hkv, d)
    v = rng.standard_normal((ctx, hkv, d)).astype(np.float32)
    vk = KVCache(1, hkv, d, ctx, p["kfmt"], p["vfmt"], backend="vulkan", device=dev,
                 n_heads=H, max_batch=64, plain=True)
    if ctx > T:
        vk.append(0, k[:ctx - T], v[:ctx - T])
    step = 64 if p["mode"] == "prefill" else 1  # decode appends its tokens one at a time
    for t in range(ctx - T, ctx, step):
        vk.append(0, k[t:t + step], v[t:t + step])
    # the reference reads the codes the device's own quantizer produced
    ref = KVCache(1, hkv, d, ctx, p["kfmt"], p["vfmt"], plain=True)
    for (codes, scales), x, fmt in ((ref._impl.k[0], k, p["kfmt"]), (ref._impl.v[0], v, p["vfmt"])):
        enc = VulkanCodec(fmt, d, device=dev, chunk=4096).encode(x)
        codes[:], scales[:] = enc.codes.reshape(ctx, hkv, -1), enc.scales.reshape(ctx, hkv, -1)
    ref._len[0] = ctx
    q = rng.standard_normal((T, H, d)).astype(np.float32)
    if p["sparse"]:  # peaked attention, as in real decoding
        q = np.repeat(k[[0, ctx // 2, ctx - 1]].sum(0), G, axis=0)[None].repeat(T, 0) * 1.5
        q /= max(1.0, float(np.abs(q).max()) / 50)
    got = vk.attention(0, q, sparse_v=p["sparse"] or None)
    want = ref.attention(0, q, sparse_v=p["sparse"] or None)
    if not np.isfinite(got).all():
        return float("inf"), 1e-4, False, "NaN/Inf in output"
    err = _rel(got, want)
    detail = f"skip {vk.stats['skip_rate']:.0%}" if p["sparse"] else ""
    if vk.stats["skipped"] != ref.stats["skipped"]:
        detail += f" skipped {vk.stats['skipped']} vs numpy {ref.stats['skipped']}"
    return err, 1e-4, err <= 1e-4, detail.strip()


def _hardened(dev, p, seed):
    """The hardened turbo cache (2 f16 sinks, key mean and scale fitted from the first
    non-sink append's keys and queries) on the device against the numpy store, through the
    same KVCache calls: both transform on the host, so the codes match where the math does."""
    from nexvk import KVCache
    d, G, ctx, T = p["d"], p["gqa"], p["ctx"], p["T"]
    hkv = 2
    H = hkv * G
    rng = np.random.default_rng(seed)
    k = _data(ctx * hkv, d, "gauss", seed).reshape(ctx, hkv, d) + np.float32(3.0)
    v = rng.standard_normal((ctx, hkv, d)).astype(np.float32)
    q = rng.standard_normal((ctx, H, d)).astype(np.float32)
    outs = []
    for backend in ("vulkan", "numpy"):
        c = KVCache(1, hkv, d, ctx, p["kfmt"], p["vfmt"], backend=backend, device=dev,
                    n_heads=H, max_batch=64, sinks=2)
        c.append(0, k[:1], v[:1], q=q[:1])  # a sink alone: re-encoded once the mean is fitted
        step, first = (64 if p["mode"] == "prefill" else 1), max(1, ctx - T)
        if first > 1:
            c.append(0, k[1:first], v[1:first], q=q[1:first])
        for t in range(first, ctx, step):
            c.append(0, k[t:t + step], v[t:t + step], q=q[t:t + step])
        outs.append(c.attention(0, q[ctx - T:]))
    got, want = outs
    if not np.isfinite(got).all():
        return float("inf"), 1e-4, False, "NaN/Inf in output"
    err = _rel(got, want)
    return err, 1e-4, err <= 1e-4, ""


_RUNNERS = {"quantize": _quantize, "dequantize": _dequantize, "attention": _attention,
            "hardened": _hardened}


# ---- the token-step kernels (nexvk/kernels): weights in their GGML formats --------------------
U2 = 2.0 ** -48                  # (fp32 unit roundoff)^2
WEIGHT_BOUNDS = {                # NMSE bounds: 64x the rounding of what each op sums
    "mul_mv": lambda p: 64 * p["k"] * U2,          # a K-term fp32 dot per output
    "mul_mm": lambda p: 64 * p["k"] * U2,
    "get_rows": lambda p: 64 * U2,                 # d*q+m against gguf's own rounding
    "rms_norm": lambda p: 64 * p["group"] * U2,    # the group's sum of squares
    "rope": lambda p: 16 * U2,                     # two products and a sum
    "glu": lambda p: 1e-10,                        # exp: Vulkan allows 3+2|x| ulp
    "add": lambda p: 0.0,                          # one exact-rounded add
}
SPARE = 3                        # tokens a dispatch is sized for beyond T: their rows must stay


def step_cases(quick=False):
    """Every weight type through the products and the lookup, odd sizes (37 rows, T off the
    tiles), the accumulate and last-row modes; the small ops at the sizes models use."""
    from nexvk.kernels.ggml_types import TYPES
    out = []
    in_models = ("q4_1", "q8_0", "q5_0", "q4_k", "q6_k")   # SmolLM2 Q4_1 and Gemma-3 Q4_K_M
    for t, wt in TYPES.items():
        if quick and t not in in_models:
            continue
        ks = [512] if wt.block == 256 else [160] if quick else [96, 640]
        ks += [] if quick else [2048 if wt.block == 256 else 1536]
        for k in ks:
            for mode in ("plain", "acc", "last"):
                out.append(Case("mul_mv", dict(fmt=t, rows=37, k=k, mode=mode)))
            if not quick or t in ("q4_1", "q8_0"):
                for mode in ("plain", "acc"):
                    out.append(Case("mul_mm", dict(fmt=t, rows=37, k=k, T=11, mode=mode)))
            out.append(Case("get_rows", dict(fmt=t, rows=37, k=k, T=5)))
    for n, group in [(576, 576), (1024, 256), (100, 20)]:
        out.append(Case("rms_norm", dict(fmt="f32", n=n, group=group, T=7)))
    for heads, hd, rot, neox in [(9, 64, 64, 0), (4, 256, 256, 1), (3, 128, 64, 0)]:
        out.append(Case("rope", dict(fmt="f32", heads=heads, head_dim=hd, rot=rot, neox=neox, T=7)))
    for act in ("silu", "gelu"):
        out.append(Case("glu", dict(fmt="f32", act=act, n=1536, T=5)))
    out.append(Case("add", dict(fmt="f32", n=577, T=5)))
    return out


def _step_inputs(kernel, p, rng, s):
    """Buffers, dispatches and the expected outputs of one step-kernel case. Returns
    (dispatches, out buffer, words of out, slice of out that the kernel writes, expected)."""
    from nexvk.kernels import add, get_rows, glu, mul_mm, mul_mv, rms_norm, rope
    from nexvk.kernels import ggml_types as gt
    from nexvk.kernels.weights import DeviceWeight
    T = p.get("T", 1)
    tmax = T + SPARE
    dev = s.dev
    if kernel in ("mul_mv", "mul_mm", "get_rows"):
        rows, k = p["rows"], p["k"]
        raw = gt.random_bytes(p["fmt"], rows, k, seed=int(rng.integers(1 << 30)))
        w = gt.dequantize(p["fmt"], raw, rows, k)
        dw = DeviceWeight.from_bytes(dev, s.tag + "w", p["fmt"], raw, rows, k)
        x = rng.standard_normal((tmax, k)).astype(np.float32)
    if kernel == "mul_mv":
        acc, last = p["mode"] == "acc", p["mode"] == "last"
        y0 = rng.standard_normal(rows).astype(np.float32) if acc else None
        want = mul_mv.ref(w, x[:T], y0, last_row=T - 1 if last else None)
        out = s.buf("y", y0, size=rows + 16)
        d = s.dyn(T)
        return mul_mv.dispatches(dev, dw, s.buf("x", x), out, d, acc=acc, last=last), out, slice(0, rows), want
    if kernel == "mul_mm":
        y0 = rng.standard_normal((T, rows)).astype(np.float32) if p["mode"] == "acc" else None
        out = s.buf("y", y0, size=tmax * rows + 16)
        d = s.dyn(T)
        return (mul_mm.dispatches(dev, dw, s.buf("x", x), out, d, tmax, acc=y0 is not None), out,
                slice(0, T * rows), mul_mm.ref(w, x[:T], y0).reshape(-1))
    if kernel == "get_rows":
        ids = rng.integers(0, rows, T)
        ids[0] = rows - 1
        out = s.buf("out", size=tmax * k + 16)
        return (get_rows.dispatches(dev, dw, out, s.dyn(T, ids=ids), tmax, scale=1.5), out,
                slice(0, T * k), get_rows.ref(w, ids, 1.5).reshape(-1))
    if kernel == "rms_norm":
        n, g = p["n"], p["group"]
        x = (rng.standard_normal((tmax, n)) * 3).astype(np.float32)
        wt = rng.standard_normal(g).astype(np.float32)
        out = s.buf("y", size=tmax * n + 16)
        return (rms_norm.dispatches(dev, s.buf("x", x), s.buf("w", wt), out, s.dyn(T), n, tmax,
                                    1e-6, g), out, slice(0, T * n),
                rms_norm.ref(x[:T], wt, 1e-6, g).reshape(-1))
    if kernel == "rope":
        h, hd, rot = p["heads"], p["head_dim"], p["rot"]
        tab = rope.table(1e4, rot, 300)
        x = rng.standard_normal((T, h * hd)).astype(np.float32)
        out = s.buf("x", x, size=tmax * h * hd + 16)             # in place; spare rows: sentinel
        return (rope.dispatches(dev, out, s.buf("tab", tab), s.dyn(T, 290), h, hd, rot, 300, tmax,
                                neox=bool(p["neox"])), out, slice(0, x.size),
                rope.ref(x, tab, 290, h, hd, rot, bool(p["neox"])).reshape(-1))
    if kernel == "glu":
        n = p["n"]
        x = (rng.standard_normal((tmax, 2 * n)) * 4).astype(np.float32)
        out = s.buf("out", size=tmax * n + 16)
        return (glu.dispatches(dev, s.buf("x", x), out, s.dyn(T), n, tmax, p["act"]), out,
                slice(0, T * n), glu.ref(x[:T, :n], x[:T, n:], p["act"]).reshape(-1))
    n = p["n"]                                                   # add
    x, y = rng.standard_normal((2, T, n)).astype(np.float32)
    out = s.buf("x", x, size=tmax * n + 16)
    return (add.dispatches(dev, out, s.buf("y", np.tile(y, (tmax // T + 1, 1))), s.dyn(T), n, tmax),
            out, slice(0, x.size), add.ref(x, y).reshape(-1))


def _step_kernel(kernel):
    def run(dev, p, seed):
        from nexvk.kernels.oneshot import Scratch
        rng = np.random.default_rng(seed)
        tol = WEIGHT_BOUNDS[kernel](p)
        with Scratch(dev, f"validate/{kernel}") as s:
            dispatches, out, valid, want = _step_inputs(kernel, p, rng, s)
            words = out.host.view(np.uint32)
            keep = np.ones(words.size, bool)
            keep[valid] = False
            words[keep] = SENTINEL                             # everything the kernel must not write
            got = s.run(dispatches, [out])[0]
        got_words = got.view(np.uint32)
        vals = got[valid]
        if not np.isfinite(vals).all():
            return float("inf"), tol, False, "NaN/Inf in output"
        if not np.all(got_words[keep] == SENTINEL):
            return float("inf"), tol, False, f"{int((got_words[keep] != SENTINEL).sum())} words written outside the output"
        err = float(((vals - want) ** 2).sum() / max(float((want ** 2).sum()), 1e-30))
        return err, tol, err <= tol, ""
    return run


for _k in WEIGHT_BOUNDS:
    _RUNNERS[_k] = _step_kernel(_k)


def run_case(dev, case, seed=0):
    t = time.perf_counter()
    try:
        err, tol, ok, detail = _RUNNERS[case.kernel](dev, case.params, seed)
    except Exception as e:  # a crash in one case is a failed case, not a dead run
        err, tol, ok, detail = float("inf"), 0.0, False, f"{type(e).__name__}: {e}"
    return Result(case, float(err), tol, bool(ok), time.perf_counter() - t, detail)


def spirv_rows():
    from nexvk.device import spirv
    rows = []
    for name in spirv.shipped():
        ok, msg = spirv.spirv_val(spirv.SPV_DIR / f"{name}.spv")
        rows.append({"module": name, "ok": ok, "message": msg})
    return rows


def summarize(results):
    """One row per kernel and case group."""
    groups = {}
    for r in results:
        g = groups.setdefault(r.case.group, {"group": r.case.group, "cases": 0, "failed": 0,
                                             "max_error": 0.0, "tol": r.tol, "seconds": 0.0})
        g["cases"] += 1
        g["failed"] += not r.ok
        g["max_error"] = max(g["max_error"], r.error)
        g["tol"] = max(g["tol"], r.tol)
        g["seconds"] += r.seconds
    return list(groups.values())


def validate(device=None, quick=False, pattern=None, progress=True, layer_log=None):
    """Run the grid; returns the report dict (see --json)."""
    from nexvk.device import layers
    from nexvk.device.manager import get_device
    todo = [c for c in cases(quick) if not pattern or pattern in c.name]
    if not todo:  # checked before the device opens: a typo must not pass as "0 failed"
        raise ValueError(f"--filter {pattern!r} matches no case of the {'quick' if quick else 'full'}"
                         " grid; names look like 'attention kfmt=turbo3,vfmt=turbo3,d=128,...'")
    dev = get_device(device)
    it = todo
    if progress:
        from tqdm import tqdm
        it = tqdm(todo, desc="validate", unit="case", file=sys.stderr)
    results = [run_case(dev, c, seed=i) for i, c in enumerate(it)]
    report = {"device": dev.info, "quick": quick, "filter": pattern,
              "groups": summarize(results), "spirv_val": spirv_rows(),
              "cases": [{"name": r.case.name, "error": r.error, "tol": r.tol, "ok": r.ok,
                         "seconds": round(r.seconds, 4), "detail": r.detail} for r in results]}
    if layer_log:
        msgs = layers.messages(layer_log)
        report["validation_layer"] = {"enabled": True, "messages": len(msgs), "first": msgs[:5]}
    else:
        report["validation_layer"] = {"enabled": False, "messages": 0}
    spirv_bad = any(r["ok"] is False for r in report["spirv_val"])
    report["ok"] = (all(r.ok for r in results) and not spirv_bad
                    and report["validation_layer"]["messages"] == 0)
    return report


def format_report(rep):
    dev = rep["device"]
    lines = [f"device {dev['index']}: {dev['name']} ({dev.get('driver') or dev.get('vendor')}, "
             f"{dev.get('type')})", ""]
    lines.append(f"{'kernel / formats':<28}{'cases':>6}{'max error':>12}{'tol':>10}{'result':>8}{'time':>9}")
    for g in rep["groups"]:
        res = "PASS" if not g["failed"] else f"FAIL {g['failed']}"
        lines.append(f"{g['group']:<28}{g['cases']:>6}{g['max_error']:>12.2e}{g['tol']:>10.0e}"
                     f"{res:>8}{g['seconds']:>8.1f}s")
    for c in rep["cases"]:
        if not c["ok"]:
            lines.append(f"  FAILED {c['name']}: error {c['error']:.3g} > {c['tol']:.0e} {c['detail']}")
    lines.append("")
    for r in rep["spirv_val"]:
        state = {True: "ok", False: "INVALID", None: "not checked"}[r["ok"]]
        lines.append(f"spirv-val {r['module']:<12} {state}" + ("" if r["ok"] else f"  {r['message'][:200]}"))
    vl = rep["validation_layer"]
    lines.append("validation layer: " + (f"{vl['messages']} message(s)" if vl["enabled"]
                                         else "not installed (apt-get install vulkan-validationlayers)"))
    for m in vl.get("first", []):
        lines.append("  " + m[:300])
    n = len(rep["cases"])
    failed = sum(not c["ok"] for c in rep["cases"])
    lines.append(f"\n{n - failed} passed, {failed} failed" if rep["ok"] or failed
                 else f"\n{n} passed, 0 failed (but see spirv-val / validation layer above)")
    return "\n".join(lines)


def add_parser(sub):
    p = sub.add_parser("validate", help="check every shader on a Vulkan device against numpy")
    p.add_argument("--device", type=int, default=None,
                   help="Vulkan device index from `nexvk devices` (default: NEXVK_DEVICE or the best)")
    p.add_argument("--quick", action="store_true",
                   help="a representative subset (under a minute on lavapipe)")
    p.add_argument("--filter", default=None, metavar="TEXT",
                   help="run only cases whose name contains TEXT, e.g. 'attention kfmt=turbo3'")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report as JSON")
    p.add_argument("--no-layer", action="store_true",
                   help="do not enable the Khronos validation layer even when installed")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args):
    from nexvk.device import layers
    # the report file is opened first: a bad path fails now, not after a run of minutes
    out = open(args.json, "w") if args.json else None
    try:
        # the layer's log lives in a temporary directory removed at the end
        # (ignore_cleanup_errors: the Vulkan instance may still hold the file open)
        with tempfile.TemporaryDirectory(prefix="nexvk-validate-",
                                         ignore_cleanup_errors=True) as tmp:
            log = None
            if not args.no_layer:  # must happen before the first Vulkan instance of this process
                log = Path(tmp) / "validation.log"
                if not layers.enable(log):
                    log = None
            rep = validate(args.device, quick=args.quick, pattern=args.filter,
                           progress=sys.stderr.isatty(), layer_log=log)
        print(format_report(rep))
        if out:
            json.dump(rep, out, indent=2, default=str)
            print(f"report written to {args.json}")
    except BaseException:
        if out:
            out.close()
            Path(args.json).unlink(missing_ok=True)
        raise
    if out:
        out.close()
    return 0 if rep["ok"] else 1
