"""Host mirror of shaders/include/kv_format.glsl: format ids, per-format tables, regions."""
import numpy as np

from nexvk.quant.formats import LANES, Turbo

FMT_IDS = {"f16": 0, "q8_0": 1, "q4_0": 2, "turbo": 3}
TAB_CENTROIDS, TAB_THRESHOLDS, TAB_INV_SQRT_D, TAB_SIGNS = 0, 16, 32, 64
WG = LANES  # threads per workgroup (spec constant 0); the codec's norms are summed this way


def spec(fmt):
    """(format id, bits) specialization constants of a Format."""
    if isinstance(fmt, Turbo):
        return FMT_IDS["turbo"], fmt.bits
    return FMT_IDS[fmt.name], 0


def table(fmt):
    """float32 (64 + d,) table: centroids, thresholds, 1/sqrt(d) and signs (turbo only)."""
    t = np.zeros(TAB_SIGNS + fmt.head_dim, np.float32)
    t[TAB_INV_SQRT_D] = np.float32(1.0 / np.sqrt(fmt.head_dim))
    if isinstance(fmt, Turbo):
        t[TAB_CENTROIDS:TAB_CENTROIDS + len(fmt.centroids)] = fmt.centroids
        t[TAB_THRESHOLDS:TAB_THRESHOLDS + len(fmt.thresholds)] = fmt.thresholds
        t[TAB_SIGNS:] = fmt.signs
    return t


def region_words(fmt, n_vectors):
    """uint32 words holding n vectors: codes, then the fp16 scales two per word."""
    return n_vectors * fmt.words + (n_vectors * fmt.n_scales + 1) // 2


NO_WRAP = 0xFFFFFFFF  # quantize.comp's `cap` when vectors never wrap around a ring


def quantize_push(base, sbase, tabo, vpt=1, cap=NO_WRAP, x_off=0):
    """quantize.comp's push block: code and scale regions, table offset, vectors per token,
    slots per region (vector v of token t goes to slot (pos0 + t) % cap), offset of x."""
    return [base, sbase, tabo, vpt, cap, x_off]
