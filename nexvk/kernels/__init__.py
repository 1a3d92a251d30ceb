"""Device kernels: one module per op, each with its numpy twin (`ref`) beside the wrapper
that runs the shader. layout.py mirrors shaders/include/kv_format.glsl on the host;
ggml_types.py is the table of GGML weight types and their device streams (weights.py puts a
weight on the device, upload.py fills device-only buffers), tuning.py the spec constants per
device type, dyn.py the per-step words; mul_mv, mul_mm, get_rows, rms_norm, rope, glu, add are
the token step's ops. Each op module has `dispatches(...)` (what a recorded step needs) and
`run(...)` (numpy in, numpy out)."""
