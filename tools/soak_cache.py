#!/usr/bin/env python3
"""Soak: many decode steps at the KVCache level, with host and device memory at start and end.

    python tools/soak_cache.py                      # 10,000 steps, numpy and vulkan
    python tools/soak_cache.py --layers 30 --steps 2000 --backends vulkan

One decode step appends one token to every layer and attends over it (SmolLM2-135M's attention
geometry: 3 KV heads x 64, 9 query heads; --layers of its 30, default 4 to keep the run to
minutes on lavapipe). When the cache is full it is reset and filling starts again, so a run of
10,000 steps at capacity 512 cycles through every context length about 20 times. Memory is
read after a warm-up of one full cycle (the first pass records the device's command
sequences) and again at the end: resident set size of the process (VmRSS) and, on vulkan, the
device pool's bytes and allocation count and the pipelines and sequences cached. Leaks show up
as growth between the two; RSS is printed every 1,000 steps too.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nexvk import KVCache  # noqa: E402

HKV, D, H = 3, 64, 9  # SmolLM2-135M: KV heads, head_dim, query heads


def rss_mib():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def device_state(cache):
    dev = getattr(cache._impl, "dev", None)
    if dev is None:
        return {}
    return {"pool_mib": dev.pool.nbytes / 2**20, "allocations": dev.pool.allocations,
            "pipelines": dev.n_pipelines, "sequences": dev.n_sequences}


def soak(backend, steps, layers, capacity, k_type, v_type, sparse_v, seed=0):
    rng = np.random.default_rng(seed)
    c = KVCache(layers, HKV, D, capacity, k_type, v_type, backend=backend, n_heads=H)
    k = rng.standard_normal((64, 1, HKV, D)).astype(np.float32)  # a few distinct tokens
    v = rng.standard_normal((64, 1, HKV, D)).astype(np.float32)
    q = rng.standard_normal((64, 1, H, D)).astype(np.float32)

    def step(i):
        if c.length(0) == capacity:
            c.reset()
        for layer in range(layers):
            c.append(layer, k[i % 64], v[i % 64])
            c.attention(layer, q[i % 64], sparse_v=sparse_v)

    for i in range(capacity):  # warm-up: one full cycle
        step(i)
    start = {"rss_mib": rss_mib(), **device_state(c)}
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
        if (i + 1) % 1000 == 0:
            print(f"  {backend} step {i + 1}: rss {rss_mib():.1f} MiB, "
                  f"{(time.perf_counter() - t0) / (i + 1) * 1e3:.2f} ms/step", file=sys.stderr)
    seconds = time.perf_counter() - t0
    end = {"rss_mib": rss_mib(), **device_state(c)}
    return {"backend": backend, "steps": steps, "seconds": seconds, "start": start, "end": end}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=4, help="layers of 30 (default 4)")
    ap.add_argument("--capacity", type=int, default=512, help="tokens before reset (512)")
    ap.add_argument("--backends", default="numpy,vulkan")
    ap.add_argument("-ctk", dest="k_type", default="turbo3")
    ap.add_argument("-ctv", dest="v_type", default="turbo3")
    ap.add_argument("--sparse-v", type=float, default=1e-6)
    args = ap.parse_args(argv)
    rows = []
    for backend in args.backends.split(","):
        r = soak(backend, args.steps, args.layers, args.capacity, args.k_type, args.v_type,
                 args.sparse_v)
        rows.append(r)
        s, e = r["start"], r["end"]
        dev = (f"{s['pool_mib']:.2f} -> {e['pool_mib']:.2f} MiB, allocations "
               f"{s['allocations']} -> {e['allocations']}, pipelines {s['pipelines']} -> "
               f"{e['pipelines']}, sequences {s['sequences']} -> {e['sequences']}"
               if "pool_mib" in s else "-")
        print(f"| {backend} | {r['steps']} | {r['seconds']:.0f} | "
              f"{r['seconds'] / r['steps'] * 1e3:.2f} | {s['rss_mib']:.1f} -> {e['rss_mib']:.1f} "
              f"| {dev} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
