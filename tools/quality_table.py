#!/usr/bin/env python3
"""Perplexity and KLD of cache configurations on a model (default SmolLM2), as in README.md.

    python tools/quality_table.py --chunks 4 --backend numpy
    python tools/quality_table.py --chunks 16 --configs f16/f16,turbo3/turbo3,turbo3/turbo3+plain
    python tools/quality_table.py --model gemma.gguf --chunks 2 --bos-insert   # Gemma-3 rows

A configuration is K/V, optionally followed by +option terms for KVCache: `+plain`,
`+sinks=N`, `+layer_types=0-3:turbo4/turbo3` (commas inside it written as ';'),
`+noscale` (key_scale=False), `+preset=NAME` (a `nexvk calibrate` preset).
Turbo formats are the hardened cache unless +plain. Uses wikitext-2 (raw, test) from
../shared/data; f16 logits are computed once per window and reused for every KLD (like
llama.cpp's --kl-divergence-base). bits/value include norms, scales, sinks and key tables
at the window length.
"""
import argparse
import time
from pathlib import Path

import nexvk
from nexvk.model.fetch import resolve_model

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"
CONFIGS = ["f16/f16", "q8_0/q8_0", "q4_0/q4_0", "turbo4/turbo4", "q8_0/turbo4", "q8_0/turbo3",
           "turbo4/turbo3", "turbo4/turbo3+plain", "turbo3/turbo3", "turbo3/turbo3+plain",
           "turbo2/turbo2", "turbo2/turbo2+plain"]


def parse_config(text, model_path):
    """'K/V+opt+opt=val' -> (k_type, v_type, cache_opts)."""
    pair, *opts = text.split("+")
    k, v = pair.split("/")
    cache = {}
    for opt in opts:
        key, _, val = opt.partition("=")
        if key == "plain":
            cache["plain"] = True
        elif key == "noscale":
            cache["key_scale"] = False
        elif key == "sinks":
            cache["sinks"] = int(val)
        elif key == "layer_types":
            cache["layer_types"] = val.replace(";", ",")
        elif key == "preset":
            from nexvk.model.calibrate import load_preset
            c = load_preset(model_path, val)
            k, v, cache = c.k_type, c.v_type, {"layer_types": c.layer_types, "sinks": c.sinks}
        else:
            raise ValueError(f"unknown option {opt!r} in {text!r}")
    return k, v, cache


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=4, help="512-token windows (default 4)")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "vulkan"))
    ap.add_argument("--file", default=str(TEXT), help="text file (default: wikitext-2 test)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated configurations, e.g. f16/f16,turbo3/turbo3+plain "
                         "(default: the README's)")
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--bos-insert", action="store_true",
                    help="windows of BOS + the next 511 tokens (no token overwritten) instead "
                         "of llama.cpp's first-token-replaced windows")
    args = ap.parse_args()
    path = resolve_model(args.model)
    configs = args.configs.split(",") if args.configs else CONFIGS
    text = Path(args.file).read_text(encoding="utf-8")
    model = nexvk.Model.load(path, ctx=512, backend=args.backend)
    base = {}
    print(f"| K / V | cache | bits/value | PPL | KLD mean | KLD p99 | top-1 agree | (backend "
          f"{args.backend}, {args.chunks} x 512 windows) |")
    print("|---|---|---|---|---|---|---|---|")
    for config in configs:
        kt, vt, opts = parse_config(config, path)
        is_f16 = (kt, vt) == ("f16", "f16") and not opts
        t = time.perf_counter()
        r = nexvk.perplexity(model, text, ctx=512, chunks=args.chunks, k_type=kt, v_type=vt,
                             kld=not is_f16, kld_base=base, progress=False, cache_opts=opts,
                             bos_insert=args.bos_insert)
        kld = (f"{r['kld_mean']:.4f} | {r['kld_p99']:.3f} | {r['top1_agree']:.2f}%"
               if "kld_mean" in r else "- | - | -")
        print(f"| {config} | {r['cache']} | {r['bits_per_value']:.3f} | {r['ppl']:.3f} ± "
              f"{r['ppl_err']:.2f} | {kld} | {r['n_tokens']} tokens, "
              f"{time.perf_counter() - t:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
