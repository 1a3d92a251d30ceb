#version 450
// Encode rows of D floats into a KV format, written in place into a cache (or codec) buffer.
// One workgroup per row. Twin: nexvk/quant/formats.py (encode_rows); with sinks and the key
// transform, nexvk/cache.py (_NumpyStore.append, KeyTransform.keys).
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint FMT = 3;
layout(constant_id = 3) const uint BITS = 3;

layout(binding = 0) readonly buffer X { float x[]; };          // (n_rows, D)
layout(binding = 1) buffer KV { uint kv_words[]; };            // codes at base, scales at sbase
layout(binding = 2) readonly buffer Tab { float tab[]; };      // format tables
// per-call words: [tokens T, position of the first]; row r of x is vector r % vpt of token
// r / vpt at position p = pos0 + r / vpt: a sink (p < sinks) is stored as the f16 vector of
// its compute domain at sink_base; any other goes to slot (p - sinks) % (cap - sinks) of the
// code region (a ring buffer when the slots are fewer than the positions)
#define DYN_BINDING 3
#include "include/dyn_head.glsl"

layout(push_constant) uniform Push {
    uint base;      // word offset of the code region
    uint sbase;     // word offset of the fp16 scale region
    uint tabo;      // offset of this format's table in tab[]
    uint vpt;       // vectors per token (KV heads; 1 for the codec)
    uint cap;       // sinks + slots in the code region (0xFFFFFFFF: no wrap)
    uint x_off;     // float offset of row 0 in x
    uint sinks;     // first positions kept as f16 vectors (0: none)
    uint sink_base; // word offset of the sink vectors, (sinks, vpt, D/2) words
    uint xf;        // word offset of the key transform's f16 mean (vpt, D), its scale after
                    // (0xFFFFFFFF: none; keys are stored as (k - mean) * scale)
    uint raw;       // word offset of the raw float rows of the sinks, kept to re-encode them
                    // when the transform is fitted later (0xFFFFFFFF: not kept)
    uint mode;      // 0: encode rows of x; 1: re-encode the kept raw sinks before pos0, in the
                    // step that holds position `sinks` (the one that fits the transform)
} pc;

const uint NONE = 0xFFFFFFFFu;

shared float sh_x[D];
shared float sh_red[WG];
shared uint sh_code[D];

#include "include/kv_format.glsl"
#include "include/wht.glsl"
#include "include/half.glsl"

// fp16 number idx of the scale region; other halves of the same word belong to other rows
void store_half(uint idx, float val) {
    uint w = pc.sbase + (idx >> 1);
    uint sh = (idx & 1u) * 16u;
    atomicAnd(kv_words[w], ~(0xFFFFu << sh));
    atomicOr(kv_words[w], f32_to_f16_rte(val) << sh);
}

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

