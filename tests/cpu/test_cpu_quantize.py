"""nexvk.cpu.quantize against Format.encode_rows: codes and fp16 scales bit-identical."""
import numpy as np
import pytest

from nexvk.cpu import quantize
from nexvk.cpu.formats import kind
from nexvk.quant.formats import LANES, REGISTRY, make


def _rows(rng, T, hkv, d):
    x = rng.standard_normal((T, hkv, d)).astype(np.float32)
    x *= rng.uniform(1e-3, 300, (T, hkv, 1)).astype(np.float32)   # norms over many octaves
    x[0, 0] = 0                          # a zero row: scale 0, code of 0
    x[1 % T, -1] = 0.25                  # a constant row: every element a magnitude tie
    x[2 % T, 0, ::3] = -x[2 % T, 0, ::3]
    return x


@pytest.mark.parametrize("name,d", [(n, d) for n in REGISTRY for d in (16, 32, 64, 128, 256)
                                    if d % 32 == 0 or n not in ("q8_0", "q4_0")])
def test_codes_match_numpy(rng, name, d):
    fmt = make(name, d, seed=5)
    T, hkv, slots = 37, 3, 41        # odd counts; rows wrap around the ring of slots
    x = _rows(rng, T, hkv, d)
    codes = np.zeros((slots, hkv, fmt.words), np.uint32)
    scales = np.zeros((slots, hkv, fmt.n_scales), np.float16)
    quantize.encode(kind(fmt), x, codes, scales.view(np.uint16), 39,
                    np.zeros(LANES + d, np.float32))
    want_codes, want_scales = quantize.ref(fmt, x.reshape(-1, d))
    where = (39 + np.arange(T)) % slots
    np.testing.assert_array_equal(codes[where].reshape(T * hkv, -1), want_codes)
    np.testing.assert_array_equal(scales[where].reshape(T * hkv, -1).view(np.uint16),
                                  want_scales.view(np.uint16))
    untouched = np.setdiff1d(np.arange(slots), where)
    assert not codes[untouched].any()


@pytest.mark.parametrize("name", ["turbo2", "turbo3", "turbo4"])
def test_turbo_codes_on_threshold_ties(name):
    """Rows whose rotated coordinates sit exactly on the thresholds (built by un-rotating
    threshold values) take the same cell as numpy's searchsorted(side='right')."""
    d = 64
    fmt = make(name, d)
    y = np.resize(fmt.thresholds, (4, d)).astype(np.float32)
    x = fmt.from_compute(y).reshape(4, 1, d)
    codes = np.zeros((4, 1, fmt.words), np.uint32)
    scales = np.zeros((4, 1, 1), np.uint16)
    quantize.encode(kind(fmt), x, codes, scales, 0, np.zeros(LANES + d, np.float32))
    want_codes, want_scales = quantize.ref(fmt, x.reshape(-1, d))
    np.testing.assert_array_equal(codes.reshape(4, -1), want_codes)
    np.testing.assert_array_equal(scales.reshape(4, 1), want_scales.view(np.uint16))
