"""x += y over T rows of n values (a residual add no product could fuse), or x += b with one
row b of n values added to every row (bcast: a projection's bias): add.comp.

Bindings: 0 x (in place), 1 y, 2 Dyn. Spec constants: [WG, N, LDX, LDY, BCAST].
Push: [x_off, y_off].
Dyn: T.
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import ceil_div, check_extent
from nexvk.kernels.oneshot import Scratch


def ref(x, y):
    """x + y; y of shape (n,) is added to every row (numpy broadcasting, as bcast does)."""
    return (x + y).astype(np.float32)


def dispatches(dev, x, y, dyn, n, max_tokens, x_off=0, y_off=0, ldx=None, ldy=None,
               bcast=False, **tune):
    p = tuning.get(dev, "elementwise", **tune)
    ldx, ldy = ldx or n, ldy or n
    check_extent(x, x_off, (max_tokens - 1) * ldx + n, "add x")
    check_extent(y, y_off, (0 if bcast else (max_tokens - 1) * ldy) + n, "add y")
    return [(dev.pipeline("add", [x, y, dyn], max_tokens * ceil_div(n, p["WG"]),
                          [p["WG"], n, ldx, ldy, int(bcast)]), [x_off, y_off])]


def run(dev, x, y, **tune):
    """x (T, n) + y (T, n), or + y (n,) added to every row."""
    x, y = np.atleast_2d(np.asarray(x, np.float32)), np.asarray(y, np.float32)
    T, n = x.shape
    with Scratch(dev, "add") as s:
        xb, yb = s.buf("x", x), s.buf("y", y)
        d = s.dyn(T)
        got = s.run(dispatches(dev, xb, yb, d, n, T, bcast=y.ndim == 1, **tune), [xb])[0]
    return got[:T * n].reshape(T, n)
