// The per-step words every token-step kernel reads from its Dyn binding, so that a step is
// recorded once and replayed with new values (host mirror: nexvk/kernels/dyn.py).
// The including shader defines DYN_BINDING first.
#ifndef DYN_HEAD_GLSL
#define DYN_HEAD_GLSL
#define DYN_T 0u      // tokens in this step (dispatches are sized for the most; the rest exit)
#define DYN_POS0 1u   // position of the step's first token
#define DYN_IDS 4u    // token ids of the step, one word each (words 2, 3: attention's)
layout(binding = DYN_BINDING) readonly buffer Dyn { uint dyn[]; };
#endif
