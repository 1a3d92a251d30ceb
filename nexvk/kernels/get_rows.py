"""Embedding lookup out[t] = scale * W[ids[t]] for W in any GGML format: get_rows_<type>.comp.

Bindings: 0 W part, 1 out (float, (T, ldo)), 2 Dyn. Spec constants: [WG, K, SCALE (float),
LDO]. Push: [w_off, o_off, part.row0, part.rows]. Dyn: T and the ids (words 4..).
One dispatch per part; each writes only the tokens whose id falls in its rows.
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import ceil_div, check_extent
from nexvk.kernels.oneshot import Scratch


def ref(w, ids, scale=1.0):
    """w: (rows, K) float32, ids: (T,) -> (T, K) float32."""
    return (w[np.asarray(ids)] * np.float32(scale)).astype(np.float32)


def dispatches(dev, weight, out, dyn, max_tokens, o_off=0, ldo=None, scale=1.0, **tune):
    p = tuning.get(dev, "get_rows", **tune)
    k = weight.cols
    ldo = ldo or k
    check_extent(out, o_off, (max_tokens - 1) * ldo + k, "get_rows out")
    groups = max_tokens * ceil_div(k // 32, p["WG"])
    return [(dev.pipeline(f"get_rows_{weight.wtype.name}", [part.buffer, out, dyn], groups,
                          [p["WG"], k, float(scale), ldo]),
             [part.w_off, o_off, part.row0, part.rows]) for part in weight.parts]


def run(dev, weight, ids, scale=1.0, **tune):
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= weight.rows):
        raise ValueError(f"token ids must lie in 0..{weight.rows - 1}")
    T = len(ids)
    with Scratch(dev, "get_rows") as s:
        ob = s.buf("out", size=T * weight.cols)
        d = s.dyn(T, ids=ids)
        got = s.run(dispatches(dev, weight, ob, d, T, scale=scale, **tune), [ob])[0]
    return got[:T * weight.cols].reshape(T, weight.cols)
