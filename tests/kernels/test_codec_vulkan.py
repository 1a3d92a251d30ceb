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
    small = nexvk.codec("turbo3", 64)
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


def test_one_vulkan_codec_from_two_threads(device):
    """Two threads sharing one codec get exactly the codes and decodes they get alone (its
    staging buffers used to be overwritten mid-call: wrong codes for almost every row)."""
    import threading
    from nexvk.kernels.codec import VulkanCodec
    rng = np.random.default_rng(0)
    c = VulkanCodec("turbo3", 64, device=device, chunk=1024)  # 3 chunks per call
    xs = [rng.standard_normal((2500, 64)).astype(np.float32) for _ in range(2)]
    alone = [c.encode(x) for x in xs]
    decoded = [c.decode(e) for e in alone]
    start, errors = threading.Barrier(2), []

    def work(i):
        start.wait()
        try:
            for _ in range(3):
                e = c.encode(xs[i])
                assert np.array_equal(e.codes, alone[i].codes)
                assert np.array_equal(e.scales, alone[i].scales)
                assert np.array_equal(c.decode(alone[i]), decoded[i])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
