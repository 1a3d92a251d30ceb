"""Filling and reading device-only (storage) buffers without a second full-size host copy.

Kompute's 'device' tensors keep a host staging buffer as large as the tensor, and 'storage'
tensors cannot be synced at all. So words go up in chunks through one small reusable staging
buffer, and copy_words.comp moves each chunk to its offset in the destination; read_words.comp
does the reverse for reading back (a saved prompt cache). The offset and count travel in the
staging buffer's first words, so one recorded sequence per buffer serves every chunk. Numpy
twins: `dst[offset:offset + len(words)] = words` and `src[offset:offset + n]`.
"""
import numpy as np

CHUNK = 1 << 20          # words per chunk (4 MiB)
WG = 64
STAGE = "upload/stage"


def upload_words(dev, dst, offset, words):
    """dst[offset : offset + len(words)] = words, for any uint32 device buffer `dst`."""
    words = np.ascontiguousarray(words, np.uint32).reshape(-1)
    if dst.dtype != np.uint32:
        raise ValueError(f"upload_words writes uint32 words, {dst} holds {dst.dtype}")
    if offset < 0 or offset + words.size > dst.size:
        raise ValueError(f"upload of {words.size} words at offset {offset} overflows {dst} "
                         f"({dst.size} words)")
    if not words.size:
        return
    with dev.lock:  # the staging buffer is the device's, shared by every upload
        stage = dev.pool.get(STAGE, CHUNK + 4, np.uint32, kind="device")
        pipe = dev.pipeline("copy_words", [stage, dst], CHUNK // WG, [WG])
        for i in range(0, words.size, CHUNK):
            n = min(CHUNK, words.size - i)
            stage.host[:2] = offset + i, n
            stage.host[4:4 + n] = words[i:i + n]
            dev.run([stage], [(pipe, [])])


def download_words(dev, src, offset, n):
    """A copy of src[offset : offset + n] (uint32 words) from any uint32 device buffer."""
    if src.dtype != np.uint32:
        raise ValueError(f"download_words reads uint32 words, {src} holds {src.dtype}")
    if offset < 0 or n < 0 or offset + n > src.size:
        raise ValueError(f"download of {n} words at offset {offset} overflows {src} "
                         f"({src.size} words)")
    out = np.empty(n, np.uint32)
    stage = dev.pool.get(STAGE, CHUNK + 4, np.uint32, kind="device")
    pipe = dev.pipeline("read_words", [src, stage], CHUNK // WG, [WG])
    for i in range(0, n, CHUNK):
        m = min(CHUNK, n - i)
        stage.host[:2] = offset + i, m
        dev.run([stage], [(pipe, [])], [stage])
        out[i:i + m] = stage.host[4:4 + m]
    return out


def release(dev):
    """Free the staging buffer and the copy pipelines (after the last upload)."""
    dev.release("upload/")
