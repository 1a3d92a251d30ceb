"""y = W x for one token (decode) with W in its GGML format: mul_mv_<type>.comp.

Bindings: 0 W part (uint32 streams), 1 x (float), 2 y (float), 3 Dyn. Spec constants:
[WG, NR, TPR, K]. Push: [w_off, x_off, y_off + part.row0, flags, part.rows] with flags bit 0
ACC (y += W x), bit 1 LAST (x is row T-1 of a (T, K) block). Dyn: T.
One dispatch per weight part; they are independent.
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import ceil_div, check_extent
from nexvk.kernels.oneshot import Scratch


def ref(w, x, y=None, last_row=None):
    """w: (rows, K) float32 (ggml_types.dequantize); x: (T, K) float32. Returns W x[T-1 if
    last_row else 0] as (rows,) float32, added to y when y is given (ACC)."""
    xr = x[last_row if last_row is not None else 0].astype(np.float32)
    out = (w @ xr).astype(np.float32)
    return out if y is None else (y + out).astype(np.float32)


def dispatches(dev, weight, x, y, dyn, x_off=0, y_off=0, acc=False, last=False, **tune):
    """(pipeline, push) per weight part. x: K floats at x_off (row T-1 of a (T, K) block when
    last); y: weight.rows floats at y_off."""
    p = tuning.get(dev, "mul_mv", **tune)
    k = weight.cols
    check_extent(x, x_off, k, "mul_mv x")
    check_extent(y, y_off, weight.rows, "mul_mv y")
    per_group = p["WG"] // p["TPR"] * p["NR"]
    out = []
    for part in weight.parts:
        spec = [p["WG"], p["NR"], p["TPR"], k]
        pipe = dev.pipeline(f"mul_mv_{weight.wtype.name}", [part.buffer, x, y, dyn],
                            ceil_div(part.rows, per_group), spec)
        out.append((pipe, [part.w_off, x_off, y_off + part.row0, int(acc) | 2 * int(last), part.rows]))
    return out


def run(dev, weight, x, y=None, last=False, **tune):
    """Numpy in and out: x (T, K); y (rows,) to accumulate into, or None."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    with Scratch(dev, "mul_mv") as s:
        xb = s.buf("x", x)
        yb = s.buf("y", y if y is not None else None, size=weight.rows)
        d = s.dyn(len(x))
        return s.run(dispatches(dev, weight, xb, yb, d, acc=y is not None, last=last, **tune),
                     [yb])[0][:weight.rows]
