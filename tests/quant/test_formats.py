import numpy as np
import pytest

import nexvk
from nexvk.quant import formats, lloyd_max

N, D = 20_000, 128


def nmse(x, xh):
    return float(np.mean(np.sum((x - xh) ** 2, 1) / np.sum(x ** 2, 1)))


@pytest.fixture(scope="module")
def gauss():
    return np.random.default_rng(7).standard_normal((N, D)).astype(np.float32)


@pytest.mark.parametrize("name,bound", [("turbo2", 0.120), ("turbo3", 0.0345), ("turbo4", 0.0095)])
def test_turbo_reaches_the_lloyd_max_error(gauss, name, bound):
    c = nexvk.codec(name, D)
    assert nmse(gauss, c.decode(c.encode(gauss))) <= bound


def test_a_quantile_bin_4bit_table_does_not_pass(gauss):
    """The means of 16 equal-probability bins (what one public port ships) must fail the
    turbo4 bound: the test can tell a converged codebook from a quantile table."""
    z, m0, m1, _ = lloyd_max._law(D)
    edges = np.interp(np.linspace(0, 1, 17), m0, z)
    mass = np.diff(np.interp(edges, z, m0))
    first = np.diff(np.interp(edges, z, m1))
    quantile = (first / mass / np.sqrt(D)).astype(np.float32)
    c = nexvk.codec("turbo4", D)
    c.format.centroids = quantile
    c.format.thresholds = ((quantile[1:] + quantile[:-1]) / 2).astype(np.float32)
    err = nmse(gauss, c.decode(c.encode(gauss)))
    assert err > 0.0095, err


def test_turbo_keeps_the_norm(gauss):
    c = nexvk.codec("turbo3", D)
    xh = c.decode(c.encode(gauss[:1000]))
    np.testing.assert_allclose(np.linalg.norm(xh, axis=1), np.linalg.norm(gauss[:1000], axis=1),
                               rtol=2e-3)  # fp16 norm


@pytest.mark.parametrize("name,d,bpv", [("f16", 128, 16), ("q8_0", 128, 8.5), ("q4_0", 128, 4.5),
                                        ("turbo2", 128, 2.125), ("turbo3", 128, 3.125),
                                        ("turbo3", 64, 3.25), ("turbo4", 256, 4.0625)])
def test_bits_per_value_is_the_real_storage(name, d, bpv):
    c = nexvk.codec(name, d)
    assert c.bits_per_value == bpv == nexvk.bits_per_value(name, d)
    x = np.random.default_rng(0).standard_normal((10, 3, d)).astype(np.float32)
    assert c.encode(x).nbytes * 8 == bpv * x.size


def _ggml_q8_0(x):
    """ggml's quantize_row_q8_0_ref, one value at a time (independent of the vectorized code)."""
    out = []
    for blk in x.reshape(-1, 32):
        amax = max(abs(float(v)) for v in blk)
        d = np.float32(amax) / np.float32(127)
        inv = np.float32(1) / d if d else np.float32(0)
        qs = [int(np.trunc(np.float32(v) * inv + (0.5 if v * inv >= 0 else -0.5))) for v in blk]
        out.append([float(np.float16(d)) * q for q in qs])
    return np.array(out, np.float32).reshape(x.shape)


def _ggml_q4_0(x):
    out = []
    for blk in x.reshape(-1, 32):
        mx = max(blk, key=lambda v: abs(float(v)))
        d = np.float32(mx) / np.float32(-8)
        inv = np.float32(1) / d if d else np.float32(0)
        qs = [min(15, int(np.float32(v) * inv + np.float32(8.5))) for v in blk]
        out.append([float(np.float16(d)) * (q - 8) for q in qs])
    return np.array(out, np.float32).reshape(x.shape)


@pytest.mark.parametrize("name,ref", [("q8_0", _ggml_q8_0), ("q4_0", _ggml_q4_0)])
def test_block_formats_follow_ggml(name, ref):
    x = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32) * 3
    c = nexvk.codec(name, 64)
    np.testing.assert_array_equal(c.decode(c.encode(x)), ref(x))


