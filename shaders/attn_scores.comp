#version 450
// Attention pass 1 of 3: scores straight from the K codes, and each split's softmax stats.
// The G query heads of one KV head are rotated once into K's domain (turbo keys), then
// s_j = scale * norm_j * <q', c_j> for the split's keys j, stored in scr; m = max s_j and
// l = sum exp(s_j - m) per head go to part[]. Twin: nexvk/kernels/attention.py (ref).
#extension GL_GOOGLE_include_directive : require
#include "include/attn_head.glsl"

shared float sh_red[G * WG];

// tree reductions over the WG threads, G values at once; op 0 = max, 1 = sum
void reduce(inout float vals[G], uint op) {
    uint t = gl_LocalInvocationID.x;
    for (uint r = 0u; r < G; ++r) sh_red[r * WG + t] = vals[r];
    barrier();
    for (uint h = WG / 2u; h > 0u; h >>= 1) {
        if (t < h) {
            for (uint r = 0u; r < G; ++r) {
                float a = sh_red[r * WG + t], b = sh_red[r * WG + t + h];
                sh_red[r * WG + t] = op == 0u ? max(a, b) : a + b;
            }
        }
        barrier();
    }
    for (uint r = 0u; r < G; ++r) vals[r] = sh_red[r * WG];
    barrier();
}

void main() {
    uint qi, g, s, lo, L;
    attn_ids(qi, g, s, lo, L);
    uint j0 = lo + s * pc.ks;
    if (pc.q0 + qi >= dyn[DYN_T] || j0 >= L) return;      // uniform per workgroup
    uint j1 = min(L, j0 + pc.ks);
    uint t = gl_LocalInvocationID.x;
    uint row0 = qi * pc.hkv * G + g * G;               // first scores row of the group
    uint qrow0 = (pc.q0 + qi) * pc.hkv * G + g * G;    // its first query head row
    float scale = uintBitsToFloat(dyn[DYN_SCALE]);

    bool krot = KFMT == FMT_TURBO;
    for (uint p = t; p < G * D; p += WG) {
        float y = q[pc.q_off + qrow0 * D + p];
        if (pc.xs != 0xFFFFFFFFu) y /= kv_half(pc.xs, g * D + p % D);  // q / s: the key transform
        sh_x[p] = y * (krot ? tab[pc.ktab + TAB_SIGNS + p % D] : 1.0);
    }
    barrier();
    if (krot) wht_rows(G, tab[pc.ktab + TAB_INV_SQRT_D]);

    float m[G];
    for (uint r = 0u; r < G; ++r) m[r] = -3.402823e38;
    const uint BS = min(32u, D);
    for (uint j = j0 + t; j < j1; j += WG) {
        uint js = key_slot(j);
        bool sink = j < pc.sinks;
        uint v = (sink ? j : js - pc.sinks) * pc.hkv + g;
        float dot[G];
        for (uint r = 0u; r < G; ++r) dot[r] = 0.0;
        for (uint b = 0u; b < D; b += BS) {
            float part_[G];
            for (uint r = 0u; r < G; ++r) part_[r] = 0.0;
            for (uint ii = 0u; ii < BS; ++ii) {
                float kr = sink ? kv_raw(FMT_F16, 16u, D, pc.sk_base, 0u, v, b + ii)
                                : kv_raw(KFMT, KBITS, D, pc.k_base, pc.ktab, v, b + ii);
                for (uint r = 0u; r < G; ++r) part_[r] += sh_x[r * D + b + ii] * kr;
            }
            float sc = sink ? 1.0 : kv_scale(KFMT, D, pc.k_sbase, v, b);
            for (uint r = 0u; r < G; ++r) dot[r] += part_[r] * sc;
        }
        for (uint r = 0u; r < G; ++r) {
            float sj = dot[r] * scale;
            // a key past the fp16 range is stored as Inf: flag it (the host refuses the step)
            if (isinf(sj) || isnan(sj)) atomicOr(stats[2], 1u);
            scr[(row0 + r) * pc.cap + js] = sj;
            m[r] = max(m[r], sj);
        }
    }
    reduce(m, 0u);
    float l[G];
    for (uint r = 0u; r < G; ++r) l[r] = 0.0;
    for (uint j = j0 + t; j < j1; j += WG)
        for (uint r = 0u; r < G; ++r) l[r] += exp(scr[(row0 + r) * pc.cap + key_slot(j)] - m[r]);
    reduce(l, 1u);
    if (t == 0u) {
        uint mi = ml_index(qi, g, s);
        for (uint r = 0u; r < G; ++r) {
            part[mi + r] = m[r];
            part[mi + G + r] = l[r];
        }
    }
}
