#version 450
// Decode vectors of a KV format back to float32 rows. One workgroup per row.
// Twin: nexvk/quant/formats.py (decode_rows).
#extension GL_GOOGLE_include_directive : require
#include "include/group_id.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint FMT = 3;
layout(constant_id = 3) const uint BITS = 3;

layout(binding = 0) readonly buffer KV { uint kv_words[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };         // (n_rows, D)
layout(binding = 2) readonly buffer Tab { float tab[]; };
layout(binding = 3) readonly buffer Dyn { uint dyn[]; };       // [rows to decode, first vector]

layout(push_constant) uniform Push {
    uint base;
    uint sbase;
    uint tabo;      // offset of this format's table in tab[]
} pc;

shared float sh_x[D];

#include "include/kv_format.glsl"
#include "include/wht.glsl"

void main() {
    uint row = GROUP_ID;
    if (row >= dyn[0]) return;
    uint t = gl_LocalInvocationID.x;
    uint v = dyn[1] + row;
    for (uint i = t; i < D; i += WG) sh_x[i] = kv_value(FMT, BITS, D, pc.base, pc.sbase, pc.tabo, v, i);
    barrier();
    if (FMT == FMT_TURBO) {
        wht_rows(1u, tab[pc.tabo + TAB_INV_SQRT_D]);
        for (uint i = t; i < D; i += WG) sh_x[i] *= tab[pc.tabo + TAB_SIGNS + i];
        barrier();
    }
    for (uint i = t; i < D; i += WG) y[row * D + i] = sh_x[i];
}
