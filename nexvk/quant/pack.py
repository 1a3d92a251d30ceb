"""b-bit codes <-> dense little-endian bitstreams in uint32 words.

Code i of a vector occupies bits [b*i, b*i + b) of that vector's stream; a vector's stream
starts on a word boundary and takes ceil(b*d/32) words (shaders/include/pack.glsl reads the
same layout, a code may straddle two words).
"""
import numpy as np


def words_per_vector(bits, head_dim):
    return -(-bits * head_dim // 32)


def pack(codes, bits):
    """codes: (n, d) integers < 2**bits -> (n, words_per_vector) uint32."""
    codes = np.asarray(codes)
    n, d = codes.shape
    w = words_per_vector(bits, d)
    if 32 % bits == 0:
        per = 32 // bits
        c = np.zeros((n, w * per), np.uint32)
        c[:, :d] = codes
        c = c.reshape(n, w, per) << (np.arange(per, dtype=np.uint32) * bits)
        return np.bitwise_or.reduce(c, axis=2)
    bitplanes = (codes[..., None].astype(np.uint8) >> np.arange(bits, dtype=np.uint8)) & 1
    stream = np.zeros((n, w * 32), np.uint8)
    stream[:, : d * bits] = bitplanes.reshape(n, d * bits)
    return np.packbits(stream, axis=1, bitorder="little").view("<u4").astype(np.uint32)


def unpack(words, bits, head_dim):
    """(n, words_per_vector) uint32 -> (n, d) uint8 codes."""
    words = np.ascontiguousarray(words, dtype="<u4")
    n = words.shape[0]
    if 32 % bits == 0:
        per = 32 // bits
        c = (words[..., None] >> (np.arange(per, dtype=np.uint32) * bits)) & ((1 << bits) - 1)
        return c.reshape(n, -1)[:, :head_dim].astype(np.uint8)
    stream = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")
    planes = stream[:, : head_dim * bits].reshape(n, head_dim, bits)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)
