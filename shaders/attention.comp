#version 450
// Packed attention straight from the KV codes, causal, grouped-query, with sparse V.
// One workgroup per (query t, KV head g); it serves the G query heads of that KV head so
// each key and value row is read once for the whole group.
//   1. load the G queries; rotate them when K is a turbo format (score in rotated domain)
//   2. scores s_j = scale * <q, k_j> from the K codes, stored in `scr`; running max
//   3. l = sum_j exp(s_j - m)
//   4. tiles of WG keys: p_j = exp(s_j - m) / l, zeroed when below the sparse-V threshold;
//      values accumulated in V's compute domain, a V row skipped when no head needs it
//   5. un-rotate the G outputs once when V is a turbo format
// Each thread reads back only the scores it wrote, so `scr` needs no cross-thread barrier.
// Twin: nexvk/kernels/attention.py (ref).
#extension GL_GOOGLE_include_directive : require

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint G = 1;       // query heads per KV head
layout(constant_id = 3) const uint KFMT = 3;
layout(constant_id = 4) const uint KBITS = 3;
layout(constant_id = 5) const uint VFMT = 3;
layout(constant_id = 6) const uint VBITS = 3;
const uint DPT = (D + WG - 1u) / WG;          // output dims per thread

layout(binding = 0) readonly buffer KV { uint kv_words[]; };   // this layer's K and V regions
layout(binding = 1) readonly buffer Q { float q[]; };          // (n_q, HKV*G, D)
layout(binding = 2) writeonly buffer O { float o[]; };         // (n_q, HKV*G, D)
layout(binding = 3) buffer Scr { float scr[]; };               // (n_q, HKV*G, scr_stride)
layout(binding = 4) readonly buffer Tab { float tab[]; };      // K table at ktab, V at vtab
layout(binding = 5) buffer Stats { uint stats[]; };            // [skipped pairs, total pairs]
// per-call values, so recorded sequences are replayed unchanged:
// [queries in this dispatch, absolute position of query 0 (query t sees keys 0..pos0+t),
//  scale (float bits), sparse-V threshold (float bits, 0: off)]
layout(binding = 6) readonly buffer Dyn { uint dyn[]; };

layout(push_constant) uniform Push {
    uint hkv;         // KV heads
    uint k_base;
    uint k_sbase;
    uint v_base;
    uint v_sbase;
    uint ktab;
    uint vtab;
    uint scr_stride;  // >= pos0 + n_q
} pc;

shared float sh_x[G * D];
shared float sh_red[G * WG];
shared float sh_p[G * WG];

#include "include/kv_format.glsl"
#include "include/wht.glsl"

// tree reductions over the WG threads, G values at once; op 0 = max, 1 = sum
void reduce(inout float vals[G], uint op) {
    uint t = gl_LocalInvocationID.x;
    for (uint r = 0u; r < G; ++r) sh_red[r * WG + t] = vals[r];
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (t < s) {
            for (uint r = 0u; r < G; ++r) {
                float a = sh_red[r * WG + t], b = sh_red[r * WG + t + s];
                sh_red[r * WG + t] = op == 0u ? max(a, b) : a + b;
            }
        }
        barrier();
    }
    for (uint r = 0u; r < G; ++r) vals[r] = sh_red[r * WG];
    barrier();
}

