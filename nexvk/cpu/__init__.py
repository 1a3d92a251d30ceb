"""The compiled CPU backend: numba kernels, one op per module, each beside its numpy twin.

Kernels are compiled on first use and cached on disk (numba's cache=True), so a second
process starts without compiling.
"""
