"""Decode steps of the cpu backend with two mat-vec kernels, interleaved in one process: this
checkout's nexvk/cpu/mul_mv.py against another version of that file (e.g. main's), so that
a shared machine's load moves both alike. SmolLM2 Q4_1, a 448-token prompt, then rounds of
N decode steps per variant from the same position; prints each round's median step.

    git show main:nexvk/cpu/mul_mv.py > /tmp/mul_mv_main.py
    .venv/bin/python tools/cpu_decode_ab.py /tmp/mul_mv_main.py [--rounds 6] [--steps 16] [-t 2]

(from a worktree whose nexvk is not the installed one: PYTHONPATH=. in front).
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

import nexvk
from nexvk.bench import _prompt_ids
from nexvk.cpu import mul_mv, ops
from nexvk.model.fetch import fetch_default


def load_module(path, name="mul_mv_other"):
    """The Python file at path imported as module `name` (a version of a kernel module)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # numba's disk cache finds its functions by module name
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="another version of nexvk/cpu/mul_mv.py (same run/scratch API)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args()
    variants = {"this": mul_mv, "other": load_module(a.other)}
    m = nexvk.Model.load(fetch_default(progress=False), ctx=448 + a.steps + 1, backend="cpu",
                         threads=a.threads)
    logits = m.forward(_prompt_ids(m.tokenizer, 448), 0, last_only=True)
    base, first = m.pos, int(np.argmax(logits[-1]))
    res = {k: [] for k in variants}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for _ in range(a.rounds):
        for name, mod in variants.items():
            ops.mul_mv = mod
            m.ops._mv = mod.scratch(m.ops.threads, 0)
            m.cache.truncate(base)
            tok, ts = first, []
            for i in range(a.steps + 1):   # the first step warms up
                t0 = time.perf_counter()
                tok = int(np.argmax(m.forward([tok], base + i)[-1]))
                ts.append(time.perf_counter() - t0)
            res[name].append(np.median(ts[1:]) * 1e3)
    ops.mul_mv = mul_mv
    for name, r in res.items():
        print(f"{name:6s} median step per round (ms): {' '.join(f'{t:6.2f}' for t in r)}"
              f"  -> {1e3 / np.median(r):.1f} tok/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
