"""Decode attention of the cpu backend with two versions of its kernel, interleaved in one
process: this checkout's nexvk/cpu/attention.py against another version of that file (e.g.
main's), on the same cache and queries, so that a shared machine's load moves both alike.
One thread; per shape, format and context: the best of --rounds rounds of --calls calls,
the two versions taking turns round by round (layers visited in turn, as a decode step
does), in process CPU time (time the host takes the vCPU away, which moves wall time here
by up to 1.5x, is not charged), the ratio, and the largest difference between the two
outputs (0 when the arithmetic is the same). Two copies of one kernel still differ by up
to 15% here from run to run: read a ratio as a change only well beyond that.

    git show main:nexvk/cpu/attention.py > /tmp/attention_main.py
    .venv/bin/python tools/cpu_attention_ab.py /tmp/attention_main.py [--formats f16,turbo3]
        [--contexts 512,2048] [--rounds 20] [--calls 40] [--sparse-v 0]

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


def best_times(fns, rounds, calls):
    """{name: the best per-call CPU time over `rounds` rounds of `calls` calls}, the
    functions taking turns round by round."""
    for fn in fns.values():
        fn()   # compiles (or loads the cache)
    best = dict.fromkeys(fns, np.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.process_time() - t0) / calls)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="another version of nexvk/cpu/attention.py (same attend/Scratch API)")
    ap.add_argument("--formats", default="f16,turbo3,q8_0")
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--sparse-v", type=float, default=bench.SPARSE_V)
    a = ap.parse_args()
    numba.set_num_threads(1)
    variants = {"this": attention, "other": load_module(a.other, "attention_other")}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| shape | format | ctx | this (CPU us) | other (CPU us) | other / this | max diff |\n"
          "|---|---|---|---|---|---|---|")
    for shape in bench.SHAPES:
        H, hkv, d = bench.SHAPES[shape]
        for fmt in a.formats.split(","):
            for ctx in (int(c) for c in a.contexts.split(",")):
                st, q = store(fmt, shape, ctx)
                kk, vk = st.kinds[0]
                calls, outs = {}, {}
                for name, mod in variants.items():
                    scr = mod.Scratch.make(st.scr.qr.shape[0], H, hkv, ctx, d, 1)
                    outs[name] = np.empty(q.shape, np.float32)
                    turn = [0]

                    def call(mod=mod, scr=scr, out=outs[name], turn=turn):
                        layer = turn[0] = (turn[0] + 1) % LAYERS
                        mod.attend(kk, vk, *st.views[layer], q, ctx - 1, 1 / np.sqrt(d),
                                   a.sparse_v, 0, out, scr, threads=1)
                    calls[name] = call
                t = {k: v * 1e6 for k, v in best_times(calls, a.rounds, a.calls).items()}
                diff = float(np.abs(outs["this"] - outs["other"]).max())
                print(f"| {shape} | {fmt} | {ctx} | {t['this']:.1f} | {t['other']:.1f} | "
                      f"{t['other'] / t['this']:.2f} | {diff:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
