"""One SmolLM2 decode token's 211 weight products, timed in one process: the cpu backend's
mul_mv on the weights as stored (1 and 2 threads) against numpy's float32 sgemv (OpenBLAS at
its default threads, then at one). A relative figure that holds up on a shared machine;
the process's CPU time ("cpu") is what a quiet core would take for the one-thread rows
(another process's load barely moves it, unlike wall time). PYTHONPATH=<another checkout>
runs the same products with that checkout's kernels (before/after).

    .venv/bin/python tools/cpu_products.py
"""
import os
import time

import numpy as np

from nexvk.cpu import jit, mul_mv
from nexvk.cpu.weights import load_weights
from nexvk.model.arch import Arch
from nexvk.model.config import Config
from nexvk.model.fetch import fetch_default
from nexvk.model.gguf import open_gguf


def timed(fn, n=15):
    fn()
    ts, cs = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return np.median(ts) * 1e3, min(ts) * 1e3, np.median(cs) * 1e3


def one_thread(fn):
    def run():
        with jit.one_blas_thread():
            fn()
    return run


def main():
    g = open_gguf(fetch_default(progress=False))
    w = load_weights(g, Arch.from_config(Config.from_gguf(g)))
    mats = [t for L in w.layers for t in vars(L).values() if hasattr(t, "q")] + [w.output]
    f32 = [t.dequantize() for t in mats]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(t.cols, dtype=np.float32) for t in mats]
    ys = [np.zeros(t.rows, np.float32) for t in mats]
    tmp = mul_mv.scratch(jit.max_threads(), 64)

    def cpu(threads):
        for t, x, y in zip(mats, xs, ys):
            mul_mv.run(t, x, y, False, tmp, threads)

    def sgemv():
        for t, x, y in zip(f32, xs, ys):
            np.matmul(t, x, out=y)

    runs = [(f"cpu mul_mv, {n} thread(s)", lambda n=n: cpu(n)) for n in (1, jit.max_threads())]
    runs += [("numpy sgemv, OpenBLAS default threads", sgemv),
             ("numpy sgemv, OpenBLAS 1 thread", one_thread(sgemv))]
    for name, fn in runs:
        med, best, cpu_ms = timed(fn)
        print(f"{name:<40} median {med:7.1f} ms  best {best:7.1f} ms  cpu {cpu_ms:7.1f} ms "
              f"per token "
              f"({len(mats)} products; load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
