#version 450
// RoPE in place on x (T, LDX) holding HEADS heads of HEAD_DIM at x_off; token t sits at
// position pos0 + t. The first ROT dims of each head rotate as pairs (2i, 2i+1) (ggml's
// "normal" mode, llama GGUFs) or (i, i + ROT/2) (NEOX); pair i at position p turns by the angle
// whose (cos, sin) is tab[p, i], a table the host builds once in float64. Twin: nexvk/kernels/rope.py.
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint HEADS = 1;
layout(constant_id = 2) const uint HEAD_DIM = 64;
layout(constant_id = 3) const uint ROT = 64;      // rotated dims per head (<= HEAD_DIM, even)
layout(constant_id = 4) const uint NEOX = 0;
layout(constant_id = 5) const uint CTX = 1;       // positions in the table
layout(constant_id = 6) const uint LDX = 0;       // row stride of x (0: HEADS * HEAD_DIM)

layout(binding = 0) buffer X { float x[]; };
layout(binding = 1) readonly buffer Tab { vec2 tab[]; };  // (CTX, ROT/2) of (cos, sin)
#define DYN_BINDING 2
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint x_off;
} pc;

const uint PAIRS = HEADS * (ROT / 2u);
const uint CHUNKS = (PAIRS + gl_WorkGroupSize.x - 1u) / gl_WorkGroupSize.x;

void main() {
    uint t = GROUP_ID / CHUNKS;
    uint p = (GROUP_ID % CHUNKS) * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
    uint pos = dyn[DYN_POS0] + t;
    if (t >= dyn[DYN_T] || p >= PAIRS || pos >= CTX) return;
    uint h = p / (ROT / 2u), i = p % (ROT / 2u);
    uint b = pc.x_off + t * (LDX > 0u ? LDX : HEADS * HEAD_DIM) + h * HEAD_DIM;
    uint i0 = NEOX != 0u ? b + i : b + 2u * i;
    uint i1 = NEOX != 0u ? i0 + ROT / 2u : i0 + 1u;
    vec2 cs = tab[pos * (ROT / 2u) + i];
    float x0 = x[i0], x1 = x[i1];
    x[i0] = x0 * cs.x - x1 * cs.y;
    x[i1] = x0 * cs.y + x1 * cs.x;
}
