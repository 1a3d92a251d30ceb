"""`nexvk calibrate`: a short measured calibration that the hardened cache then uses by name.

1. KLD per layer (as KVTuner does): for each layer and each of K and V, the KLD against an f16
   cache when only that tensor is stored in the base turbo format (hardened as it will run:
   key mean and scale from each window's first append, f16 sinks) and everything else
   stays f16.
2. Formats for a target bit rate: every tensor starts at the cheapest candidate format; the
   upgrade with the largest predicted KLD drop per added byte is taken until the next one
   would pass the budget. A tensor's predicted KLD in format f is its measured KLD times
   nmse(f) / nmse(base) (the formats' relative error on Gaussian vectors).

The preset is a small JSON file in $NEXVK_HOME/presets/<model file stem>/<name>.json;
`nexvk run`, `ppl` and `plan` load it with --preset NAME (Python: load_preset).
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

from nexvk.cache.config import CacheConfig
from nexvk.quant.cachespec import CacheSpec, format_layer_types

PRESET_VERSION = 1
CANDIDATES = ("turbo2", "turbo3", "turbo4")


def preset_path(model_path, name):
    from nexvk.model.fetch import home
    if not name or not all(ch.isalnum() or ch in "-_." for ch in name) or name.startswith("."):
        raise ValueError(f"preset name {name!r}: use letters, digits, '-', '_' or '.'")
    return home() / "presets" / Path(model_path).stem / f"{name}.json"


def load_preset(model_path, name):
    """The CacheConfig of a preset written by `nexvk calibrate` for this model."""
    path = preset_path(model_path, name)
    if not path.is_file():
        raise FileNotFoundError(f"no preset {name!r} for {Path(model_path).name} (looked for "
                                f"{path}); make one with `nexvk calibrate --name {name}`")
    try:
        p = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(p, dict):
            raise ValueError(f"a JSON {type(p).__name__}, not an object")
        if p.get("version") != PRESET_VERSION:
            raise ValueError(f"version {p.get('version')!r}, expected {PRESET_VERSION}")
        for key, kind in (("k_type", str), ("v_type", str), ("layer_types", str), ("sinks", int)):
            if key not in p:
                raise ValueError(f"no {key!r}")
            if isinstance(p[key], bool) or not isinstance(p[key], kind):
                raise ValueError(f"{key!r} must be {'a string' if kind is str else 'an integer'}, "
                                 f"got {str(p[key])[:40]!r}")
        return CacheConfig(p["k_type"], p["v_type"], layer_types=p["layer_types"],
                           sinks=p["sinks"])
    except ValueError as e:  # also bad JSON, bytes that are not UTF-8 and bad formats or sinks
        raise ValueError(f"preset {path} is not a valid nexvk preset: {e}") from None


def check_bits(bits):
    """A target bit rate must be a finite number > 0 (NaN made a preset of NaN bits)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float, np.integer, np.floating)) \
            or not 0 < bits < math.inf:
        raise ValueError(f"bits must be a finite number of bits per value > 0, got {bits!r}")


def _enough_text(tok, text, n_tokens):
    """The shortest prefix of text (growing by doubling) that has n_tokens tokens."""
    n = 8 * n_tokens
    while n < len(text) and len(tok.encode(text[:n], bos=False)) < n_tokens:
        n *= 2
    return text[:n]


def nmse(fmt, head_dim, n=4096, seed=0):
    """Relative squared error of a format on Gaussian vectors (its bits' worth)."""
    from nexvk.quant import Codec
    x = np.random.default_rng(seed).standard_normal((n, head_dim)).astype(np.float32)
    c = Codec(fmt, head_dim)
    return float(((c.decode(c.encode(x)) - x) ** 2).sum() / (x ** 2).sum())


