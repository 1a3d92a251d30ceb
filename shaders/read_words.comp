#version 450
// Read-back path out of device-only buffers: dst[4 + i] = src[src_off + i] for i < n, where
// dst = [src_off, n, 0, 0, words...] is a small reusable staging buffer the host reads. The
// mirror of copy_words.comp (offset and count in the staging buffer, so one recorded sequence
// serves every chunk). Twin: nexvk/kernels/upload.py (download_words).
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer Src { uint src[]; };
layout(binding = 1) buffer Dst { uint dst[]; };

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < dst[1]) dst[4u + i] = src[dst[0] + i];
}
