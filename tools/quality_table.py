#!/usr/bin/env python3
"""Perplexity and KLD of every cache format on a model (default SmolLM2), as in README.md.

    python tools/quality_table.py --chunks 4 --backend numpy
    python tools/quality_table.py --chunks 16 --backend vulkan
    python tools/quality_table.py --model gemma.gguf --chunks 2 --bos-insert   # Gemma-3 rows

Uses wikitext-2 (raw, test) from ../shared/data; f16 logits are computed once per window
and reused for every format's KLD (like llama.cpp's --kl-divergence-base).
"""
import argparse
import time
from pathlib import Path

import nexvk
from nexvk.model.fetch import resolve_model

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"
CONFIGS = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo4", "turbo4"),
           ("q8_0", "turbo4"), ("q8_0", "turbo3"), ("turbo4", "turbo3"), ("turbo3", "turbo3"),
           ("turbo2", "turbo2")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=4, help="512-token windows (default 4)")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "vulkan"))
    ap.add_argument("--file", default=str(TEXT), help="text file (default: wikitext-2 test)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated K/V pairs, e.g. f16/f16,q8_0/turbo3 (default: all)")
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--bos-insert", action="store_true",
                    help="windows of BOS + the next 511 tokens (no token overwritten) instead "
                         "of llama.cpp's first-token-replaced windows")
    args = ap.parse_args()
    configs = [tuple(c.split("/")) for c in args.configs.split(",")] if args.configs else CONFIGS
    text = Path(args.file).read_text(encoding="utf-8")
    model = nexvk.Model.load(resolve_model(args.model), ctx=512, backend=args.backend)
    d = model.arch.head_dim
    base = {}
    print(f"| K / V | bits/value | PPL | KLD mean | KLD p99 | top-1 agree | (backend {args.backend}, "
          f"{args.chunks} x 512 windows) |")
    print("|---|---|---|---|---|---|---|")
    for kt, vt in configs:
        t = time.perf_counter()
        r = nexvk.perplexity(model, text, ctx=512, chunks=args.chunks, k_type=kt, v_type=vt,
                             kld=(kt, vt) != ("f16", "f16"), kld_base=base, progress=False,
                             bos_insert=args.bos_insert)
        bpv = (nexvk.bits_per_value(kt, d) + nexvk.bits_per_value(vt, d)) / 2
        kld = (f"{r['kld_mean']:.4f} | {r['kld_p99']:.3f} | {r['top1_agree']:.2f}%"
               if "kld_mean" in r else "- | - | -")
        print(f"| {kt} / {vt} | {bpv:.3g} | {r['ppl']:.3f} ± {r['ppl_err']:.2f} | {kld} | "
              f"{r['n_tokens']} tokens, {time.perf_counter() - t:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
