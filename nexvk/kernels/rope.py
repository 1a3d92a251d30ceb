"""RoPE in place on (T, heads * head_dim) at positions pos0..pos0+T-1: rope.comp.

Pairs (2i, 2i+1) in ggml's "normal" mode (llama GGUFs, whose q/k rows the converter permuted)
or (i, i + rot/2) in NeoX mode; dims past `rot` are left alone. The angles come from a
(ctx, rot/2) table of (cos, sin) built here in float64, so the device turns by exactly the
angles numpy does. Bindings: 0 x (in place), 1 table, 2 Dyn. Spec constants: [WG, HEADS,
HEAD_DIM, ROT, NEOX, CTX, LDX]. Push: [x_off]. Dyn: T, pos0 (positions past ctx are skipped).
"""
import numpy as np

from nexvk.kernels import tuning
from nexvk.kernels.args import ceil_div, check_extent
from nexvk.kernels.oneshot import Scratch


def table(base, rot, ctx, factors=None, mscale=1.0):
    """(ctx, rot/2, 2) float32 mscale * (cos, sin) of pos * base^(-2i/rot) / factors[i].
    factors: rot/2 frequency divisors (Llama-3's rope_freqs, Phi-3's long/short factors, a
    linear scaling factor), as ggml's rope_ext takes them; mscale: ggml's attn_factor."""
    if rot % 2 or rot <= 0:
        raise ValueError(f"rope: rotated dims must be even and positive, got {rot}")
    inv = base ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    if factors is not None:
        factors = np.asarray(factors, np.float64)
        if factors.shape != inv.shape or not (np.isfinite(factors).all() and (factors > 0).all()):
            raise ValueError(f"rope: frequency factors must be {rot // 2} positive finite values")
        inv = inv / factors
    ang = np.arange(ctx, dtype=np.float64)[:, None] * inv[None, :]
    return (np.stack([np.cos(ang), np.sin(ang)], axis=-1) * mscale).astype(np.float32)


def ref(x, tab, pos0, heads, head_dim, rot, neox=False):
    """x: (T, heads * head_dim) float32 -> rotated copy."""
    T = len(x)
    out = x.reshape(T, heads, head_dim).copy()
    cs = tab[pos0:pos0 + T][:, None]                                  # (T, 1, rot/2, 2)
    c, s = cs[..., 0], cs[..., 1]
    if neox:
        a, b = out[..., :rot // 2].copy(), out[..., rot // 2:rot].copy()
        out[..., :rot // 2], out[..., rot // 2:rot] = a * c - b * s, a * s + b * c
    else:
        a, b = out[..., 0:rot:2].copy(), out[..., 1:rot:2].copy()
        out[..., 0:rot:2], out[..., 1:rot:2] = a * c - b * s, a * s + b * c
    return out.reshape(T, heads * head_dim)


def dispatches(dev, x, tab, dyn, heads, head_dim, rot, ctx, max_tokens, neox=False, x_off=0,
               ldx=None, **tune):
    p = tuning.get(dev, "elementwise", **tune)
    if rot > head_dim or rot % 2:
        raise ValueError(f"rope: {rot} rotated dims for heads of {head_dim}")
    ldx = ldx or heads * head_dim
    check_extent(x, x_off, (max_tokens - 1) * ldx + heads * head_dim, "rope x")
    check_extent(tab, 0, ctx * rot, "rope table")
    groups = max_tokens * ceil_div(heads * rot // 2, p["WG"])
    spec = [p["WG"], heads, head_dim, rot, int(neox), ctx, ldx]
    return [(dev.pipeline("rope", [x, tab, dyn], groups, spec), [x_off])]


def run(dev, x, tab, pos0, heads, head_dim, rot, neox=False, **tune):
    x = np.atleast_2d(np.asarray(x, np.float32))
    T = len(x)
    if pos0 + T > len(tab):
        raise ValueError(f"rope: positions {pos0}..{pos0 + T - 1} outside a table of {len(tab)}")
    with Scratch(dev, "rope") as s:
        xb, tb = s.buf("x", x), s.buf("tab", tab)
        d = s.dyn(T, pos0)
        got = s.run(dispatches(dev, xb, tb, d, heads, head_dim, rot, len(tab), T, neox, **tune),
                    [xb])[0]
    return got[:x.size].reshape(x.shape)
