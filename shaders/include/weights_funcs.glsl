// Reading a GGML weight from its device streams (host mirror: nexvk/kernels/ggml_types.py).
// A row of K values is U = K/32 units; unit u of row r has QW words of quants at
// q(r, u), HW words of high bits at h(r, u), and every GROUP units share SW scale words at
// s(r, g). The including shader declares the weight's binding twice, as `w[]` (uint) and
// `w4[]` (uvec4: quants load 16 bytes at a time), the spec constant K, ROWS (the rows of this
// part: a push constant, so that one compiled pipeline serves every row count), and defines
// one TYPE_<name>.
// load_quants gives the 32 quants of a unit as floats q[k] = values 4k..4k+3; unit_dm gives
// (d0, m0, d1, m1): value = d*q + m, with (d0, m0) for values 0..15 and (d1, m1) for 16..31.
#ifndef WEIGHTS_FUNCS_GLSL
#define WEIGHTS_FUNCS_GLSL

#if defined(TYPE_F32)
#define QW 32
#define HW 0
#define GROUP 1
#define SW 0
#elif defined(TYPE_F16)
#define QW 16
#define HW 0
#define GROUP 1
#define SW 0
#elif defined(TYPE_Q8_0)
#define QW 8
#define HW 0
#define GROUP 2
#define SW 1
#elif defined(TYPE_Q4_0)
#define QW 4
#define HW 0
#define GROUP 2
#define SW 1
#elif defined(TYPE_Q4_1)
#define QW 4
#define HW 0
#define GROUP 1
#define SW 1
#elif defined(TYPE_Q5_0)
#define QW 4
#define HW 1
#define GROUP 2
#define SW 1
#elif defined(TYPE_Q5_1)
#define QW 4
#define HW 1
#define GROUP 1
#define SW 1
#elif defined(TYPE_Q4_K)
#define QW 4
#define HW 0
#define GROUP 8
#define SW 4
#elif defined(TYPE_Q5_K)
#define QW 4
#define HW 1
#define GROUP 8
#define SW 4
#elif defined(TYPE_Q6_K)
#define QW 4
#define HW 2
#define GROUP 8
#define SW 5
#else
#error "define one TYPE_<name>"
#endif

#if SW > 0
#define SWA SW
#else
#define SWA 1                             // (F32/F16: no scale words)
#endif
const uint U = K / 32u;                  // units per row
const uint NG = (U + GROUP - 1u) / GROUP;  // scale groups per row
#define H_OFF (ROWS * U * QW)            // word offset of the h stream
#define S_OFF (H_OFF + ROWS * U * HW)      // word offset of the s stream

// scale words of group g of `row`
void load_scales(uint base, uint row, uint g, out uint sg[SWA]) {
#if SW > 0
    for (uint k = 0u; k < SW; ++k)
        sg[k] = w[base + S_OFF + (row * NG + g) * SW + k];
#else
    sg[0] = 0u;
#endif
}

vec4 unit_dm(uint sg[SWA], uint j) {
#if defined(TYPE_F32) || defined(TYPE_F16)
    return vec4(1.0, 0.0, 1.0, 0.0);
#elif defined(TYPE_Q8_0) || defined(TYPE_Q4_0) || defined(TYPE_Q5_0)
    float d = unpackHalf2x16(sg[0] >> (16u * j)).x;
#if defined(TYPE_Q8_0)
    return vec4(d, 0.0, d, 0.0);
#elif defined(TYPE_Q4_0)
    return vec4(d, -8.0 * d, d, -8.0 * d);
#else
    return vec4(d, -16.0 * d, d, -16.0 * d);
#endif
#elif defined(TYPE_Q4_1) || defined(TYPE_Q5_1)
    vec2 dm = unpackHalf2x16(sg[0]);
    return dm.xyxy;
#elif defined(TYPE_Q4_K) || defined(TYPE_Q5_K)
    // ggml's get_scale_min_k4 over the 12 scale bytes in sg[1..3]
    vec2 dd = unpackHalf2x16(sg[0]);
#define SBYTE(i) bitfieldExtract(sg[1u + (i) / 4u], int(8u * ((i) % 4u)), 8)
    uint sc, mn;
    if (j < 4u) {
        sc = SBYTE(j) & 63u;
        mn = SBYTE(j + 4u) & 63u;
    } else {
        sc = (SBYTE(j + 4u) & 15u) | ((SBYTE(j - 4u) >> 6) << 4);
        mn = (SBYTE(j + 4u) >> 4) | ((SBYTE(j) >> 6) << 4);
    }
#undef SBYTE
    float d = dd.x * float(sc), m = -dd.y * float(mn);
    return vec4(d, m, d, m);
#elif defined(TYPE_Q6_K)
    // int8 scales 2j, 2j+1 in sg[0..3], fp16 d in sg[4]
    float d = unpackHalf2x16(sg[4]).x;
    uint pair = bitfieldExtract(sg[j / 2u], int(16u * (j % 2u)), 16);
    float d0 = d * float(bitfieldExtract(int(pair), 0, 8));
    float d1 = d * float(bitfieldExtract(int(pair), 8, 8));
    return vec4(d0, -32.0 * d0, d1, -32.0 * d1);
#endif
}

