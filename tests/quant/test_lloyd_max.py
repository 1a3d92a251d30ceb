import numpy as np
import pytest

from nexvk.quant import lloyd_max

# Gaussian-limit Lloyd-Max centroids (units of 1/sqrt(d)), the classic published values
GAUSS = {2: [0.4528, 1.510], 3: [0.2451, 0.7560, 1.3439, 2.1519]}


def _unit_coords(d, n, seed=0):
    """First coordinates of n uniformly random unit vectors in R^d (an independent sampler)."""
    g = np.random.default_rng(seed).standard_normal((n, d))
    return g[:, 0] / np.linalg.norm(g, axis=1)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("d", [64, 128])
def test_centroids_are_conditional_means_of_the_true_law(bits, d):
    c, thr = lloyd_max.codebook(bits, d)
    t = _unit_coords(d, 400_000)
    cells = np.searchsorted(thr, t)
    means = np.array([t[cells == k].mean() for k in range(len(c))])
    np.testing.assert_allclose(means, c, rtol=0.02, atol=0.01 / np.sqrt(d))
    np.testing.assert_allclose(thr, (c[1:] + c[:-1]) / 2, rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 3])
def test_large_d_approaches_the_gaussian_limit(bits):
    c = lloyd_max.codebook(bits, 512)[0] * np.sqrt(512)
    np.testing.assert_allclose(c[len(c) // 2:], GAUSS[bits], rtol=0.01)


def test_expected_mse_matches_monte_carlo_and_decreases_with_bits():
    d = 128
    t = _unit_coords(d, 400_000, seed=1)
    for bits in (2, 3, 4):
        c, thr = lloyd_max.codebook(bits, d)
        mc = np.mean((t - c[np.searchsorted(thr, t)]) ** 2) * d
        assert abs(mc - lloyd_max.expected_mse(bits, d)) < 0.03 * mc
    mses = [lloyd_max.expected_mse(b, d) for b in (1, 2, 3, 4)]
    assert mses == sorted(mses, reverse=True)
