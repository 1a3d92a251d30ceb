"""Gated linear unit out = act(gate) * up, act SiLU or GELU (tanh form, ggml's formula): glu.comp.

gate = x[t, 0:n] and up = x[t, up:up+n] of one (T, ldx) block: the gate and up products write
side by side. Bindings: 0 x, 1 out, 2 Dyn. Spec constants: [WG, N, ACT, LDX, UP, LDO].
Push: [x_off, o_off]. Dyn: T.
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import ceil_div, check_extent
from nexvk.kernels.oneshot import Scratch

ACTS = {"silu": 0, "gelu": 1}


def act(g, kind):
    g = g.astype(np.float32)
    if kind == "silu":
        with np.errstate(over="ignore"):                 # exp(-g) = inf gives -0, as on the device
            return g / (np.float32(1) + np.exp(-g))
    z = np.float32(0.7978845608028654) * g * (np.float32(1) + np.float32(0.044715) * g * g)
    return np.float32(0.5) * g * (np.float32(1) + np.tanh(z))


def ref(gate, up, kind="silu"):
    return (act(gate, kind) * up).astype(np.float32)


def dispatches(dev, x, out, dyn, n, max_tokens, kind="silu", x_off=0, o_off=0, ldx=None,
               up=None, ldo=None, **tune):
    if kind not in ACTS:
        raise ValueError(f"glu: unknown activation {kind!r}; use {' or '.join(ACTS)}")
    p = tuning.get(dev, "elementwise", **tune)
    ldx, up, ldo = ldx or 2 * n, up or n, ldo or n
    check_extent(x, x_off, (max_tokens - 1) * ldx + max(n, up + n), "glu x")
    check_extent(out, o_off, (max_tokens - 1) * ldo + n, "glu out")
    spec = [p["WG"], n, ACTS[kind], ldx, up, ldo]
    return [(dev.pipeline("glu", [x, out, dyn], max_tokens * ceil_div(n, p["WG"]), spec),
             [x_off, o_off])]


def run(dev, gate, up, kind="silu", **tune):
    gate, up = np.atleast_2d(np.asarray(gate, np.float32)), np.atleast_2d(np.asarray(up, np.float32))
    T, n = gate.shape
    with Scratch(dev, "glu") as s:
        xb = s.buf("x", np.concatenate([gate, up], axis=1))
        ob = s.buf("out", size=T * n)
        d = s.dyn(T)
        got = s.run(dispatches(dev, xb, ob, d, n, T, kind, **tune), [ob])[0]
    return got[:T * n].reshape(T, n)