void load_quants(uint base, uint row, uint u, out vec4 q[8]) {
    uint qi = (base + (row * U + u) * QW) / 4u;        // in uvec4s: base is a multiple of 4
#if defined(TYPE_F32)
    for (uint k = 0u; k < 8u; ++k) q[k] = uintBitsToFloat(w4[qi + k]);
#elif defined(TYPE_F16)
    for (uint k = 0u; k < 4u; ++k) {
        uvec4 v = w4[qi + k];
        q[2u * k] = vec4(unpackHalf2x16(v.x), unpackHalf2x16(v.y));
        q[2u * k + 1u] = vec4(unpackHalf2x16(v.z), unpackHalf2x16(v.w));
    }
#elif defined(TYPE_Q8_0)
    for (uint k = 0u; k < 2u; ++k) {
        ivec4 v = ivec4(w4[qi + k]);
        for (uint c = 0u; c < 4u; ++c)
            q[4u * k + c] = vec4(bitfieldExtract(v[c], 0, 8), bitfieldExtract(v[c], 8, 8),
                                 bitfieldExtract(v[c], 16, 8), bitfieldExtract(v[c], 24, 8));
    }
#else
    uvec4 v4 = w4[qi];
    for (uint k = 0u; k < 4u; ++k) {
        uint v = v4[k];
        q[2u * k] = vec4(v & 15u, (v >> 4) & 15u, (v >> 8) & 15u, (v >> 12) & 15u);
        q[2u * k + 1u] = vec4((v >> 16) & 15u, (v >> 20) & 15u, (v >> 24) & 15u, v >> 28);
    }
#if HW == 1
    uint hb = w[base + H_OFF + row * U + u];           // bit i: high bit (16) of value i
    for (uint k = 0u; k < 8u; ++k)
        q[k] += 16.0 * vec4(bitfieldExtract(hb, int(4u * k), 1), bitfieldExtract(hb, int(4u * k + 1u), 1),
                            bitfieldExtract(hb, int(4u * k + 2u), 1), bitfieldExtract(hb, int(4u * k + 3u), 1));
#elif HW == 2
    for (uint k2 = 0u; k2 < 2u; ++k2) {                // 2 bits per value, 16 values a word
        uint hb = w[base + H_OFF + (row * U + u) * 2u + k2];
        for (uint k = 0u; k < 4u; ++k)
            q[4u * k2 + k] += 16.0 * vec4(bitfieldExtract(hb, int(8u * k), 2), bitfieldExtract(hb, int(8u * k + 2u), 2),
                                          bitfieldExtract(hb, int(8u * k + 4u), 2), bitfieldExtract(hb, int(8u * k + 6u), 2));
    }
#endif
#endif
}

// sum over the unit of value * x, given x as 8 quads and its two half sums
float unit_dot(vec4 q[8], vec4 dm, vec4 x[8], vec2 xs) {
    float a0 = dot(q[0], x[0]) + dot(q[1], x[1]) + dot(q[2], x[2]) + dot(q[3], x[3]);
    float a1 = dot(q[4], x[4]) + dot(q[5], x[5]) + dot(q[6], x[6]) + dot(q[7], x[7]);
    return dm.x * a0 + dm.y * xs.x + dm.z * a1 + dm.w * xs.y;
}

#endif
