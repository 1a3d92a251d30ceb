#version 450
// Attention pass 2 of 3: softmax weights with the global max and sum (combined from every
// split's stats), sparse V, and this split's weighted sum of V rows in V's compute domain.
// p_j = exp(s_j - m) / l; weights below the threshold are dropped (not renormalized) and a
// V row is skipped when no head of the group needs it. Twin: nexvk/kernels/attention.py.
#extension GL_GOOGLE_include_directive : require
#include "include/attn_head.glsl"

shared float sh_p[G * WG];

void main() {
    uint qi, g, s, lo, L;
    attn_ids(qi, g, s, lo, L);
    uint j0 = lo + s * pc.ks;
    if (pc.q0 + qi >= dyn[DYN_T] || j0 >= L) return;
    uint j1 = min(L, j0 + pc.ks);
    uint t = gl_LocalInvocationID.x;
    uint row0 = qi * pc.hkv * G + g * G;
    float thr = uintBitsToFloat(dyn[DYN_SPARSE_V]);

    // global softmax stats from the splits that hold keys of this query
    uint nsq = (L - lo + pc.ks - 1u) / pc.ks;
    float m[G], l[G];
    for (uint r = 0u; r < G; ++r) { m[r] = -3.402823e38; l[r] = 0.0; }
    for (uint u = 0u; u < nsq; ++u)
        for (uint r = 0u; r < G; ++r) m[r] = max(m[r], part[ml_index(qi, g, u) + r]);
    for (uint u = 0u; u < nsq; ++u) {
        uint mi = ml_index(qi, g, u);
        for (uint r = 0u; r < G; ++r) l[r] += part[mi + G + r] * exp(part[mi + r] - m[r]);
    }

    float acc[G * DPT];
    for (uint k = 0u; k < G * DPT; ++k) acc[k] = 0.0;
    uint skipped = 0u;
    for (uint jt = j0; jt < j1; jt += WG) {
        uint j = jt + t;
        for (uint r = 0u; r < G; ++r) {
            float p = 0.0;
            if (j < j1) {
                p = exp(scr[(row0 + r) * pc.cap + key_slot(j)] - m[r]) / l[r];
                if (p < thr) { p = 0.0; skipped += 1u; }
            }
            sh_p[r * WG + t] = p;
        }
        barrier();
        uint n = min(WG, j1 - jt);
        for (uint jj = 0u; jj < n; ++jj) {
            bool any = false;
            for (uint r = 0u; r < G; ++r) any = any || sh_p[r * WG + jj] > 0.0;
            if (!any) continue;
            uint jk = jt + jj;
            bool sink = jk < pc.sinks;
            uint v = (sink ? jk : key_slot(jk) - pc.sinks) * pc.hkv + g;
            for (uint k = 0u; k < DPT; ++k) {
                uint i = t + k * WG;
                if (i < D) {
                    float val = sink ? kv_raw(FMT_F16, 16u, D, pc.sv_base, 0u, v, i)
                                     : kv_value(VFMT, VBITS, D, pc.v_base, pc.v_sbase, pc.vtab, v, i);
                    for (uint r = 0u; r < G; ++r) acc[r * DPT + k] += sh_p[r * WG + jj] * val;
                }
            }
        }
        barrier();
    }
    if (thr > 0.0) {
        atomicAdd(stats[0], skipped);
        if (t == 0u && s == 0u) atomicAdd(stats[1], (L - lo) * G);
    }
    for (uint r = 0u; r < G; ++r)
        for (uint k = 0u; k < DPT; ++k) {
            uint i = t + k * WG;
            if (i < D) part[acc_index(qi, g, s, r) + i] = acc[r * DPT + k];
        }
}