void main() {
    uint t = gl_LocalInvocationID.x;
    uint qi = gl_WorkGroupID.x / pc.hkv;
    uint g = gl_WorkGroupID.x % pc.hkv;
    if (qi >= dyn[0]) return;
    float scale = uintBitsToFloat(dyn[2]);
    float thr = uintBitsToFloat(dyn[3]);
    uint H = pc.hkv * G;
    uint L = dyn[1] + qi + 1u;                      // keys visible to this query
    uint row0 = qi * H + g * G;                     // first query head row of the group

    // 1. queries -> sh_x (rotated into K's domain for turbo keys)
    bool krot = KFMT == FMT_TURBO;
    for (uint p = t; p < G * D; p += WG)
        sh_x[p] = q[row0 * D + p] * (krot ? tab[pc.ktab + TAB_SIGNS + p % D] : 1.0);
    barrier();
    if (krot) wht_rows(G, tab[pc.ktab + TAB_INV_SQRT_D]);

    // 2. scores and running max
    float m[G];
    for (uint r = 0u; r < G; ++r) m[r] = -3.402823e38;
    uint BS = min(32u, D);
    for (uint j = t; j < L; j += WG) {
        uint v = j * pc.hkv + g;
        float dot[G];
        for (uint r = 0u; r < G; ++r) dot[r] = 0.0;
        for (uint b = 0u; b < D; b += BS) {
            float part[G];
            for (uint r = 0u; r < G; ++r) part[r] = 0.0;
            for (uint i = b; i < b + BS; ++i) {
                float kr = kv_raw(KFMT, KBITS, D, pc.k_base, pc.ktab, v, i);
                for (uint r = 0u; r < G; ++r) part[r] += sh_x[r * D + i] * kr;
            }
            float sc = kv_scale(KFMT, D, pc.k_sbase, v, b);
            for (uint r = 0u; r < G; ++r) dot[r] += part[r] * sc;
        }
        for (uint r = 0u; r < G; ++r) {
            float s = dot[r] * scale;
            scr[(row0 + r) * pc.scr_stride + j] = s;
            m[r] = max(m[r], s);
        }
    }
    reduce(m, 0u);

    // 3. softmax denominators
    float l[G];
    for (uint r = 0u; r < G; ++r) l[r] = 0.0;
    for (uint j = t; j < L; j += WG)
        for (uint r = 0u; r < G; ++r) l[r] += exp(scr[(row0 + r) * pc.scr_stride + j] - m[r]);
    reduce(l, 1u);

    // 4. weights per tile, then values in V's compute domain
    float acc[G * DPT];
    for (uint k = 0u; k < G * DPT; ++k) acc[k] = 0.0;
    uint skipped = 0u;
    for (uint j0 = 0u; j0 < L; j0 += WG) {
        uint j = j0 + t;
        for (uint r = 0u; r < G; ++r) {
            float p = 0.0;
            if (j < L) {
                p = exp(scr[(row0 + r) * pc.scr_stride + j] - m[r]) / l[r];
                if (p < thr) { p = 0.0; skipped += 1u; }
            }
            sh_p[r * WG + t] = p;
        }
        barrier();
        uint n = min(WG, L - j0);
        for (uint jj = 0u; jj < n; ++jj) {
            bool any = false;
            for (uint r = 0u; r < G; ++r) any = any || sh_p[r * WG + jj] > 0.0;
            if (!any) continue;
            uint v = (j0 + jj) * pc.hkv + g;
            for (uint k = 0u; k < DPT; ++k) {
                uint i = t + k * WG;
                if (i < D) {
                    float val = kv_value(VFMT, VBITS, D, pc.v_base, pc.v_sbase, pc.vtab, v, i);
                    for (uint r = 0u; r < G; ++r) acc[r * DPT + k] += sh_p[r * WG + jj] * val;
                }
            }
        }
        barrier();
    }
    if (thr > 0.0) {
        atomicAdd(stats[0], skipped);
        if (t == 0u) atomicAdd(stats[1], L * G);
    }

    // 5. outputs, un-rotated once per head for turbo values
    for (uint r = 0u; r < G; ++r)
        for (uint k = 0u; k < DPT; ++k) {
            uint i = t + k * WG;
            if (i < D) sh_x[r * D + i] = acc[r * DPT + k];
        }
    barrier();
    if (VFMT == FMT_TURBO) {
        wht_rows(G, tab[pc.vtab + TAB_INV_SQRT_D]);
        for (uint p = t; p < G * D; p += WG) sh_x[p] *= tab[pc.vtab + TAB_SIGNS + p % D];
        barrier();
    }
    for (uint p = t; p < G * D; p += WG) o[row0 * D + p] = sh_x[p];
}
