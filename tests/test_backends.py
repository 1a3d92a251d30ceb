"""The backend registry (nexvk/backends.py): one entry per backend, one `resolve`, and every
place that chooses a backend (KVCache, Model, the codec, the CLI) asks it."""
import numpy as np
import pytest

from nexvk import backends


def test_each_backend_names_importable_parts():
    for b in backends.BACKENDS.values():
        for part in ("ops", "store", "weights", "codec"):
            assert callable(b.get(part)), (b.name, part)


def test_an_unknown_backend_is_refused_everywhere_naming_the_known_ones():
    import nexvk
    from nexvk.cache import KVCache
    from nexvk.model.commands import _device_flags
    for call in (lambda: backends.resolve("cuda"), lambda: backends.backend("cuda"),
                 lambda: KVCache(1, 1, 64, 8, backend="cuda"),
                 lambda: nexvk.codec("turbo3", 64, backend="cuda")):
        with pytest.raises(ValueError, match="unknown backend .cuda.; use .auto. or one of: numpy, cpu, vulkan"):
            call()
    import argparse
    p = argparse.ArgumentParser()
    _device_flags(p)
    assert p.parse_args(["--backend", "numpy"]).backend == "numpy"
    with pytest.raises(SystemExit):
        p.parse_args(["--backend", "cuda"])


def test_a_new_backend_is_one_registry_entry(monkeypatch):
    """A backend registered under a new name (here numpy's parts) is what KVCache and the
    codec then build, with no other change."""
    import nexvk
    from nexvk.cache import KVCache
    from nexvk.cache.numpy_store import NumpyStore
    np_b = backends.BACKENDS["numpy"]
    monkeypatch.setitem(backends.BACKENDS, "other", backends.Backend(
        "other", np_b.ops, np_b.store, np_b.weights, np_b.codec, device=False))
    c, ref = KVCache(1, 1, 64, 8, backend="other"), KVCache(1, 1, 64, 8)
    assert c.backend == "other" and isinstance(c._impl, NumpyStore)
    x = np.random.default_rng(0).standard_normal((3, 1, 64)).astype(np.float32)
    for cache in (c, ref):
        cache.append(0, x, x)
    assert np.array_equal(c.attention(0, x), ref.attention(0, x))
    assert type(nexvk.codec("turbo3", 64, backend="other")).__name__ == "Codec"
