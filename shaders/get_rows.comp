#version 450
// Embedding lookup: out[t] = SCALE * W[dyn ids[t]] for the rows of this part of W (rows
// row0 .. row0+rows-1; ids elsewhere are left to another part's dispatch). One invocation
// per 32-value unit. Twin: nexvk/kernels/get_rows.py.
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint K = 32;        // values per row
layout(constant_id = 2) const float SCALE = 1.0;  // Gemma: sqrt(dim)
layout(constant_id = 3) const uint LDO = 0;       // row stride of out (0: K)

layout(binding = 0) readonly buffer W { uint w[]; };
layout(binding = 0) readonly buffer W4 { uvec4 w4[]; };  // the same buffer, 16 bytes a load
layout(binding = 1) writeonly buffer Out { float o[]; };  // (T, LDO)
#define DYN_BINDING 2
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint w_off;   // word offset of the weight's streams in W
    uint o_off;   // float offset of row 0 in Out
    uint row0;    // first row of W held by this part
    uint rows;    // rows in this part (a push constant: one pipeline serves every part)
} pc;
#define ROWS pc.rows

#include "include/weights_funcs.glsl"

void main() {
    uint t = GROUP_ID / ((U + gl_WorkGroupSize.x - 1u) / gl_WorkGroupSize.x);
    uint u = (GROUP_ID % ((U + gl_WorkGroupSize.x - 1u) / gl_WorkGroupSize.x)) * gl_WorkGroupSize.x
             + gl_LocalInvocationID.x;
    if (t >= dyn[DYN_T] || u >= U) return;
    uint id = dyn[DYN_IDS + t];
    if (id < pc.row0 || id - pc.row0 >= ROWS) return;
    uint row = id - pc.row0;
    uint sg[SWA];
    load_scales(pc.w_off, row, u / GROUP, sg);
    vec4 dm = unit_dm(sg, u % GROUP);
    vec4 q[8];
    load_quants(pc.w_off, row, u, q);
    uint ob = pc.o_off + t * (LDO > 0u ? LDO : K) + u * 32u;
    for (uint k = 0u; k < 8u; ++k) {
        vec2 a = k < 4u ? dm.xy : dm.zw;
        vec4 v = (q[k] * a.x + a.y) * SCALE;
        o[ob + 4u * k] = v.x;
        o[ob + 4u * k + 1u] = v.y;
        o[ob + 4u * k + 2u] = v.z;
        o[ob + 4u * k + 3u] = v.w;
    }
}
