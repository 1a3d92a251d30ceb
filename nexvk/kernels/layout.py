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
NONE = 0xFFFFFFFF     # an absent region (key transform, raw sinks) in a push block


def quantize_push(base, sbase, tabo, vpt=1, cap=NO_WRAP, x_off=0, sinks=0, sink_base=0,
                  xf=NONE, raw=NONE, mode=0):
    """quantize.comp's push block: code and scale regions, table offset, vectors per token,
    sinks + slots of the code region (token t at position p >= sinks goes to slot
    (p - sinks) % (cap - sinks)), offset of x; the hardened cache's sinks (their count and
    f16 region), key transform tables (word offset of the f16 mean, the scale after it) and
    raw sink rows, and the mode (0: encode x, 1: re-encode the raw sinks; see the shader)."""
    return [base, sbase, tabo, vpt, cap, x_off, sinks, sink_base, xf, raw, mode]
