"""Gated linear unit out = act(gate) * up, act SiLU or GELU (tanh form): the twin of
kernels/glu.py (its `ref` is the specification). out may be gate or up."""
import numpy as np

from nexvk.cpu.jit import kernel
from nexvk.kernels.glu import ref  # noqa: F401  (the numpy twin)

ACTS = {"silu": 0, "gelu_tanh": 1}
_C = np.float32(0.7978845608028654)


@kernel
def _glu(gate, up, n, act, out):
    for t in range(n):
        for j in range(gate.shape[1]):
            g = gate[t, j]
            if act == 0:
                a = g / (np.float32(1) + np.exp(-g))
            else:
                a = np.float32(0.5) * g * (np.float32(1) + np.tanh(
                    _C * g * (np.float32(1) + np.float32(0.044715) * g * g)))
            out[t, j] = a * up[t, j]


def run(gate, up, n, act, out):
    """act: "silu" or "gelu_tanh" (ValueError otherwise)."""
    if act not in ACTS:
        raise ValueError(f"unknown activation {act!r} (silu, gelu_tanh)")
    _glu(gate, up, n, ACTS[act], out)
    return out
