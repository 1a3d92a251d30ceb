"""The cpu backend: the whole token step in numba-compiled kernels, weights held as stored.

One op per module, each with its numpy twin `ref` beside it (as nexvk/kernels/ does for the
shaders). The model's ops: weights.py (GGUF blocks -> the row-interleaved layout the kernels
read), mul_mv.py (decode: y = W x), mul_mm.py (prefill: row panels dequantized into a float32
scratch, then BLAS), get_rows.py, rms_norm.py, rope.py, glu.py, add.py, and ops.py, which runs
forward.py's calls with them. The KV cache's: quantize.py, attention.py and their helpers
(nexvk/cache/cpu_store.py holds the arrays). Kernels are compiled on first use and cached on
disk (numba's cache=True), so a second process starts without compiling; jit.py sets where,
and how idle threads wait, before numba is first imported.
"""
from nexvk.cpu import jit  # noqa: F401  (before any kernel module imports numba)
