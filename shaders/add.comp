#version 450
// x += y over the step's T rows of N values (the residual add where no product fuses it), or
// x += b with one row b added to every row (BCAST: a projection's bias).
// Twin: nexvk/kernels/add.py.
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint N = 1;
layout(constant_id = 2) const uint LDX = 0;     // row strides (0: N)
layout(constant_id = 3) const uint LDY = 0;
layout(constant_id = 4) const uint BCAST = 0;  // 1: y is one row, added to every row of x

layout(binding = 0) buffer X { float x[]; };
layout(binding = 1) readonly buffer Yb { float y[]; };
#define DYN_BINDING 2
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint x_off;
    uint y_off;
} pc;

const uint CHUNKS = (N + gl_WorkGroupSize.x - 1u) / gl_WorkGroupSize.x;

void main() {
    uint t = GROUP_ID / CHUNKS;
    uint j = (GROUP_ID % CHUNKS) * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
    if (t >= dyn[DYN_T] || j >= N) return;
    x[pc.x_off + t * (LDX > 0u ? LDX : N) + j] += y[pc.y_off + (BCAST != 0u ? 0u : t * (LDY > 0u ? LDY : N)) + j];
}