def test_f16_is_lossless_for_half_values():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float16)
    c = nexvk.codec("f16", 64)
    np.testing.assert_array_equal(c.decode(c.encode(x)), x.astype(np.float32))


def test_zero_vectors_decode_to_zero():
    for name in nexvk.FORMATS:
        c = nexvk.codec(name, 64)
        assert not c.decode(c.encode(np.zeros((3, 64), np.float32))).any()


@pytest.mark.parametrize("x,match", [
    (np.zeros((4, 63), np.float32), r"shape \(\.\.\., 64\)"),
    (np.zeros((4, 64), np.float64), "float32 or float16"),
    (np.zeros((4, 64), np.int32), "float32 or float16"),
    (np.zeros((0, 64), np.float32), "empty"),
    (np.array([[np.nan] * 64], np.float32), "non-finite"),
    (np.array([[np.inf] * 64], np.float32), "non-finite"),
    ([[0.0] * 64], "numpy array"),
])
def test_bad_input_is_a_clear_value_error(x, match):
    with pytest.raises(ValueError, match=match):
        nexvk.codec("turbo3", 64).encode(x)


@pytest.mark.parametrize("name,d,match", [("turbo5", 64, "unknown KV format"),
                                          ("turbo3", 96, "powers of two"),
                                          ("turbo3", 1024, "powers of two"),
                                          ("q8_0", 16, "multiple of 32")])
def test_unsupported_formats_and_sizes(name, d, match):
    with pytest.raises(ValueError, match=match):
        nexvk.codec(name, d)


def test_values_beyond_fp16_range_are_refused():
    for name in nexvk.FORMATS:
        c = nexvk.codec(name, 64)
        with pytest.raises(ValueError, match="fp16"):
            c.encode(np.full((1, 64), 1e7 if name.startswith("q") else 1e5, np.float32))


def test_turbo_norm_limit_is_the_vector_norm():
    """A turbo format refuses exactly the rows whose norm exceeds its fp16 limit, whether or
    not a row's largest entry alone would have settled it: one large entry, or a norm spread
    evenly over every entry, just under and just over."""
    for name in ("turbo2", "turbo3", "turbo4"):
        for d in (64, 128):
            f = formats.make(name, d)
            limit = 65504.0 * np.sqrt(d) * float(np.abs(f.centroids).min())
            for norm in (0.97 * limit, 1.03 * limit):
                spike = np.zeros((2, d), np.float32)
                spike[1, 3] = norm
                even = np.full((2, d), norm / np.sqrt(d), np.float32)
                for x in (spike, even):
                    if norm > limit:
                        with pytest.raises(ValueError, match="norms up to"):
                            f.check_range(x, "k")
                    else:
                        f.check_range(x, "k")


def test_decode_checks_what_it_is_given():
    enc = nexvk.codec("turbo3", 64).encode(np.ones((2, 64), np.float32))
    with pytest.raises(ValueError, match="turbo4"):
        nexvk.codec("turbo4", 64).decode(enc)
    with pytest.raises(ValueError, match="Encoded"):
        nexvk.codec("turbo3", 64).decode(np.zeros(3))


def test_every_head_dim_16_to_512_roundtrips():
    for d in formats.HEAD_DIMS:
        x = np.random.default_rng(d).standard_normal((50, d)).astype(np.float32)
        c = nexvk.codec("turbo3", d)
        assert nmse(x, c.decode(c.encode(x))) < 0.04


@pytest.mark.parametrize("name", list(formats.REGISTRY))
def test_decode_of_no_rows(name):
    """A hardened cache's q8_0/q4_0 layer holds one sink: its first attention decodes zero
    code rows (this crashed in the q8_0/q4_0 reshape)."""
    f = formats.make(name, 64)
    out = f.decode_compute(np.zeros((0, f.words), np.uint32), np.zeros((0, f.n_scales), np.float16))
    assert out.shape == (0, 64) and out.dtype == np.float32

