#version 450
// out = act(gate) * up, row by row: gate = x[t, 0:N], up = x[t, UP:UP+N] (the fused gate|up
// output of two products). ACT 0: SiLU; 1: GELU, tanh form, as ggml's gelu computes it.
// Twin: nexvk/kernels/glu.py.
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint N = 1;
layout(constant_id = 2) const uint ACT = 0;
layout(constant_id = 3) const uint LDX = 0;     // row stride of x (0: 2N)
layout(constant_id = 4) const uint UP = 0;      // offset of up in a row of x (0: N)
layout(constant_id = 5) const uint LDO = 0;     // row stride of out (0: N)

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Out { float o[]; };
#define DYN_BINDING 2
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint x_off;
    uint o_off;
} pc;

const uint CHUNKS = (N + gl_WorkGroupSize.x - 1u) / gl_WorkGroupSize.x;

float act(float g) {
    if (ACT == 0u) return g / (1.0 + exp(-g));
    // 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), tanh written out so that it cannot
    // overflow into inf/inf for large |g|
    float z = 0.7978845608028654 * g * (1.0 + 0.044715 * g * g);
    float e = exp(-2.0 * abs(z));
    return 0.5 * g * (1.0 + sign(z) * (1.0 - e) / (1.0 + e));
}

void main() {
    uint t = GROUP_ID / CHUNKS;
    uint j = (GROUP_ID % CHUNKS) * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
    if (t >= dyn[DYN_T] || j >= N) return;
    uint xb = pc.x_off + t * (LDX > 0u ? LDX : 2u * N);
    o[pc.o_off + t * (LDO > 0u ? LDO : N) + j] = act(x[xb + j]) * x[xb + (UP > 0u ? UP : N) + j];
}
