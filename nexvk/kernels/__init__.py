"""Device kernels: one module per op, each with its numpy twin (`ref`) beside the wrapper
that runs the shader. layout.py mirrors shaders/include/kv_format.glsl on the host."""
