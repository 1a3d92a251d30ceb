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
