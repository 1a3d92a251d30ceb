// Bindings, push block and workgroup indexing shared by the three attention passes.
// Keys of each query are split into chunks of KS keys ("splits") so that long contexts
// spread over many workgroups (and every invocation runs a bounded loop: llvmpipe stops
// any shader loop after 65535 iterations). Workgroup id = (query * hkv + kv head) * ns + split.
// A dispatch covers queries q0 .. q0+n-1 of the call (the scratch holds n of them). Query row
// q (global) at position p = pos0 + q sees keys lo..p, lo = p + 1 - window (0: no window).
// Keys j < sinks (the hardened cache's sinks) are f16 vectors in K's and V's compute domains;
// key j >= sinks lives in slot (j - sinks) % (cap - sinks) of the layer's code regions (a ring
// buffer when window < positions); its scores go to row slot key_slot(j) of the scratch.
#ifndef ATTN_HEAD_GLSL
#define ATTN_HEAD_GLSL

#include "group_id.glsl"

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
layout(binding = 1) readonly buffer Q { float q[]; };          // (n_q, hkv*G, D)
layout(binding = 2) writeonly buffer O { float o[]; };         // (n_q, hkv*G, D)
layout(binding = 3) buffer Scr { float scr[]; };               // scores (n_q, hkv*G, cap)
layout(binding = 4) buffer Part { float part[]; };             // per split: m[G], l[G] | acc[G][D]
layout(binding = 5) readonly buffer Tab { float tab[]; };      // K table at ktab, V at vtab
layout(binding = 6) buffer Stats { uint stats[]; };  // [skipped pairs, total pairs, non-finite]
// per-call words, so recorded sequences replay unchanged: [queries, position of query 0,
// scale (float bits), sparse-V threshold (float bits, 0: off)]
#define DYN_BINDING 7
#include "dyn_head.glsl"

layout(push_constant) uniform Push {
    uint hkv;         // KV heads
    uint k_base;
    uint k_sbase;
    uint v_base;
    uint v_sbase;
    uint ktab;
    uint vtab;
    uint cap;         // slots of the layer (also the scores' row stride)
    uint ks;          // keys per split
    uint ns;          // splits per (query, KV head) in the dispatch
    uint acc_base;    // offset of the acc region in part[]
    uint q0;          // first query row of this dispatch
    uint window;      // keys a query sees (0: all before it)
    uint q_off;       // float offsets of query row 0 in q[] and of its output in o[]
    uint o_off;
    uint sinks;       // first positions stored as f16 vectors (0: none)
    uint sk_base;     // word offsets of the K and V sink vectors, (sinks, hkv, D/2) words each
    uint sv_base;
    uint xs;          // word offset of the key transform's f16 channel scale (hkv, D) that
                      // queries are divided by (0xFFFFFFFF: none)
} pc;

shared float sh_x[G * D];

#include "kv_format.glsl"
#include "wht.glsl"

// scratch column of key j: sinks first, then the code slots
uint key_slot(uint j) {
    return j < pc.sinks ? j : pc.sinks + (j - pc.sinks) % (pc.cap - pc.sinks);
}

// the keys query row q (global) sees: lo .. L-1
void key_range(uint q, out uint lo, out uint L) {
    L = dyn[DYN_POS0] + q + 1u;
    lo = (pc.window > 0u && L > pc.window) ? L - pc.window : 0u;
}

// query index in the dispatch, KV head and split of this workgroup, and the keys it sees
void attn_ids(out uint qi, out uint g, out uint s, out uint lo, out uint L) {
    uint id = GROUP_ID;
    s = id % pc.ns;
    g = (id / pc.ns) % pc.hkv;
    qi = id / (pc.ns * pc.hkv);
    key_range(pc.q0 + qi, lo, L);
}

uint ml_index(uint qi, uint g, uint s) { return ((qi * pc.hkv + g) * pc.ns + s) * 2u * G; }

uint acc_index(uint qi, uint g, uint s, uint r) {
    return pc.acc_base + (((qi * pc.hkv + g) * pc.ns + s) * G + r) * D;
}

#endif
