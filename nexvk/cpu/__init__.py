"""The cpu backend: the whole token step in numba-compiled kernels, weights held as stored.

One op per module, each with its numpy twin `ref` beside it (as nexvk/kernels/ does for the
shaders): weights.py (GGUF blocks -> the row-interleaved layout the kernels read), mul_mv.py
(decode: y = W x), mul_mm.py (prefill: row panels dequantized into a float32 scratch, then
BLAS), get_rows.py, rms_norm.py, rope.py, glu.py, add.py; ops.py runs forward.py's calls with
them; jit.py is the one place that imports numba (its disk cache, threads).
"""
