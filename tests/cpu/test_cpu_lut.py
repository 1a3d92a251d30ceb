"""lut.decode_row (16 codes per table lookup) against its numpy twin: every turbo width,
head_dims of 2 to 16 blocks of 16 codes (the last block of a row reads the row's last 8
bytes), random tables and codes, bit-exact; and when it serves."""
import numpy as np
import pytest

from nexvk.cpu import lut
from nexvk.quant import pack


@pytest.mark.skipif(not lut.AVX512, reason="the portable lookup is not what the kernels use")
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("d", [32, 48, 64, 80, 128, 256])
def test_decode_row_matches_its_twin(rng, bits, d):
    n = 7
    words = pack.pack(rng.integers(0, 1 << bits, (n, d)), bits)
    table = rng.standard_normal(16).astype(np.float32)
    got = np.empty((n, d), np.float32)
    lut.run(bits, words.view(np.uint8), table, got)
    np.testing.assert_array_equal(got, lut.ref(bits, words, table, d))


def test_available():
    assert lut.available(3, 64) == lut.AVX512
    assert not lut.available(3, 40)      # not a whole number of 16-code blocks
    assert not lut.available(5, 64)


def test_portable_lookup_compiles_and_agrees(rng, monkeypatch):
    """Without AVX-512 the kernels still compile decode16 (behind Kind.vec = False): its
    portable IR must build and give the same values."""
    from numba import njit
    monkeypatch.setattr(lut, "AVX512", False)

    @njit(cache=False)
    def run(codes, table, out):
        n, d = out.shape
        src, dst = codes.reshape(-1), out.reshape(-1)
        for r in range(n):
            lut.decode_row(3, src, r * codes.shape[1], codes.shape[1], table, dst, r * d, d)

    words = pack.pack(rng.integers(0, 8, (3, 64)), 3)
    table = rng.standard_normal(16).astype(np.float32)
    got = np.empty((3, 64), np.float32)
    run(words.view(np.uint8), table, got)
    np.testing.assert_array_equal(got, lut.ref(3, words, table, 64))
