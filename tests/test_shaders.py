"""The shipped SPIR-V is current with shaders/ and valid for the Vulkan 1.1 target."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexvk.device import spirv

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"  # CI installs the tools: there a skip would hide a gap
needs_glslang = pytest.mark.skipif(shutil.which("glslangValidator") is None and not IN_CI,
                                   reason="glslangValidator not installed")


@needs_glslang
def test_shipped_spirv_is_built_from_the_current_sources():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "build_shaders.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", spirv.shipped())
def test_spirv_val_accepts_every_module(name):
    ok, msg = spirv.spirv_val(spirv.SPV_DIR / f"{name}.spv")
    if ok is None and not IN_CI:
        pytest.skip(msg)
    assert ok, msg


def test_every_variant_is_shipped():
    sys.path.insert(0, str(REPO / "tools"))
    import build_shaders
    assert sorted(build_shaders.VARIANTS) == spirv.shipped()
