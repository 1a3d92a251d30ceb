"""RMSNorm over groups of a row (GROUP = n: the usual norm; GROUP = head_dim: Gemma's per-head
q/k norm), optionally added into y (ACC): rms_norm.comp.

Bindings: 0 x, 1 w (float, GROUP values at w_off), 2 y (may be x itself), 3 Dyn. Spec
constants: [WG, N, GROUP, EPS (float), LDX, LDY]. Push: [x_off, w_off, y_off, acc, last].
Dyn: T; last: only row T-1 (the logits of a prefill's last token), dispatched as one row.
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import check_extent
from nexvk.kernels.oneshot import Scratch


def ref(x, w, eps, group=None, y=None):
    """x: (T, n) float32, w: (group,) -> (T, n), added to y when given."""
    T, n = x.shape
    g = group or n
    xg = x.reshape(T, n // g, g)
    ms = np.einsum("tgd,tgd->tg", xg, xg)[..., None] / np.float32(g)
    out = (xg * (np.float32(1.0) / np.sqrt(ms + np.float32(eps), dtype=np.float32)) * w).reshape(T, n)
    return out.astype(np.float32) if y is None else (y + out).astype(np.float32)


def dispatches(dev, x, w, y, dyn, n, max_tokens, eps, group=None, acc=False, x_off=0, w_off=0,
               y_off=0, ldx=None, ldy=None, last=False, **tune):
    p = tuning.get(dev, "rms_norm", **tune)
    g = group or n
    if n % g:
        raise ValueError(f"rms_norm: group {g} does not divide the row length {n}")
    ldx, ldy = ldx or n, ldy or n
    check_extent(x, x_off, (max_tokens - 1) * ldx + n, "rms_norm x")
    check_extent(w, w_off, g, "rms_norm weight")
    check_extent(y, y_off, (max_tokens - 1) * ldy + n, "rms_norm y")
    spec = [p["WG"], n, g, float(eps), ldx, ldy]
    rows = 1 if last else max_tokens
    return [(dev.pipeline("rms_norm", [x, w, y, dyn], rows * (n // g), spec),
             [x_off, w_off, y_off, int(acc), int(last)])]


def run(dev, x, w, eps, group=None, y=None, last=False, **tune):
    """Numpy in and out; with last, only row T-1 of the output is written."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    T, n = x.shape
    with Scratch(dev, "rms_norm") as s:
        xb, wb = s.buf("x", x), s.buf("w", np.asarray(w, np.float32))
        yb = s.buf("y", y, size=T * n)
        d = s.dyn(T)
        got = s.run(dispatches(dev, xb, wb, yb, d, n, T, eps, group, acc=y is not None,
                               last=last, **tune), [yb])[0]
    return got[:T * n].reshape(T, n)
