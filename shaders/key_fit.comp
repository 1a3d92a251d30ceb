#version 450
// The hardened cache's key transform, fitted on the device: per KV head, the f16 key mean
// and channel scale s = (Q / K)^(1/4) at geometric mean 1 (Q, K: mean squares of the group's
// queries and of the centred keys per channel), from the non-sink rows of the step that holds
// position `sinks` (the first non-sink position of a sequence); any other step leaves the
// tables alone. One workgroup per KV head. Twin: nexvk/quant/transform.py (KeyTransform.fit).
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"
#include "include/half.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint G = 1;       // query heads per KV head

layout(binding = 0) readonly buffer K { float k[]; };       // (rows, hkv, D) at k_off
layout(binding = 1) readonly buffer Q { float q[]; };       // (rows, hkv * G, D) at q_off
layout(binding = 2) buffer KV { uint kv_words[]; };         // the tables: f16 at xf
#define DYN_BINDING 3
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint hkv;
    uint k_off;
    uint q_off;
    uint sinks;
    uint xf;          // word offset of the f16 mean (hkv, D); the scale follows (hkv, D)
    uint fit_mean;    // 0: the mean is given (kept)
    uint fit_scale;   // 0: the scale is given (kept) or off
    uint min_rows;    // fewer fitting rows: scale 1
} pc;

const uint DPT = (D + WG - 1u) / WG;
shared float sh_red[WG];
shared uint sh_bits[2u * D];

float reduce_sum(float v) {
    uint t = gl_LocalInvocationID.x;
    sh_red[t] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (t < s) sh_red[t] += sh_red[t + s];
        barrier();
    }
    float r = sh_red[0];
    barrier();
    return r;
}

float half_at(uint idx) {
    return unpackHalf2x16(kv_words[pc.xf + (idx >> 1)] >> ((idx & 1u) * 16u)).x;
}

void main() {
    uint h = GROUP_ID;
    uint T = dyn[DYN_T], pos0 = dyn[DYN_POS0];
    if (h >= pc.hkv || pos0 > pc.sinks || pc.sinks >= pos0 + T) return;  // uniform
    uint t = gl_LocalInvocationID.x;
    uint r0 = pc.sinks - pos0;          // first non-sink row of this step
    float n = float(T - r0);
    float m[DPT], kk[DPT], qq[DPT];
    for (uint c = 0u; c < DPT; ++c) {
        uint i = t + c * WG;
        m[c] = 0.0; kk[c] = 0.0; qq[c] = 0.0;
        if (i >= D) continue;
        if (pc.fit_mean != 0u) {
            for (uint r = r0; r < T; ++r) m[c] += k[pc.k_off + (r * pc.hkv + h) * D + i];
            m[c] /= n;
        } else {
            m[c] = half_at(h * D + i);
        }
        for (uint r = r0; r < T; ++r) {
            float e = k[pc.k_off + (r * pc.hkv + h) * D + i] - m[c];
            kk[c] += e * e;
            for (uint g = 0u; g < G; ++g) {
                float y = q[pc.q_off + (r * pc.hkv * G + h * G + g) * D + i];
                qq[c] += y * y;
            }
        }
        kk[c] /= n;
        qq[c] /= n * float(G);
    }
    bool scaled = pc.fit_scale != 0u && T - r0 >= pc.min_rows;
    float s[DPT];
    if (scaled) {
        float ksum = 0.0;
        for (uint c = 0u; c < DPT; ++c) ksum += kk[c];
        float floor_k = 1e-6 * reduce_sum(ksum) / float(D) + 1e-30;
        float lsum = 0.0;
        for (uint c = 0u; c < DPT; ++c) {
            s[c] = pow(max(qq[c], 1e-30) / max(kk[c], floor_k), 0.25);
            if (t + c * WG < D) lsum += log(s[c]);
        }
        float gm = exp(reduce_sum(lsum) / float(D));
        for (uint c = 0u; c < DPT; ++c) s[c] = clamp(s[c] / gm, 1.0 / 4096.0, 4096.0);
    }
    // f16 bits of every channel, then one thread per word packs two channels
    for (uint c = 0u; c < DPT; ++c) {
        uint i = t + c * WG;
        if (i >= D) continue;
        sh_bits[i] = f32_to_f16_rte(m[c]);
        sh_bits[D + i] = scaled ? f32_to_f16_rte(s[c])
                                : (pc.fit_scale != 0u ? 0x3C00u : f32_to_f16_rte(half_at((pc.hkv + h) * D + i)));
    }
    barrier();
    for (uint w = t; w < D; w += WG) {  // D/2 words of the mean, then D/2 of the scale
        uint tab = w < D / 2u ? 0u : pc.hkv * D / 2u;
        uint j = w % (D / 2u);
        kv_words[pc.xf + tab + h * D / 2u + j] = sh_bits[2u * w] | (sh_bits[2u * w + 1u] << 16);
    }
}
