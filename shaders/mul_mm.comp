#version 450
// Y[t] = W X[t] for the step's T tokens (prefill); Y[t] += W X[t] with pc.acc. Tiled: a
// workgroup owns WG*NR rows x TT tokens, and each unit of a row is dequantized once and used
// for the tile's TT tokens from registers. X reaches the invocations in one of two ways:
//  SHX == 1 (GPUs): the tile's X unit is staged in shared memory once per workgroup.
//  SHX == 0 (CPU drivers, where shared memory costs what a buffer load costs): each of 8 lanes
//    loads one quad per token and subgroupBroadcast shares it.
// Workgroups: (tiles of WG*NR rows) x (tiles of TT tokens, sized for the most tokens a step
// may have); tiles past T exit. Twin: nexvk/kernels/mul_mm.py.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint NR = 1;     // rows per invocation
layout(constant_id = 2) const uint TT = 8;     // tokens per tile
layout(constant_id = 3) const uint K = 32;     // values per row
layout(constant_id = 4) const uint SHX = 0;
layout(constant_id = 5) const uint LDX = 0;    // row stride of X (0: K)
layout(constant_id = 6) const uint LDY = 1;    // row stride of Y

layout(binding = 0) readonly buffer W { uint w[]; };
layout(binding = 0) readonly buffer W4 { uvec4 w4[]; };  // the same buffer, 16 bytes a load
layout(binding = 1) readonly buffer X { float x[]; };  // (T, LDX)
layout(binding = 2) buffer Y { float y[]; };           // (T, LDY)
#define DYN_BINDING 3
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint w_off;   // word offset of the weight's streams in W
    uint x_off;   // float offset of X[0, 0]
    uint y_off;   // float offset of Y[0, 0] (plus row0 of this part, when a weight is split)
    uint acc;     // 1: Y += W X
    uint rows;    // rows in this part of the weight
} pc;            // (acc and rows are push constants so that one pipeline serves them all)
#define ROWS pc.rows

#include "include/weights_funcs.glsl"
#include "include/xquads_funcs.glsl"

const uint WG = gl_WorkGroupSize.x;
const uint SX = LDX > 0u ? LDX : K;
shared float xsh[SHX != 0u ? TT * 32u : 1u];

void main() {
    uint T = dyn[DYN_T];
    uint RT = (ROWS + WG * NR - 1u) / (WG * NR);       // row tiles
    uint t0 = (GROUP_ID / RT) * TT;
    if (t0 >= T) return;                               // the whole workgroup: a spare tile
    uint lid = gl_LocalInvocationID.x;
    uint first = (GROUP_ID % RT) * WG * NR + lid;
    uint lane = gl_SubgroupInvocationID & 7u;
    float acc[NR * TT];
    uint rows[NR];
    for (uint i = 0u; i < NR; ++i) rows[i] = min(first + i * WG, ROWS - 1u);
    for (uint i = 0u; i < NR * TT; ++i) acc[i] = 0.0;
    uint sg[NR][SWA];
    for (uint u = 0u; u < U; ++u) {
        uint j = u % GROUP;
        if (j == 0u)                                   // a group's scales, at its first unit
            for (uint i = 0u; i < NR; ++i) load_scales(pc.w_off, rows[i], u / GROUP, sg[i]);
        vec4 bx[SHX != 0u ? 1u : TT][8];
        vec2 bs[SHX != 0u ? 1u : TT];
        if (SHX != 0u) {
            barrier();                                 // the last unit's readers are done
            for (uint e = lid; e < TT * 32u; e += WG)
                xsh[e] = x[pc.x_off + min(t0 + e / 32u, T - 1u) * SX + u * 32u + e % 32u];
            barrier();
        } else {
            for (uint tt = 0u; tt < TT; ++tt) {
                uint xi = pc.x_off + min(t0 + tt, T - 1u) * SX + u * 32u + 4u * lane;
                vec4 xl = vec4(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]);
                broadcast_quads(xl, bx[tt]);
                bs[tt] = half_sums(bx[tt]);
            }
        }
        for (uint i = 0u; i < NR; ++i) {
            vec4 q[8];
            load_quants(pc.w_off, rows[i], u, q);
            vec4 dm = unit_dm(sg[i], j);
            for (uint tt = 0u; tt < TT; ++tt) {
                if (SHX != 0u) {
                    vec4 xq[8];
                    for (uint k = 0u; k < 8u; ++k)
                        xq[k] = vec4(xsh[tt * 32u + 4u * k], xsh[tt * 32u + 4u * k + 1u],
                                     xsh[tt * 32u + 4u * k + 2u], xsh[tt * 32u + 4u * k + 3u]);
                    acc[i * TT + tt] += unit_dot(q, dm, xq, half_sums(xq));
                } else {
                    acc[i * TT + tt] += unit_dot(q, dm, bx[tt], bs[tt]);
                }
            }
        }
    }
    for (uint i = 0u; i < NR; ++i) {
        uint r = first + i * WG;
        for (uint tt = 0u; tt < TT; ++tt) {
            uint yi = pc.y_off + (t0 + tt) * LDY + r;
            if (r < ROWS && t0 + tt < T) y[yi] = pc.acc != 0u ? y[yi] + acc[i * TT + tt] : acc[i * TT + tt];
        }
    }
}
