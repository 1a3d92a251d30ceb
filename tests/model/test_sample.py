"""Sampler: greedy is argmax, seeded runs repeat, top-k/top-p restrict the candidates."""
import numpy as np
import pytest

from nexvk.model.sample import Sampler

LOGITS = np.array([1.0, 3.0, 2.0, 0.5, 2.9], np.float32)


def test_greedy_is_argmax():
    assert Sampler(0.0)(LOGITS) == 1


def test_seeded_repeat_and_seed_matters():
    a = [Sampler(1.0, seed=7)(LOGITS) for _ in range(1)]
    draws = lambda seed: [s(LOGITS) for s in [Sampler(1.0, seed=seed)] for _ in range(50)]  # noqa
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert a[0] == draws(7)[0]


def test_top_k_1_is_greedy_at_any_temperature():
    s = Sampler(5.0, top_k=1, seed=0)
    assert {s(LOGITS) for _ in range(50)} == {1}


def test_top_k_restricts_support():
    s = Sampler(100.0, top_k=2, seed=0)
    assert {s(LOGITS) for _ in range(300)} == {1, 4}


def test_top_p_restricts_support():
    # probabilities at T=1: token 1 ~0.36, 4 ~0.33, 2 ~0.13 ...; top_p 0.5 keeps {1, 4}
    s = Sampler(1.0, top_p=0.5, seed=0)
    assert {s(LOGITS) for _ in range(300)} == {1, 4}


def test_frequencies_follow_softmax():
    s = Sampler(1.0, seed=3)
    n = 20000
    counts = np.bincount([s(LOGITS) for _ in range(n)], minlength=LOGITS.size)
    p = np.exp(LOGITS - LOGITS.max())
    p /= p.sum()
    assert np.all(np.abs(counts / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3)


def test_bad_parameters():
    with pytest.raises(ValueError):
        Sampler(-1.0)
    with pytest.raises(ValueError):
        Sampler(1.0, top_p=0.0)
