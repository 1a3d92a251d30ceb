import numpy as np
import pytest

from nexvk.quant import pack


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("d", [16, 64, 128])
def test_roundtrip_and_dense_little_endian_layout(bits, d):
    codes = np.random.default_rng(bits * d).integers(0, 1 << bits, (4, d))
    words = pack.pack(codes, bits)
    assert words.dtype == np.uint32 and words.shape == (4, -(-bits * d // 32))
    assert np.array_equal(pack.unpack(words, bits, d), codes)
    # independent reading: code i sits at bit offset bits*i of the vector's bit stream
    stream = int.from_bytes(words[2].astype("<u4").tobytes(), "little")
    for i in range(d):
        assert (stream >> (bits * i)) & ((1 << bits) - 1) == codes[2, i]
