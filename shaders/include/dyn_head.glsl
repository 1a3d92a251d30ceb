// The per-step words every token-step kernel reads from its Dyn binding, so that a step is
// recorded once and replayed with new values. Their indices (DYN_T, DYN_POS0, DYN_SCALE,
// DYN_SPARSE_V, DYN_IDS) are declared once, in nexvk/kernels/dyn.py, and passed to every
// shader as defines by tools/build_shaders.py. The including shader defines DYN_BINDING first.
#ifndef DYN_HEAD_GLSL
#define DYN_HEAD_GLSL
#ifndef DYN_T
#error "DYN_* come from nexvk/kernels/dyn.py: compile with tools/build_shaders.py"
#endif
layout(binding = DYN_BINDING) readonly buffer Dyn { uint dyn[]; };
#endif
