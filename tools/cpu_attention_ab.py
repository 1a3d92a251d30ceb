"""Decode attention of the cpu backend with two versions of its kernel, interleaved in one
process: this checkout's nexvk/cpu/attention.py against another version of that file (e.g.
main's), on the same cache and queries, so that a shared machine's load moves both alike.
One thread; per shape, format and context: the best of --rounds rounds of --calls calls
(layers visited in turn, as a decode step does), the ratio, and the largest difference
between the two outputs (0 when the arithmetic is the same).

    git show main:nexvk/cpu/attention.py > /tmp/attention_main.py
    .venv/bin/python tools/cpu_attention_ab.py /tmp/attention_main.py [--formats f16,turbo3]
        [--contexts 512,2048] [--rounds 5] [--calls 200]

(from a worktree whose nexvk is not the installed one: PYTHONPATH=. in front).
"""
import argparse
import os
import time
from types import SimpleNamespace

import numba
import numpy as np
from cpu_decode_ab import load_module

from nexvk import bench
from nexvk.cache.cpu_store import CpuStore
from nexvk.cpu import attention
from nexvk.quant.formats import make

LAYERS = 4


def store(fmt, shape, ctx):
    """A cpu store of LAYERS layers holding the same ctx rows, and peaked decode queries."""
    H, hkv, d = bench.SHAPES[shape]
    g = SimpleNamespace(n_layers=LAYERS, n_kv_heads=hkv, head_dim=d, head_dim_v=d, max_heads=H,
                        kfmts=[make(fmt, d)] * LAYERS, vfmts=[make(fmt, d)] * LAYERS,
                        windows=[0] * LAYERS, slots=[ctx] * LAYERS, sinks=[0] * LAYERS)
    st = CpuStore(g)
    k, v = bench.kv_data(shape, ctx)
    for layer in range(LAYERS):
        st.append(layer, 0, k.reshape(-1, d), v.reshape(-1, d))
    return st, bench.peaked_queries(k, H)


def best_time(fn, rounds, calls):
    fn()   # compiles (or loads the cache)
    best = np.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="another version of nexvk/cpu/attention.py (same attend/Scratch API)")
    ap.add_argument("--formats", default="f16,turbo3,q8_0")
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--sparse-v", type=float, default=bench.SPARSE_V)
    a = ap.parse_args()
    numba.set_num_threads(1)
    variants = {"this": attention, "other": load_module(a.other, "attention_other")}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| shape | format | ctx | this (us) | other (us) | other / this | max diff |\n"
          "|---|---|---|---|---|---|---|")
    for shape in bench.SHAPES:
        H, hkv, d = bench.SHAPES[shape]
        for fmt in a.formats.split(","):
            for ctx in (int(c) for c in a.contexts.split(",")):
                st, q = store(fmt, shape, ctx)
                kk, vk = st.kinds[0]
                t, outs = {}, {}
                for name, mod in variants.items():
                    scr = mod.Scratch.make(st.scr.qr.shape[0], H, hkv, ctx, d, 1)
                    out = np.empty(q.shape, np.float32)
                    turn = [0]

                    def call(mod=mod, scr=scr, out=out):
                        layer = turn[0] = (turn[0] + 1) % LAYERS
                        mod.attend(kk, vk, *st.views[layer], q, ctx - 1, 1 / np.sqrt(d),
                                   a.sparse_v, 0, out, scr, threads=1)
                    t[name] = best_time(call, a.rounds, a.calls) * 1e6
                    outs[name] = out
                diff = float(np.abs(outs["this"] - outs["other"]).max())
                print(f"| {shape} | {fmt} | {ctx} | {t['this']:.1f} | {t['other']:.1f} | "
                      f"{t['other'] / t['this']:.2f} | {diff:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
