#version 450
// y = x / sqrt(mean(x^2) + EPS) * w over each group of GROUP values of a row of N (GROUP = N:
// the usual RMSNorm; GROUP = head_dim: Gemma's per-head q/k norm, w of length GROUP).
// pc.acc: y += ... (a fused post-norm residual add). y may be x itself (in place).
// One workgroup per (token, group); tokens past T exit. Twin: nexvk/kernels/rms_norm.py.
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint N = 1;        // values per row
layout(constant_id = 2) const uint GROUP = 1;    // values per normalised group (divides N)
layout(constant_id = 3) const float EPS = 1e-6;
layout(constant_id = 4) const uint LDX = 0;      // row strides (0: N)
layout(constant_id = 5) const uint LDY = 0;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer Wt { float wt[]; };   // (GROUP,)
layout(binding = 2) buffer Y { float y[]; };
#define DYN_BINDING 3
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint x_off;
    uint w_off;
    uint y_off;
    uint acc;     // 1: y += the norm (push, not spec: one pipeline serves both)
    uint last;    // 1: only row T-1 (the logits of a prefill's last token), as one row
} pc;

shared float red[gl_WorkGroupSize.x];
#include "include/reduce_funcs.glsl"

void main() {
    uint t = GROUP_ID / (N / GROUP);
    uint g = GROUP_ID % (N / GROUP);
    if (t >= dyn[DYN_T] || (pc.last != 0u && t > 0u)) return;
    if (pc.last != 0u) t = dyn[DYN_T] - 1u;
    uint xb = pc.x_off + t * (LDX > 0u ? LDX : N) + g * GROUP;
    uint yb = pc.y_off + t * (LDY > 0u ? LDY : N) + g * GROUP;
    float ss = 0.0;
    for (uint i = gl_LocalInvocationID.x; i < GROUP; i += gl_WorkGroupSize.x) ss += x[xb + i] * x[xb + i];
    float scale = 1.0 / sqrt(workgroup_sum(ss) / float(GROUP) + EPS);
    for (uint i = gl_LocalInvocationID.x; i < GROUP; i += gl_WorkGroupSize.x) {
        float v = x[xb + i] * scale * wt[pc.w_off + i];
        y[yb + i] = pc.acc != 0u ? y[yb + i] + v : v;
    }
}
