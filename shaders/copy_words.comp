#version 450
// Upload path into device-only buffers: dst[dst_off + i] = src[4 + i] for i < n, where
// src = [dst_off, n, 0, 0, words...] is a small reusable staging buffer. Keeping the offset
// and count in the buffer (not push constants) lets one recorded sequence serve every chunk.
// Twin: nexvk/kernels/upload.py.
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer Src { uint src[]; };
layout(binding = 1) writeonly buffer Dst { uint dst[]; };

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < src[1]) dst[src[0] + i] = src[4u + i];
}
