#!/usr/bin/env python3
"""KLD of the hardened turbo3 cache by how a window arrives: its first P tokens in one call,
then 64 at a time (`nexvk ppl --first-append P`), against one prefill -- issue 15's table.

    python tools/arrival_table.py --chunks 2                     # key statistics of the file
    python tools/arrival_table.py --chunks 2 --stats sequence    # fitted per sequence (before)
    python tools/arrival_table.py --model gemma.gguf --ctx 512 --bos-insert --appends prefill

Wikitext-2 (raw, test) from ../shared/data; KLD against an f16 cache over the second half of
each window; the f16 logits are computed once per window and shared by every row.
`--stats sequence` builds the model without its file, so the cache fits its key statistics on
the append holding each layer's first non-sink position, as before issue 15.
"""
import argparse
import time
from pathlib import Path

import nexvk
from nexvk.model.fetch import resolve_model
from nexvk.model.model import Model

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=2, help="windows (default 2)")
    ap.add_argument("--ctx", type=int, default=1024, help="window length (default 1024)")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "vulkan"))
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--stats", default="file", choices=("file", "sequence"),
                    help="key statistics of the model file (default) or fitted per sequence")
    ap.add_argument("--appends", default="prefill,128,32,8,2,1",
                    help="first-append sizes, 'prefill' for one call (default: all of "
                         "prefill,128,32,8,2,1)")
    ap.add_argument("--bos-insert", action="store_true", help="as `nexvk ppl --bos-insert`")
    args = ap.parse_args()
    path = resolve_model(args.model)
    text = TEXT.read_text(encoding="utf-8")
    model = Model.load(path, ctx=args.ctx, backend=args.backend)
    if args.stats == "sequence":
        model = Model(model.cfg, model.w, model.tokenizer, args.ctx, cache=model.config)
    base = {}
    cache = nexvk.CacheConfig("turbo3", "turbo3")
    print(f"| first append | KLD mean | KLD p99 | top-1 agree | ({args.backend}, "
          f"{args.chunks} x {args.ctx} windows, key statistics: {args.stats}) |")
    print("|---|---|---|---|---|")
    for p in args.appends.split(","):
        t = time.perf_counter()
        r = nexvk.perplexity(model, text, ctx=args.ctx, chunks=args.chunks, kld=True,
                             kld_base=base, progress=False, cache=cache,
                             bos_insert=args.bos_insert,
                             first_append=None if p == "prefill" else int(p))
        print(f"| {p} | {r['kld_mean']:.4f} | {r['kld_p99']:.3f} | {r['top1_agree']:.2f}% | "
              f"{time.perf_counter() - t:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
