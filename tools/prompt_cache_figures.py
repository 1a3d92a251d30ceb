#!/usr/bin/env python3
"""Prompt-cache figures for README.md: file bytes against an f16 cache of the same tokens, and
time to first token of a prompt with and without its file (the model already loaded).

    python tools/prompt_cache_figures.py --tokens 2048 --backend numpy

The prompt is the first N tokens of wikitext-2 (raw, test) from ../shared/data. "Without":
prefill all N tokens and sample the first. "With": a fresh cache loads the file (read, sha256
check, restore) and runs the last prompt token again for its logits (nexvk.model.state.
prefill_cached). Each configuration runs once; run it on an idle machine and note `uptime`.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from nexvk.model.model import Model
from nexvk.model.sample import Sampler
from nexvk.model.state import prefill_cached

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--configs", default="turbo3/turbo3,turbo4/turbo3,q8_0/q8_0,f16/f16")
    args = ap.parse_args()
    base = Model.load(args.model, ctx=args.tokens + 16, backend=args.backend)
    ids = base.tokenizer.encode(TEXT.read_text(encoding="utf-8"), bos=True)[:args.tokens]
    a = base.arch
    f16 = len(ids) * a.n_layers * 2 * a.n_kv_heads * a.head_dim * 2
    print(f"{len(ids)} tokens; an f16 cache of them: {f16 / 2**20:.2f} MiB; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| K / V | file | vs f16 | first token without file | with file | first token |")
    print("|---|---|---|---|---|---|")
    sample = Sampler(0.0, 0, 1.0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.configs.split(","):
            k, v = cfg.split("/")
            path = Path(tmp) / f"{k}-{v}.npz"
            m = base.with_cache(k, v)
            t0 = time.perf_counter()
            first = sample(m.prefill(ids, reuse=False))
            cold = time.perf_counter() - t0
            size = m.save_state(path)
            m = base.with_cache(k, v)
            t0 = time.perf_counter()
            again = sample(prefill_cached(m, ids, path))
            warm = time.perf_counter() - t0
            assert m.stats["reused_tokens"] == len(ids) - 1
            same = "same" if again == first else "OTHER"
            print(f"| {k} / {v} | {size / 2**20:.2f} MiB | {size / f16:.3f}x | {cold:.2f} s | "
                  f"{warm:.3f} s ({cold / warm:.0f}x less) | {same} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
