"""Config and memory-plan numbers against values known independently of the code: SmolLM2-135M
is 30 layers, 9 query heads, 3 KV heads, head_dim 64, dim 576 (its model card), and a KV cache
stores 2 (K and V) x layers x kv heads x head_dim values per token."""
import pytest

from nexvk.model.arch import Arch
from nexvk.model.config import Config
from nexvk.model.gguf import open_gguf
from nexvk.model.plan import kv_bytes, parse_size, plan


def test_smollm2_config(model_path):
    c = Config.from_gguf(open_gguf(model_path))
    assert (c.arch, c.n_layers, c.dim, c.n_heads, c.head_dim) == ("llama", 30, 576, 9, 64)
    assert c.n_kv_heads == [3] * 30
    assert c.vocab_size == 49152 and c.ffn_dim == 1536
    assert c.rope_base == 100000.0 and c.rope_dims == 64
    assert c.sliding_window == 0


def test_smollm2_plan_bytes(model_path):
    ctx = 32768
    p = plan(model_path, ctx, "turbo3", "turbo3", "4GiB")
    per_token_f16 = 2 * 30 * 3 * 64 * 2        # 23040 bytes
    assert p.kv["f16/f16"] == per_token_f16 * ctx
    # q8_0: 32 int8 + one fp16 scale = 34 bytes per 32 values
    assert p.kv["q8_0/q8_0"] == 2 * 30 * 3 * (64 // 32) * 34 * ctx
    # turbo3 at head_dim 64: 64 3-bit indices (24 bytes) + one fp16 norm = 26 bytes per vector
    assert p.kv["turbo3/turbo3"] == 2 * 30 * 3 * 26 * ctx
    size = model_path.stat().st_size
    assert 0.9 * size < p.weights_bytes < size  # tensors are nearly all of the file
    assert p.fits is True
    assert plan(model_path, ctx, "f16", "f16", "100MiB").fits is False


def _meta(arch="llama", **extra):
    m = {"general.architecture": arch, f"{arch}.block_count": 4,
         f"{arch}.embedding_length": 512, f"{arch}.attention.head_count": 8}
    m.update({f"{arch}.{k}": v for k, v in extra.items()})
    return m


def test_defaults_and_per_layer_kv_heads():
    c = Config.from_meta(_meta(**{"attention.head_count_kv": [2, 2, 4, 4]}))
    assert c.head_dim == 64 and c.n_kv_heads == [2, 2, 4, 4]
    # 64-dim f16: 2 * 64 * 2 bytes per head per token
    assert kv_bytes(c, 10, "f16", "f16") == (2 + 2 + 4 + 4) * 10 * 2 * 64 * 2
    with pytest.raises(ValueError, match="per-layer kv head counts"):
        Arch.from_config(c)


def test_key_length_overrides_dim_over_heads():
    c = Config.from_meta(_meta("qwen3", **{"attention.key_length": 128,
                                            "attention.value_length": 128}))
    assert c.head_dim == 128 and c.n_kv_heads == [8] * 4


def test_sliding_window_layers_hold_only_the_window():
    # gemma3: every 6th layer is global, the rest use the window, in a ring of window + batch - 1
    # slots (a forward call of `batch` tokens writes them all before attending)
    c = Config.from_meta(_meta("gemma3", block_count=12, **{"attention.sliding_window": 1024,
                                                            "attention.head_count_kv": 1,
                                                            "attention.key_length": 256,
                                                            "attention.value_length": 256}))
    assert c.swa_layers == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    per_tok = 2 * 256 * 2  # one kv head, K and V, f16
    assert kv_bytes(c, 8192, "f16", "f16") == per_tok * (2 * 8192 + 10 * (1024 + 511))
    assert kv_bytes(c, 8192, "f16", "f16", batch=1) == per_tok * (2 * 8192 + 10 * 1024)
    assert kv_bytes(c, 512, "f16", "f16") == per_tok * 12 * 512  # window larger than ctx
    assert kv_bytes(c, 1200, "f16", "f16") == per_tok * 12 * 1200  # ring as long as ctx


def test_missing_metadata_is_named():
    m = _meta()
    del m["llama.attention.head_count"]
    with pytest.raises(ValueError, match="llama.attention.head_count"):
        Config.from_meta(m)
    with pytest.raises(ValueError, match="general.architecture"):
        Config.from_meta({})


def test_unknown_architecture_lists_supported():
    c = Config.from_meta(_meta("mamba"))
    with pytest.raises(ValueError, match="'mamba' is not supported.*llama, mistral, gemma3"):
        Arch.from_config(c)


@pytest.mark.parametrize("s,n", [("4GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("8GB", 8e9),
                                 ("1.5g", 1.5e9), ("1000", 1000)])
def test_parse_size(s, n):
    assert parse_size(s) == n


def test_parse_size_rejects_garbage():
    with pytest.raises(ValueError, match="cannot parse"):
        parse_size("four gigs")