def allocate(kld, costs, errs, budget):
    """Choose a format per tensor minimizing the predicted KLD within a byte budget.

    kld (2, L): measured KLD of each layer's K (row 0) and V (row 1) alone in the base
    format; costs (2, L, C) bytes of each tensor in each of C candidate formats (increasing);
    errs (C,): each candidate's error relative to the base format; budget: total bytes of the
    tensors. Returns choice indices (2, L) and the predicted total KLD."""
    kld, costs, errs = np.asarray(kld, float), np.asarray(costs, float), np.asarray(errs, float)
    choice = np.zeros(kld.shape, int)
    used = costs[..., 0].sum()
    if used > budget:
        raise ValueError("the budget is below the cheapest candidate format everywhere")
    while True:
        nxt = np.minimum(choice + 1, costs.shape[2] - 1)
        pick = lambda a, idx: np.take_along_axis(a, idx[..., None], 2)[..., 0]  # noqa: E731
        cost = pick(costs, nxt) - pick(costs, choice)
        gain = kld * (errs[choice] - errs[nxt])
        ok = (nxt > choice) & (used + cost <= budget)
        if not ok.any():
            break
        ratio = np.where(ok, gain / np.where(cost > 0, cost, 1), -np.inf)
        t, layer = np.unravel_index(np.argmax(ratio), ratio.shape)
        used += cost[t, layer]
        choice[t, layer] += 1
    return choice, float((kld * errs[choice]).sum())


def calibrate(model, text, bits, ctx=512, chunks=1, base=("turbo3", "turbo3"),
              candidates=CANDIDATES, sinks=None, progress=True):
    """Measure the KLD per layer on `text` and choose formats for `bits` per value at `ctx`
    tokens. Returns the preset as a dict (see save_preset)."""
    from nexvk.model.eval import perplexity
    check_bits(bits)
    cfg = model.cfg
    L = cfg.n_layers
    spec = CacheSpec.build(L, *base, sinks=sinks)
    text = _enough_text(model.tokenizer, text, ctx * chunks)  # tokenized once per run below
    f16_logits = {}
    kw = dict(ctx=ctx, chunks=chunks, progress=False, kld_base=f16_logits)
    windows = perplexity(model, text, **kw)["n_chunks"]
    kld = np.zeros((2, L))
    steps = [(t, layer) for layer in range(L) for t in (0, 1)]
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="KLD per layer", unit="run", file=sys.stderr)
    for t, layer in steps:
        pair = (base[0], "f16") if t == 0 else ("f16", base[1])
        opts = dict(layer_types={layer: pair}, sinks=spec.sinks)
        r = perplexity(model, text, k_type="f16", v_type="f16", kld=True, cache_opts=opts, **kw)
        kld[t, layer] = r["kld_mean"]

    # bytes of each tensor in each candidate format at ctx tokens, as the cache counts them
    heads = np.asarray(cfg.n_kv_heads, float)
    dims = (cfg.head_dim, cfg.head_dim_v)
    costs = np.array([[heads * spec.part_bytes(f, dims[t], ctx, spec.sinks, key=t == 0)
                       for f in candidates]
                      for t in (0, 1)]).transpose(0, 2, 1)       # (2, L, C)
    values = heads.sum() * ctx * sum(dims)
    errs = [nmse(f, cfg.head_dim) / nmse(base[0], cfg.head_dim) for f in candidates]
    choice, predicted = allocate(kld, costs, errs, bits * values / 8)
    k_types = [candidates[i] for i in choice[0]]
    v_types = [candidates[i] for i in choice[1]]
    layer_types = format_layer_types(k_types, v_types, *base)
    chosen = CacheSpec.build(L, *base, layer_types, spec.sinks)
    total = sum(h * chosen.layer_bytes(i, *dims, ctx) for i, h in enumerate(cfg.n_kv_heads))
    return {"version": PRESET_VERSION, "k_type": base[0], "v_type": base[1],
            "layer_types": layer_types, "sinks": spec.sinks,
            "bits_per_value": 8 * total / values, "target_bits": bits, "ctx": ctx,
            "predicted_kld": predicted, "kld_per_layer": {"k": kld[0].tolist(), "v": kld[1].tolist()},
            "calibration": {"windows": windows, "ctx": ctx}}


def save_preset(model_path, name, preset):
    path = preset_path(model_path, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(preset))
    return path
