"""NEXVK_TUNE: per-run overrides of the tuning table (kernels/tuning.py), parsed strictly,
reaching the kernels that read them, and refused with a message that says what is allowed."""
import numpy as np
import pytest

from nexvk import KVCache
from nexvk.kernels import tuning


def test_overrides_parse_per_op():
    text = " attention.TARGET=256, mul_mv.WG=64 ,mul_mv.TPR=16"
    assert tuning.env_overrides("mul_mv", text) == {"WG": 64, "TPR": 16}
    assert tuning.env_overrides("attention", text) == {"TARGET": 256}
    assert tuning.env_overrides("rms_norm", text) == {}
    assert tuning.env_overrides("attention", "") == {}


@pytest.mark.parametrize("text,msg", [
    ("attention.TARGET", "not OP.KEY=INT"), ("attention=3", "not OP.KEY=INT"),
    ("attn.TARGET=3", "not OP.KEY=INT"), ("mul_mv.XX=3", "mul_mv.WG"),
    ("mul_mv.WG=0", "from 1 to"), ("mul_mv.WG=8.5", "whole number"),
    ("attention.TARGET=-1", "from 0 to"), ("mul_mm.SHX=2", "from 0 to 1")])
def test_bad_overrides_are_named(text, msg):
    with pytest.raises(ValueError, match=msg):
        tuning.env_overrides("attention", text)


def test_an_override_reaches_the_attention_kernels(device, monkeypatch):
    """NEXVK_TUNE=attention.TARGET=512 on lavapipe: the store splits for the GPU target and
    still matches the numpy cache."""
    monkeypatch.setenv("NEXVK_TUNE", "attention.TARGET=512")
    rng = np.random.default_rng(5)
    hkv, d, H, L = 3, 64, 9, 500
    k = rng.standard_normal((L, hkv, d)).astype(np.float32)
    ref = KVCache(1, hkv, d, L, "turbo3", "turbo3", plain=True)
    vk = KVCache(1, hkv, d, L, "turbo3", "turbo3", backend="vulkan", device=device, n_heads=H,
                 plain=True)
    assert vk._impl.target == 512
    ref.append(0, k, k)
    vk.append(0, k, k)
    q = rng.standard_normal((1, H, d)).astype(np.float32)
    a, b = vk.attention(0, q), ref.attention(0, q)
    assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()


def test_a_workgroup_over_the_device_limit_is_refused(device, monkeypatch):
    most = device.info["limits"]["max_compute_work_group_invocations"]
    monkeypatch.setenv("NEXVK_TUNE", f"rms_norm.WG={2 * most}")
    with pytest.raises(ValueError, match="invocations per workgroup"):
        tuning.get(device, "rms_norm")
