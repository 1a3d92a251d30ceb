"""x += y over T rows of n values (a residual add no product could fuse): add.comp.

Bindings: 0 x (in place), 1 y, 2 Dyn. Spec constants: [WG, N, LDX, LDY]. Push: [x_off, y_off].
Dyn: T.
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import ceil_div, check_extent
from nexvk.kernels.oneshot import Scratch


def ref(x, y):
    return (x + y).astype(np.float32)


def dispatches(dev, x, y, dyn, n, max_tokens, x_off=0, y_off=0, ldx=None, ldy=None, **tune):
    p = tuning.get(dev, "elementwise", **tune)
    ldx, ldy = ldx or n, ldy or n
    check_extent(x, x_off, (max_tokens - 1) * ldx + n, "add x")
    check_extent(y, y_off, (max_tokens - 1) * ldy + n, "add y")
    return [(dev.pipeline("add", [x, y, dyn], max_tokens * ceil_div(n, p["WG"]),
                          [p["WG"], n, ldx, ldy]), [x_off, y_off])]


def run(dev, x, y, **tune):
    x, y = np.atleast_2d(np.asarray(x, np.float32)), np.atleast_2d(np.asarray(y, np.float32))
    T, n = x.shape
    with Scratch(dev, "add") as s:
        xb, yb = s.buf("x", x), s.buf("y", y)
        d = s.dyn(T)
        got = s.run(dispatches(dev, xb, yb, d, n, T, **tune), [xb])[0]
    return got[:T * n].reshape(T, n)
