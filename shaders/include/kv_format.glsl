// KV storage formats (see nexvk/quant/formats.py, the specification).
// A vector v of D values: code words at base + v*fmt_words(), fp16 scales (turbo: the
// corrected norm; q8_0/q4_0: one per block of 32) at half index v*fmt_scales() + s of the
// half array that starts at word sbase.
// Requires the includer to declare `kv_words[]` (uint) and `tab[]` (float: per-format table,
// centroids at +0, thresholds at +16, 1/sqrt(D) at +32, rotation signs at +64).
#ifndef KV_FORMAT_GLSL
#define KV_FORMAT_GLSL

#define FMT_F16 0u
#define FMT_Q8_0 1u
#define FMT_Q4_0 2u
#define FMT_TURBO 3u

#define TAB_CENTROIDS 0u
#define TAB_THRESHOLDS 16u
#define TAB_INV_SQRT_D 32u
#define TAB_SIGNS 64u

uint fmt_words(uint fmt, uint bits, uint d) {
    if (fmt == FMT_F16) return d / 2u;
    if (fmt == FMT_Q8_0) return d / 4u;
    if (fmt == FMT_Q4_0) return d / 8u;
    return (bits * d + 31u) / 32u;
}

uint fmt_scales(uint fmt, uint d) {
    if (fmt == FMT_F16) return 0u;
    if (fmt == FMT_TURBO) return 1u;
    return d / 32u;
}

float kv_half(uint sbase, uint idx) {
    return unpackHalf2x16(kv_words[sbase + (idx >> 1)] >> ((idx & 1u) * 16u)).x;
}

// Element i of vector v before its scale: the f16 value, the q8_0 integer, q4_0's q - 8,
// or turbo's centroid (rotated domain).
float kv_raw(uint fmt, uint bits, uint d, uint base, uint tabo, uint v, uint i) {
    uint W = fmt_words(fmt, bits, d);
    if (fmt == FMT_F16) {
        return unpackHalf2x16(kv_words[base + v * W + (i >> 1)] >> ((i & 1u) * 16u)).x;
    }
    if (fmt == FMT_Q8_0) {
        return float(bitfieldExtract(int(kv_words[base + v * W + (i >> 2)]), int(8u * (i & 3u)), 8));
    }
    if (fmt == FMT_Q4_0) {
        return float(bitfieldExtract(kv_words[base + v * W + (i >> 3)], int(4u * (i & 7u)), 4)) - 8.0;
    }
    uint off = bits * i;
    uint wi = base + v * W + (off >> 5);
    uint sh = off & 31u;
    uint c = kv_words[wi] >> sh;
    if (sh + bits > 32u) c |= kv_words[wi + 1u] << (32u - sh);
    return tab[tabo + TAB_CENTROIDS + (c & ((1u << bits) - 1u))];
}

// Scale of the block of 32 holding element i (turbo: the vector's norm; f16: 1).
float kv_scale(uint fmt, uint d, uint sbase, uint v, uint i) {
    if (fmt == FMT_F16) return 1.0;
    if (fmt == FMT_TURBO) return kv_half(sbase, v);
    return kv_half(sbase, v * (d / 32u) + (i >> 5));
}

float kv_value(uint fmt, uint bits, uint d, uint base, uint sbase, uint tabo, uint v, uint i) {
    return kv_raw(fmt, bits, d, base, tabo, v, i) * kv_scale(fmt, d, sbase, v, i);
}

#endif
