import numpy as np
import pytest

from nexvk.quant import hadamard


@pytest.mark.parametrize("d", [16, 64, 128, 512])
def test_rotation_is_orthogonal_and_inverted_by_unrotate(d):
    s = hadamard.signs(d, seed=3)
    R = hadamard.rotate(np.eye(d, dtype=np.float32), s)   # rows are R e_i = columns of R
    np.testing.assert_allclose(R @ R.T, np.eye(d), atol=1e-5)
    x = np.random.default_rng(0).standard_normal((5, d)).astype(np.float32)
    np.testing.assert_allclose(hadamard.unrotate(hadamard.rotate(x, s), s), x, atol=1e-5)


def test_fwht_matches_the_sylvester_matrix():
    d = 8
    H = np.array([[1.0]])
    while len(H) < d:
        H = np.block([[H, H], [H, -H]])
    x = np.random.default_rng(1).standard_normal((3, d)).astype(np.float32)
    np.testing.assert_allclose(hadamard.fwht(x), x @ H.T / np.sqrt(d), atol=1e-6)


def test_signs_are_seeded():
    assert np.array_equal(hadamard.signs(64, 1), hadamard.signs(64, 1))
    assert not np.array_equal(hadamard.signs(64, 1), hadamard.signs(64, 2))
    assert set(np.unique(hadamard.signs(64, 1))) == {-1.0, 1.0}
