// Workgroup sum through shared memory (portable: no subgroup arithmetic needed).
// The including shader declares `shared float red[gl_WorkGroupSize.x]`; WG a power of two.
#ifndef REDUCE_FUNCS_GLSL
#define REDUCE_FUNCS_GLSL
float workgroup_sum(float v) {
    uint t = gl_LocalInvocationID.x;
    red[t] = v;
    barrier();
    for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1) {
        if (t < s) red[t] += red[t + s];
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}
#endif
