"""nexvk.cpu.half, rotate and fastexp against numpy: bit-identical, or within stated ulps."""
import numpy as np
import pytest
from numba import njit

from nexvk.cpu import fastexp, half, rotate
from nexvk.quant import hadamard


@njit(cache=True)
def _to_f32(h, out):
    for i in range(h.size):
        out[i] = half.to_f32(h[i])


@njit(cache=True)
def _from_f32(x, out):
    for i in range(x.size):
        out[i] = half.from_f32(x[i])


def test_every_finite_half_decodes_exactly():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(h.view(np.float16))
    out = np.zeros(h.size, np.float32)
    _to_f32(h, out)
    want = h.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out[finite].view(np.uint32), want[finite].view(np.uint32))


def test_encode_rounds_like_numpy(rng):
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    exact = halves[np.isfinite(halves)].astype(np.float32)
    exact.sort()
    mid = (exact[:-1] + exact[1:]) / 2   # ties: round to even
    wide = rng.standard_normal(200_000).astype(np.float32) * \
        np.float32(10.0) ** rng.integers(-9, 6, 200_000).astype(np.float32)
    x = np.concatenate([exact, mid, wide, np.float32([65504, 65519.99, 65520, 1e6, -1e9, -0.0])])
    out = np.zeros(x.size, np.uint16)
    _from_f32(x, out)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("d", [16, 64, 128, 256, 512])
def test_rotation_is_bit_identical(rng, d):
    s = hadamard.signs(d, 7)
    x = rng.standard_normal((5, d)).astype(np.float32)
    y, z = x.copy(), np.empty_like(x)
    for row in y:
        rotate.rotate(row, s, rotate.inv_sqrt(d))
    np.testing.assert_array_equal(y, hadamard.rotate(x, s))
    z[:] = y
    for row in z:
        rotate.unrotate(row, s, rotate.inv_sqrt(d))
    np.testing.assert_array_equal(z, hadamard.unrotate(y, s))


@njit(cache=True)
def _exp(x, out):
    for i in range(x.size):
        out[i] = fastexp.exp(x[i])


def test_fast_exp_is_within_a_few_ulp(rng):
    x = np.concatenate([rng.uniform(-87, 88, 100_000),
                        [-87, -1e-7, 0, 1e-7, 1, 88]]).astype(np.float32)
    out = np.zeros_like(x)
    _exp(x, out)
    want = np.exp(x.astype(np.float64))
    assert (np.abs(out - want) / want).max() < 4e-7
    under = np.float32([-87.5, -1e3, -np.inf])
    out = np.ones_like(under)
    _exp(under, out)
    assert (out == 0).all()
