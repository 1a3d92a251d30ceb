"""The Vulkan codec against the numpy specification, on whatever device is present."""
import numpy as np
import pytest

import nexvk
from nexvk.quant.formats import HEAD_DIMS

CASES = [(f, d) for f in nexvk.FORMATS for d in HEAD_DIMS if not (f.startswith("q") and d < 32)]


@pytest.mark.parametrize("fmt,d", CASES, ids=[f"{f}-d{d}" for f, d in CASES])
def test_vulkan_codes_match_numpy(device, fmt, d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((3000, d)).astype(np.float32) * rng.uniform(0.01, 100, (3000, 1)).astype(np.float32)
    x[0] = 0  # a zero vector
    ref = nexvk.codec(fmt, d).encode(x)
    got = nexvk.codec(fmt, d, backend="vulkan", device=device).encode(x)
    # Codes may differ only where a coordinate sits within float rounding of a threshold
    # (the fp32 norm is summed in another order): at most 1e-4 of the codes.
    mismatch = np.mean(ref.codes != got.codes)
    assert mismatch <= 1e-4, f"{mismatch:.2e} of code words differ"
    # fp16 norms/scales: equal, or one fp16 step apart where the fp32 norm rounded differently
    a = ref.scales.view(np.uint16).astype(np.int32)
    b = got.scales.view(np.uint16).astype(np.int32)
    assert np.abs(a - b).max(initial=0) <= 1
    assert a.size == 0 or np.mean(a != b) <= 1e-3


@pytest.mark.parametrize("fmt,d", CASES, ids=[f"{f}-d{d}" for f, d in CASES])
def test_vulkan_decode_matches_numpy(device, fmt, d):
    x = np.random.default_rng(d + 1).standard_normal((2000, d)).astype(np.float32)
    enc = nexvk.codec(fmt, d).encode(x)
    ref = nexvk.codec(fmt, d).decode(enc)
    got = nexvk.codec(fmt, d, backend="vulkan", device=device).decode(enc)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_vulkan_codec_chunks_large_inputs(device):
    x = np.random.default_rng(5).standard_normal((2500, 64)).astype(np.float32)
    small = nexvk.quant.codec("turbo3", 64)
    from nexvk.kernels.codec import VulkanCodec
    vk = VulkanCodec("turbo3", 64, device=device, chunk=1000)  # 3 chunks, the last partial
    enc = vk.encode(x)
    assert np.mean(enc.codes != small.encode(x).codes) <= 1e-4
    np.testing.assert_allclose(vk.decode(enc), small.decode(enc), rtol=1e-5, atol=1e-6)


def test_vulkan_codec_rejects_bad_input_like_numpy(device):
    c = nexvk.codec("turbo3", 64, backend="vulkan", device=device)
    with pytest.raises(ValueError, match="non-finite"):
        c.encode(np.full((2, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape"):
        c.encode(np.zeros((2, 32), np.float32))
