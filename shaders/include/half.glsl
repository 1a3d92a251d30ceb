// float -> fp16 bits with round-to-nearest-even, written out because packHalf2x16's
// rounding is implementation-defined and numpy's astype(float16) rounds to nearest even.
#ifndef HALF_GLSL
#define HALF_GLSL

uint f32_to_f16_rte(float f) {
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return sign | (ax > 0x7F800000u ? 0x7E00u : 0x7C00u);  // nan, inf
    if (ax >= 0x477FF000u) return sign | 0x7C00u;          // rounds to >= 65520: overflow
    if (ax < 0x38800000u) {                                 // fp16 subnormal or zero
        if (ax < 0x33000000u) return sign;                  // below half the smallest subnormal
        uint m = (ax & 0x7FFFFFu) | 0x800000u;
        uint e = ax >> 23;                                  // 102..112
        uint shift = 126u - e;                              // 14..24
        uint q = m >> shift;
        uint rem = m & ((1u << shift) - 1u);
        uint halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (q & 1u) == 1u)) q += 1u;
        return sign | q;
    }
    uint h = ((ax >> 13) - (112u << 10));                   // rebias exponent 127 -> 15
    uint rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) h += 1u;
    return sign | h;
}

#endif
