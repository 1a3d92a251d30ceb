#version 450
// y = W x for one token (decode); W a GGML weight read unit by unit (include/weights_funcs.glsl).
// Two shapes from one table of spec constants (nexvk/kernels/tuning.py):
//  TPR == 1 (CPU drivers, where every load is a per-lane scalar loop): each invocation owns
//    NR rows; the 8 lanes of a subgroup each load one quad of a unit of x and share it by
//    subgroupBroadcast, so x costs 4 loads per unit per lane for NR rows.
//  TPR > 1 (GPUs): TPR invocations share a row, stride over its units and add up in shared
//    memory; a workgroup owns WG/TPR*NR rows.
// flags ACC: y += W x (a fused residual add); LAST: read x row T-1 (logits after a prefill).
// Twin: nexvk/kernels/mul_mv.py.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint NR = 1;     // rows per invocation
layout(constant_id = 2) const uint TPR = 1;    // invocations per row (a power of two)
layout(constant_id = 3) const uint K = 32;     // values per row (= length of x)

layout(binding = 0) readonly buffer W { uint w[]; };
layout(binding = 0) readonly buffer W4 { uvec4 w4[]; };  // the same buffer, 16 bytes a load
layout(binding = 1) readonly buffer X { float x[]; };  // (T, K)
layout(binding = 2) buffer Y { float y[]; };           // (rows,) at y_off
#define DYN_BINDING 3
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint w_off;   // word offset of the weight's streams in W
    uint x_off;   // float offset of x row 0
    uint y_off;   // float offset of y[0] (row0 of this part, when a weight is split)
    uint flags;   // bit 0 ACC: y += W x; bit 1 LAST: x is row T-1
    uint rows;    // rows in this part of the weight
} pc;            // (flags and rows are push constants so that one pipeline serves them all)
#define ROWS pc.rows

#include "include/weights_funcs.glsl"
#include "include/xquads_funcs.glsl"

const uint WG = gl_WorkGroupSize.x;
const uint SLOTS = WG / TPR;                   // rows in flight per workgroup per NR step
shared float red[TPR > 1u ? WG * NR : 1u];

void main() {
    uint T = dyn[DYN_T];
    if (T == 0u) return;
    uint lid = gl_LocalInvocationID.x;
    uint slot = lid / TPR, t = lid % TPR;
    uint first = GROUP_ID * SLOTS * NR + slot;
    uint xb = pc.x_off + ((pc.flags & 2u) != 0u ? T - 1u : 0u) * K;
    uint lane = gl_SubgroupInvocationID & 7u;
    float acc[NR];
    uint rows[NR];
    for (uint i = 0u; i < NR; ++i) {
        acc[i] = 0.0;
        rows[i] = min(first + i * SLOTS, ROWS - 1u);  // spare rows read row ROWS-1, never write
    }
    uint sg[NR][SWA];
    for (uint u = t; u < U; u += TPR) {
        uint j = u % GROUP;
        if (TPR > 1u || j == 0u)                       // a lone invocation per row loads a
            for (uint i = 0u; i < NR; ++i)             // group's scales once, at its first unit
                load_scales(pc.w_off, rows[i], u / GROUP, sg[i]);
        vec4 xq[8];
        if (TPR == 1u) {
            uint xi = xb + u * 32u + 4u * lane;
            vec4 xl = vec4(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]);
            broadcast_quads(xl, xq);
        } else {
            for (uint k = 0u; k < 8u; ++k) {
                uint xi = xb + u * 32u + 4u * k;
                xq[k] = vec4(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]);
            }
        }
        vec2 xs = half_sums(xq);
        for (uint i = 0u; i < NR; ++i) {
            vec4 q[8];
            load_quants(pc.w_off, rows[i], u, q);
            acc[i] += unit_dot(q, unit_dm(sg[i], j), xq, xs);
        }
    }
    if (TPR > 1u) {
        for (uint i = 0u; i < NR; ++i) red[i * WG + lid] = acc[i];
        barrier();
        for (uint s = TPR / 2u; s > 0u; s >>= 1) {
            if (t < s)
                for (uint i = 0u; i < NR; ++i) red[i * WG + lid] += red[i * WG + lid + s];
            barrier();
        }
        for (uint i = 0u; i < NR; ++i) acc[i] = red[i * WG + lid];
    }
    if (t != 0u) return;
    for (uint i = 0u; i < NR; ++i) {
        uint r = first + i * SLOTS;
        if (r < ROWS) y[pc.y_off + r] = (pc.flags & 1u) != 0u ? y[pc.y_off + r] + acc[i] : acc[i];
    }
}
