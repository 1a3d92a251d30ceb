// Normalized fast Walsh-Hadamard transform of `rows` rows of D floats held in the shared
// array sh_x (declared by the includer, with D and WG), in place. Same butterfly order and
// final scaling as nexvk/quant/hadamard.py, so results are bit-identical to numpy.
#ifndef WHT_GLSL
#define WHT_GLSL

void wht_rows(uint rows, float inv_sqrt_d) {
    uint half_n = D / 2u;
    for (uint h = 1u; h < D; h <<= 1) {
        for (uint p = gl_LocalInvocationID.x; p < rows * half_n; p += WG) {
            uint r = p / half_n;
            uint q = p % half_n;
            uint i = r * D + (q / h) * 2u * h + (q % h);
            float a = sh_x[i];
            float b = sh_x[i + h];
            sh_x[i] = a + b;
            sh_x[i + h] = a - b;
        }
        barrier();
    }
    for (uint p = gl_LocalInvocationID.x; p < rows * D; p += WG) sh_x[p] *= inv_sqrt_d;
    barrier();
}

#endif
