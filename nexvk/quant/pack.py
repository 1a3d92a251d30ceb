"""b-bit codes <-> dense little-endian bitstreams in uint32 words.

Code i of a vector occupies bits [b*i, b*i + b) of that vector's stream; a vector's stream
starts on a word boundary and takes ceil(b*d/32) words (shaders/include/pack.glsl reads the
same layout, a code may straddle two words).
"""
import numpy as np


def words_per_vector(bits, head_dim):
    return -(-bits * head_dim // 32)


def pack(codes, bits):
    """codes: (n, d) integers < 2**bits, d a multiple of 8 -> (n, words_per_vector) uint32.
    Every 8 codes fill exactly `bits` bytes of the little-endian stream."""
    codes = np.asarray(codes)
    n, d = codes.shape
    groups = codes.reshape(n, d // 8, 8).astype(np.uint64)
    val = np.bitwise_or.reduce(groups << (np.arange(8, dtype=np.uint64) * np.uint64(bits)), axis=2)
    octets = (val[..., None] >> (np.arange(bits, dtype=np.uint64) * np.uint64(8))) & np.uint64(0xFF)
    stream = np.zeros((n, 4 * words_per_vector(bits, d)), np.uint8)
    stream[:, : d * bits // 8] = octets.reshape(n, -1)
    return stream.view("<u4").astype(np.uint32, copy=False)


def unpack(words, bits, head_dim):
    """(n, words_per_vector) uint32 -> (n, d) uint8 codes."""
    words = np.ascontiguousarray(words, dtype="<u4")
    n = words.shape[0]
    octets = words.view(np.uint8)[:, : head_dim * bits // 8].reshape(n, head_dim // 8, bits)
    val = np.zeros((n, head_dim // 8), np.uint64)
    for b in range(bits):
        val |= octets[..., b].astype(np.uint64) << np.uint64(8 * b)
    codes = (val[..., None] >> (np.arange(8, dtype=np.uint64) * np.uint64(bits))) & np.uint64((1 << bits) - 1)
    return codes.reshape(n, head_dim).astype(np.uint8)
