#version 450
// Attention pass 3 of 3: sum the splits' partial outputs and un-rotate each query head
// once when V is a turbo format. One workgroup per (query of the dispatch, KV head).
// Twin: nexvk/kernels/attention.py (ref).
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"
#include "include/attn_head.glsl"

void main() {
    uint id = GROUP_ID;
    uint g = id % pc.hkv;
    uint qi = id / pc.hkv;
    if (pc.q0 + qi >= dyn[DYN_T]) return;
    uint lo, L;
    key_range(pc.q0 + qi, lo, L);
    uint nsq = (L - lo + pc.ks - 1u) / pc.ks;
    uint t = gl_LocalInvocationID.x;
    uint orow0 = (pc.q0 + qi) * pc.hkv * G + g * G;   // first output head row of the group
    for (uint p = t; p < G * D; p += WG) {
        uint r = p / D, i = p % D;
        float sum = 0.0;
        for (uint u = 0u; u < nsq; ++u) sum += part[acc_index(qi, g, u, r) + i];
        sh_x[p] = sum;
    }
    barrier();
    if (VFMT == FMT_TURBO) {
        wht_rows(G, tab[pc.vtab + TAB_INV_SQRT_D]);
        for (uint p = t; p < G * D; p += WG) sh_x[p] *= tab[pc.vtab + TAB_SIGNS + p % D];
        barrier();
    }
    for (uint p = t; p < G * D; p += WG) o[pc.o_off + orow0 * D + p] = sh_x[p];
}
