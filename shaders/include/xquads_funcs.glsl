// A unit of x (32 floats) as 8 quads, for the products (mul_mv, mul_mm). The including
// shader enables GL_KHR_shader_subgroup_ballot.
#ifndef XQUADS_FUNCS_GLSL
#define XQUADS_FUNCS_GLSL

// the 8 quads of a unit of x from 8 lanes that loaded one each (lane l: quad l); a lone
// invocation per row then loads 4 floats per unit of x instead of 32 (CPU drivers)
void broadcast_quads(vec4 xl, out vec4 xq[8]) {
    xq[0] = subgroupBroadcast(xl, 0u);
    xq[1] = subgroupBroadcast(xl, 1u);
    xq[2] = subgroupBroadcast(xl, 2u);
    xq[3] = subgroupBroadcast(xl, 3u);
    xq[4] = subgroupBroadcast(xl, 4u);
    xq[5] = subgroupBroadcast(xl, 5u);
    xq[6] = subgroupBroadcast(xl, 6u);
    xq[7] = subgroupBroadcast(xl, 7u);
}

vec2 half_sums(vec4 xq[8]) {
    return vec2(dot(xq[0] + xq[1] + xq[2] + xq[3], vec4(1.0)), dot(xq[4] + xq[5] + xq[6] + xq[7], vec4(1.0)));
}

#endif
