#version 450
// Y[t] = W X[t] for the step's T tokens (prefill); Y[t] += W X[t] with ACC. Tiled: a
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

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint NR = 1;     // rows per invocation
layout(constant_id = 2) const uint TT = 8;     // tokens per tile
layout(constant_id = 3) const uint ROWS = 1;   // rows in this part of the weight
layout(constant_id = 4) const uint K = 32;     // values per row
layout(constant_id = 5) const uint ACC = 0;
layout(constant_id = 6) const uint SHX = 0;
layout(constant_id = 7) const uint LDX = 0;    // row stride of X (0: K)
layout(constant_id = 8) const uint LDY = 0;    // row stride of Y (0: ROWS)

layout(binding = 0) readonly buffer W { uint w[]; };
layout(binding = 1) readonly buffer X { float x[]; };  // (T, LDX)
layout(binding = 2) buffer Y { float y[]; };           // (T, LDY)
#define DYN_BINDING 3
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint w_off;   // word offset of the weight's streams in W
    uint x_off;   // float offset of X[0, 0]
    uint y_off;   // float offset of Y[0, 0] (plus row0 of this part, when a weight is split)
} pc;

#include "include/weights_funcs.glsl"

const uint WG = gl_WorkGroupSize.x;
const uint RT = (ROWS + WG * NR - 1u) / (WG * NR);   // row tiles
const uint SX = LDX > 0u ? LDX : K;
const uint SY = LDY > 0u ? LDY : ROWS;
shared float xsh[SHX != 0u ? TT * 32u : 1u];

void main() {
    uint T = dyn[DYN_T];
    uint t0 = (gl_WorkGroupID.x / RT) * TT;
    if (t0 >= T) return;                               // the whole workgroup: a spare tile
    uint lid = gl_LocalInvocationID.x;
    uint first = (gl_WorkGroupID.x % RT) * WG * NR + lid;
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
                bx[tt][0] = subgroupBroadcast(xl, 0u);
                bx[tt][1] = subgroupBroadcast(xl, 1u);
                bx[tt][2] = subgroupBroadcast(xl, 2u);
                bx[tt][3] = subgroupBroadcast(xl, 3u);
                bx[tt][4] = subgroupBroadcast(xl, 4u);
                bx[tt][5] = subgroupBroadcast(xl, 5u);
                bx[tt][6] = subgroupBroadcast(xl, 6u);
                bx[tt][7] = subgroupBroadcast(xl, 7u);
                bs[tt] = vec2(dot(bx[tt][0] + bx[tt][1] + bx[tt][2] + bx[tt][3], vec4(1.0)),
                              dot(bx[tt][4] + bx[tt][5] + bx[tt][6] + bx[tt][7], vec4(1.0)));
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
                    vec2 xs = vec2(dot(xq[0] + xq[1] + xq[2] + xq[3], vec4(1.0)),
                                   dot(xq[4] + xq[5] + xq[6] + xq[7], vec4(1.0)));
                    acc[i * TT + tt] += unit_dot(q, dm, xq, xs);
                } else {
                    acc[i * TT + tt] += unit_dot(q, dm, bx[tt], bs[tt]);
                }
            }
        }
    }
    for (uint i = 0u; i < NR; ++i) {
        uint r = first + i * WG;
        for (uint tt = 0u; tt < TT; ++tt) {
            uint yi = pc.y_off + (t0 + tt) * SY + r;
            if (r < ROWS && t0 + tt < T) y[yi] = ACC != 0u ? y[yi] + acc[i * TT + tt] : acc[i * TT + tt];
        }
    }
}
