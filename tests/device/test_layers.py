"""The Khronos validation layer is on for the tests (always in CI), and its log is read."""
import os
import subprocess
import sys
import textwrap

import pytest

from nexvk.device import layers

IN_CI = os.environ.get("CI") == "true"


def test_validation_layer_is_enabled_when_installed():
    enabled = layers.LAYER in os.environ.get("VK_INSTANCE_LAYERS", "").split(":")
    if IN_CI:  # CI installs vulkan-validationlayers: the device tests must run under it
        assert layers.available() and enabled
    else:
        assert enabled == (layers.available() and os.environ.get("NEXVK_VALIDATION", "1") != "0")


def test_an_invalid_vulkan_call_is_logged(device, tmp_path):
    """Re-recording a Kompute sequence without a resettable pool is invalid Vulkan (the
    reason nexvk records each sequence once): the layer must log it where we look."""
    if not layers.available():
        assert not IN_CI, "CI must install vulkan-validationlayers"
        pytest.skip("the Khronos validation layer is not installed")
    log = tmp_path / "vk.log"
    code = textwrap.dedent(f"""
        import numpy as np
        from nexvk.device import layers
        assert layers.enable({str(log)!r})
        import kp
        mgr = kp.Manager()
        t = mgr.tensor_t(np.zeros(4, np.uint32))
        seq = mgr.sequence()
        for _ in range(2):
            seq.clear()
            seq.record(kp.OpTensorSyncDevice([t]))
            seq.eval()
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("VK_INSTANCE_LAYERS", "VK_LAYER_SETTINGS_PATH")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    msgs = layers.messages(log)
    assert any("VUID-vkBeginCommandBuffer-commandBuffer-00050" in m for m in msgs), msgs[:3]


def test_messages_are_counted_one_per_report(tmp_path):
    log = tmp_path / "vk.log"
    log.write_text("VUID-a-00050(ERROR / SPEC): msgNum: 1 - Validation Error: [ VUID-a ] text\n"
                   "    Objects: 1\n        [0] 0x1, type: 6, name: NULL\n"
                   "VUID-b-00386(ERROR / SPEC): msgNum: 2 - Validation Error: [ VUID-b ]\n"
                   "    Objects: 1\n")
    msgs = layers.messages(log)
    assert len(msgs) == 2 and msgs[0].startswith("VUID-a") and "Objects: 1" in msgs[1]
    assert layers.messages(tmp_path / "missing.log") == []
