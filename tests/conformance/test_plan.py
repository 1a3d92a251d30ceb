"""`nexvk plan` for each family: the conformance fixtures, and a header-only GGUF with the real
Qwen2.5-14B dimensions (tools/plan_header.py), which holds the "14B in 4 GB" claim to numbers."""
import importlib.util
from pathlib import Path

import pytest

from nexvk.model.plan import plan

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GiB = 2**30


def _plan_header():
    spec = importlib.util.spec_from_file_location("plan_header", REPO / "tools" / "plan_header.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("family,layers,kv_heads,head_dim", [
    ("llama3", 2, 1, 64), ("qwen2", 2, 1, 64), ("qwen3", 2, 1, 128), ("phi3", 2, 1, 64)])
def test_plan_each_family(family, layers, kv_heads, head_dim):
    """f16 KV = layers x kv heads x (k + v) head_dim x 2 bytes x context, every layer full
    (Phi-3's sliding window is off, as in llama.cpp)."""
    p = plan(HERE / f"{family}.f32.gguf", 1000, "turbo3", "turbo3")
    assert p.kv["f16/f16"] == layers * kv_heads * 2 * head_dim * 2 * 1000
    assert p.kv[p.label] < p.kv["f16/f16"] / 4


def test_qwen25_14b_needs_more_than_4gib(tmp_path):
    """Qwen2.5-14B Q4_K_M: 8.98 GB of weights as llama-quantize stores them (the published
    file is 8.99 GB), so it does not fit 4 GiB with any cache; its KV at 32k is 6 GiB in f16
    and about 1.2 GiB in turbo3."""
    path = tmp_path / "qwen2.5-14b.gguf"
    _plan_header().write("qwen2.5-14b", path)
    p32 = plan(path, 32768, "turbo3", "turbo3", memory="4GiB")
    assert p32.cfg.arch == "qwen2" and p32.cfg.n_layers == 48 and p32.cfg.head_dim == 128
    assert 8.9e9 < p32.weights_bytes < 9.0e9
    assert p32.kv["f16/f16"] == 48 * 8 * 2 * 128 * 2 * 32768 == 6 * GiB
    assert 1.1 * GiB < p32.kv[p32.label] < 1.25 * GiB
    assert p32.fits is False
    p4 = plan(path, 4096, "turbo3", "turbo3", memory="4GiB")
    assert p4.kv["f16/f16"] == 768 * 2**20 and p4.fits is False
