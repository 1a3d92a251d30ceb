"""Decode attention per layer on the CPU: the cpu store's kernels (f16 and turbo3, 1 and 2
threads) against the numpy store, in one run.

    .venv/bin/python benchmarks/cpu_attention.py [--contexts 512,2048,8192] [--rounds 7]
        [--sparse-v 1e-6] [--prefill 512]

--prefill T: instead of decode, T causal queries at the end of each context (one call,
the last T positions of a prompt), one layer per configuration.

Each configuration holds several layers of the same size and a decode step visits them in
turn, as a model does, so a layer's cache is not still in the CPU caches from its last call
(up to the shape's real layer count, at most ~200 MB of f16 cache). Configurations are
timed in interleaved rounds and the best round is reported. Two tables: the process's CPU
time of the one-thread configurations (time.process_time: what a quiet core would take,
little disturbed by other processes on a shared machine), then wall time, where one and
two threads can be compared (on a loaded machine two threads wait for each other). The
load average is printed with the results. Keys and
values are Gaussian, queries peaked (nexvk.bench.peaked_queries), turbo formats plain.
"""
import argparse
import os
import time
from types import SimpleNamespace

import numba
import numpy as np

from nexvk import bench
from nexvk.cache.numpy_store import NumpyStore
from nexvk.cache.cpu_store import CpuStore
from nexvk.quant.formats import make

LAYERS = {"smollm2-135m": 30, "8b-class": 32}
F16_BUDGET = 200 << 20


def stores(cls, fmt, shape, ctx, n_layers, k, v):
    H, hkv, d = bench.SHAPES[shape]
    g = SimpleNamespace(n_layers=n_layers, n_kv_heads=hkv, head_dim=d, head_dim_v=d, max_heads=H,
                        kfmts=[make(fmt, d)] * n_layers, vfmts=[make(fmt, d)] * n_layers,
                        windows=[0] * n_layers, slots=[ctx] * n_layers, sinks=[0] * n_layers)
    st = cls(g)
    st.append(0, 0, k.reshape(-1, d), v.reshape(-1, d))
    for layer in range(1, n_layers):   # the same rows in every layer, copied
        for dst, src in ((st.k[layer], st.k[0]), (st.v[layer], st.v[0])):
            dst[0][:], dst[1][:] = src
    return st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sparse-v", type=float, default=0.0)
    ap.add_argument("--prefill", type=int, default=0)
    a = ap.parse_args()
    threads = sorted({1, numba.config.NUMBA_NUM_THREADS})
    print(f"load average before: {os.getloadavg()[0]:.2f}; numba threads {threads}")
    head = ["shape", "ctx", "layers", "numpy f16"] + [f"cpu {f} {t}t" for f in ("f16", "turbo3")
                                                      for t in threads] + ["turbo3/f16 best"]
    rows_cpu, rows_wall = [], []
    for shape in bench.SHAPES:
        H, hkv, d = bench.SHAPES[shape]
        for ctx in (int(c) for c in a.contexts.split(",")):
            n_layers = max(1, min(LAYERS[shape], F16_BUDGET // (ctx * hkv * d * 4)))
            k, v = bench.kv_data(shape, ctx)
            q = bench.peaked_queries(k, H)
            T = 1
            if a.prefill:
                T, n_layers = min(a.prefill, ctx), 1
                q = np.random.default_rng(2).standard_normal((T, H, d), dtype=np.float32)
            configs = [("numpy f16", stores(NumpyStore, "f16", shape, ctx, 1, k, v), 0)]
            for fmt in ("f16", "turbo3"):
                st = stores(CpuStore, fmt, shape, ctx, n_layers, k, v)
                configs += [(f"cpu {fmt} {t}t", st, t) for t in threads]
            best = {name: np.inf for name, _, _ in configs}
            best_cpu = dict(best)
            scale = 1 / np.sqrt(d)
            for _ in range(a.rounds):
                for name, st, t in configs:
                    if t:
                        numba.set_num_threads(t)
                    layers = len(st.k)
                    st.attention(0, q, ctx - T, scale, a.sparse_v)   # warm (compiled, cached)
                    t0, c0 = time.perf_counter(), time.process_time()
                    for layer in range(layers):
                        st.attention(layer, q, ctx - T, scale, a.sparse_v)
                    best[name] = min(best[name], (time.perf_counter() - t0) / layers)
                    best_cpu[name] = min(best_cpu[name], (time.process_time() - c0) / layers)
            one = [n for n, _, t in configs if t <= 1]
            rows_cpu.append(f"| {shape} | {ctx} | {n_layers} | " +
                            " | ".join(f"{best_cpu[n] * 1e3:.3f}" for n in one) +
                            f" | {best_cpu['cpu turbo3 1t'] / best_cpu['cpu f16 1t']:.2f} |")
            ratio = min(v for n, v in best.items() if "turbo3" in n) / \
                min(v for n, v in best.items() if "cpu f16" in n)
            rows_wall.append(f"| {shape} | {ctx} | {n_layers} | " +
                             " | ".join(f"{best[n] * 1e3:.3f}" for n, _, _ in configs) +
                             f" | {ratio:.2f} |")
            print(rows_cpu[-1], flush=True)
            del configs
    print("\nCPU time, one thread:\n| shape | ctx | layers | numpy f16 | cpu f16 | cpu turbo3 "
          "| turbo3/f16 |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows_cpu))
    print("\nWall time:\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" +
          "\n".join(rows_wall))
    what = f"one call of {a.prefill} queries" if a.prefill else "one decode token"
    print(f"load average after: {os.getloadavg()[0]:.2f} (ms per layer, {what})")


if __name__ == "__main__":
    main()
