"""Y = X W^T for the T tokens of a step (prefill) with W in its GGML format: mul_mm_<type>.comp.

Bindings: 0 W part, 1 X (float, (T, ldx)), 2 Y (float, (T, ldy)), 3 Dyn. Spec constants:
[WG, NR, TT, K, SHX, LDX, LDY]. Push: [w_off, x_off, y_off + part.row0, acc, part.rows]
(acc 1: Y += X W^T).
Dyn: T. Workgroups are sized for max_tokens; tiles past T exit.
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import ceil_div, check_extent
from nexvk.kernels.oneshot import Scratch


def ref(w, x, y=None):
    """w: (rows, K), x: (T, K) float32 -> (T, rows) float32, added to y when given."""
    out = (x.astype(np.float32) @ w.T).astype(np.float32)
    return out if y is None else (y + out).astype(np.float32)


def dispatches(dev, weight, x, y, dyn, max_tokens, x_off=0, y_off=0, ldx=None, ldy=None,
               acc=False, **tune):
    p = tuning.get(dev, "mul_mm", **tune)
    k = weight.cols
    ldx, ldy = ldx or k, ldy or weight.rows
    if ldx < k or ldy < weight.rows:
        raise ValueError(f"mul_mm: row strides ldx={ldx}, ldy={ldy} are shorter than the rows")
    check_extent(x, x_off, (max_tokens - 1) * ldx + k, "mul_mm X")
    check_extent(y, y_off, (max_tokens - 1) * ldy + weight.rows, "mul_mm Y")
    out = []
    for part in weight.parts:
        spec = [p["WG"], p["NR"], p["TT"], k, p["SHX"], ldx, ldy]
        groups = ceil_div(part.rows, p["WG"] * p["NR"]) * ceil_div(max_tokens, p["TT"])
        pipe = dev.pipeline(f"mul_mm_{weight.wtype.name}", [part.buffer, x, y, dyn], groups, spec)
        out.append((pipe, [part.w_off, x_off, y_off + part.row0, int(acc), part.rows]))
    return out


def run(dev, weight, x, y=None, **tune):
    """Numpy in and out: x (T, K); y (T, rows) to accumulate into, or None."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    T = len(x)
    with Scratch(dev, "mul_mm") as s:
        xb = s.buf("x", x)
        yb = s.buf("y", y, size=T * weight.rows)
        d = s.dyn(T)
        got = s.run(dispatches(dev, weight, xb, yb, d, T, acc=y is not None, **tune), [yb])[0]
    return got[:T * weight.rows].reshape(T, weight.rows)