void main() {
    uint row = GROUP_ID;
    uint t = gl_LocalInvocationID.x;
    uint T = dyn[DYN_T], pos0 = dyn[DYN_POS0];
    uint h = row % pc.vpt;
    uint p;  // the row's position
    if (pc.mode == 0u) {
        if (row >= T * pc.vpt) return;
        p = pos0 + row / pc.vpt;
        for (uint i = t; i < D; i += WG) sh_x[i] = x[pc.x_off + row * D + i];
        if (p < pc.sinks && pc.raw != NONE)
            for (uint i = t; i < D; i += WG)
                kv_words[pc.raw + (p * pc.vpt + h) * D + i] = floatBitsToUint(sh_x[i]);
    } else {
        p = row / pc.vpt;
        bool fit_step = pos0 <= pc.sinks && pc.sinks < pos0 + T;
        if (!fit_step || p >= pos0 || p >= pc.sinks) return;
        for (uint i = t; i < D; i += WG)
            sh_x[i] = uintBitsToFloat(kv_words[pc.raw + (p * pc.vpt + h) * D + i]);
    }
    barrier();
    if (pc.xf != NONE) {  // key transform: (k - mean) * scale, before the norm is taken
        for (uint i = t; i < D; i += WG) {
            float m = kv_half(pc.xf, h * D + i), sc = kv_half(pc.xf + pc.vpt * D / 2u, h * D + i);
            sh_x[i] = (sh_x[i] - m) * sc;
        }
        barrier();
    }
    if (p < pc.sinks) {  // a sink: the f16 vector of the compute domain (rotated for turbo)
        if (FMT == FMT_TURBO) {
            for (uint i = t; i < D; i += WG) sh_x[i] *= tab[pc.tabo + TAB_SIGNS + i];
            barrier();
            wht_rows(1u, tab[pc.tabo + TAB_INV_SQRT_D]);
        }
        for (uint k = t; k < D / 2u; k += WG)
            kv_words[pc.sink_base + (p * pc.vpt + h) * (D / 2u) + k] =
                f32_to_f16_rte(sh_x[2u * k]) | (f32_to_f16_rte(sh_x[2u * k + 1u]) << 16);
        return;
    }
    uint v = ((p - pc.sinks) % (pc.cap - pc.sinks)) * pc.vpt + h;
    uint W = fmt_words(FMT, BITS, D);

    if (FMT == FMT_F16) {
        for (uint k = t; k < D / 2u; k += WG)
            kv_words[pc.base + v * W + k] = f32_to_f16_rte(sh_x[2u * k]) | (f32_to_f16_rte(sh_x[2u * k + 1u]) << 16);
    } else if (FMT == FMT_Q8_0) {
        for (uint b = t; b < D / 32u; b += WG) {
            float amax = 0.0;
            for (uint j = 0u; j < 32u; ++j) amax = max(amax, abs(sh_x[b * 32u + j]));
            float d = amax / 127.0;
            float id = d > 0.0 ? 1.0 / d : 0.0;
            for (uint k = 0u; k < 8u; ++k) {
                uint w = 0u;
                for (uint j = 0u; j < 4u; ++j) {
                    float y = sh_x[b * 32u + k * 4u + j] * id;
                    int q = int(trunc(y + (y < 0.0 ? -0.5 : 0.5)));
                    w |= (uint(q) & 0xFFu) << (8u * j);
                }
                kv_words[pc.base + v * W + b * 8u + k] = w;
            }
            store_half(v * (D / 32u) + b, d);
        }
    } else if (FMT == FMT_Q4_0) {
        for (uint b = t; b < D / 32u; b += WG) {
            float amax = 0.0, mx = 0.0;
            for (uint j = 0u; j < 32u; ++j) {
                float y = sh_x[b * 32u + j];
                if (abs(y) > amax) { amax = abs(y); mx = y; }
            }
            float d = mx / -8.0;
            float id = d != 0.0 ? 1.0 / d : 0.0;
            for (uint k = 0u; k < 4u; ++k) {
                uint w = 0u;
                for (uint j = 0u; j < 8u; ++j) {
                    uint q = min(15u, uint(trunc(sh_x[b * 32u + k * 8u + j] * id + 8.5)));
                    w |= q << (4u * j);
                }
                kv_words[pc.base + v * W + b * 4u + k] = w;
            }
            store_half(v * (D / 32u) + b, d);
        }
    } else {  // FMT_TURBO
        precise float ss = 0.0;  // no fused multiply-add: numpy sums in this exact order
        for (uint i = t; i < D; i += WG) ss += sh_x[i] * sh_x[i];
        float gamma = sqrt(reduce_sum(ss));
        for (uint i = t; i < D; i += WG) sh_x[i] *= tab[pc.tabo + TAB_SIGNS + i];
        barrier();
        wht_rows(1u, tab[pc.tabo + TAB_INV_SQRT_D]);
        float inv = gamma > 0.0 ? 1.0 / gamma : 0.0;
        precise float cc = 0.0;
        uint n_thr = (1u << BITS) - 1u;
        for (uint i = t; i < D; i += WG) {
            float y = sh_x[i] * inv;
            uint code = 0u;
            for (uint k = 0u; k < n_thr; ++k) code += tab[pc.tabo + TAB_THRESHOLDS + k] <= y ? 1u : 0u;
            sh_code[i] = code;
            precise float c = tab[pc.tabo + TAB_CENTROIDS + code];
            cc += c * c;
        }
        float cn = sqrt(reduce_sum(cc));  // the barrier inside also publishes sh_code
        for (uint w = t; w < W; w += WG) {
            uint word = 0u;
            uint i0 = (32u * w) / BITS;
            uint i1 = min(D, (32u * w + 31u) / BITS + 1u);
            for (uint i = i0; i < i1; ++i) {
                int sh = int(BITS * i) - int(32u * w);
                word |= sh >= 0 ? sh_code[i] << uint(sh) : sh_code[i] >> uint(-sh);
            }
            kv_words[pc.base + v * W + w] = word;
        }
        if (t == 0u) store_half(v, cn > 0.0 ? gamma / cn : 0.0);
    }
}
