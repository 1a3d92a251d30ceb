"""Shared fixtures. Device tests take the `device` fixture: it skips with the probe's reason
when there is no Vulkan device, unless NEXVK_REQUIRE_DEVICE=1 or CI=true, which turn the
skip into a failure so that every device test really runs on lavapipe in CI.

When the Khronos validation layer is installed it is enabled for the whole session (before
any Vulkan instance exists) and any message it logs during a device test fails that test.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nexvk.device import layers

_LOG = Path(tempfile.mkdtemp(prefix="nexvk-vk-")) / "validation.log"
VALIDATION = os.environ.get("NEXVK_VALIDATION", "1") != "0" and layers.enable(_LOG)
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def device():
    from nexvk.device import probe
    from nexvk.device.manager import get_device
    if not probe.devices():
        reason = f"no Vulkan device: {probe.last_error() or 'none found'}"
        if os.environ.get("NEXVK_REQUIRE_DEVICE") == "1" or os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI / NEXVK_REQUIRE_DEVICE=1 require a device)")
        pytest.skip(reason)
    return get_device()


@pytest.fixture(autouse=True)
def _no_validation_errors(request):
    """Fail a test that uses the device when the validation layer logged anything."""
    before = len(layers.messages(_LOG)) if VALIDATION else 0
    yield
    if VALIDATION and "device" in request.fixturenames:
        new = layers.messages(_LOG)[before:]
        assert not new, f"Vulkan validation layer reported {len(new)} message(s):\n" + "\n".join(new[:3])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


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
        from nexvk.model.fetch import fetch_model
        return fetch_model("gemma3-270m", progress=False)
    pytest.skip("Gemma-3-270M not given: set NEXVK_GEMMA to its GGUF (`nexvk fetch gemma3-270m`)")
