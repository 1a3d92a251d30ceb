"""Config and memory-plan numbers against values known independently of the code: SmolLM2-135M
is 30 layers, 9 query heads, 3 KV heads, head_dim 64, dim 576 (its model card), and a KV cache
stores 2 (K and V) x layers x kv heads x head_dim values per token. Metadata is untrusted
input: wrong types, ranges and disagreements with the tensors are named."""
import struct

import numpy as np
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
    plain = plan(model_path, ctx, "turbo3", "turbo3", cache_opts={"plain": True})
    assert plain.kv["turbo3/turbo3 plain"] == 2 * 30 * 3 * 26 * ctx
    # hardened (the default): one f16 sink position (K and V: 2 x 64 halves) instead of its
    # codes, the sink's raw float32 key, and an f16 key mean and scale (2 x 64 halves) per
    # (layer, KV head)
    assert p.kv["turbo3/turbo3"] == 30 * 3 * (2 * 26 * (ctx - 1) + 2 * 2 * 64 + 4 * 64
                                              + 2 * 2 * 64)
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


# ---- untrusted metadata: wrong types and ranges are named, never a traceback ------------------
@pytest.mark.parametrize("extra,match", [
    ({"attention.head_count": 0}, "head_count' must be at least 1, got 0"),
    ({"block_count": [4, 4]}, "block_count' must be an integer, got an array of 2"),
    ({"block_count": 4.0}, "block_count' must be an integer, got float 4.0"),
    ({"block_count": True}, "block_count' must be an integer, got bool"),
    ({"block_count": 2**27}, "block_count 134217728 exceeds 512"),
    ({"block_count": 0}, "block_count' must be at least 1"),
    ({"embedding_length": "512"}, "embedding_length' must be an integer, got str"),
    ({"attention.head_count_kv": 3}, "8 query heads are not a multiple of 3 kv heads"),
    ({"attention.head_count_kv": [2, 2, 2]}, "3 entries for 4 layers"),
    ({"attention.head_count": []}, "0 entries for 4 layers"),
    ({"embedding_length": 500}, "500 is not a multiple of head_count 8"),
    ({"rope.dimension_count": 63}, "must be even"),
    ({"rope.dimension_count": 128}, "at most the head size 64"),
    ({"rope.freq_base": float("nan")}, "freq_base' must be a finite number"),
    ({"rope.freq_base": 0.0}, "freq_base' must be positive"),
    ({"attention.layer_norm_rms_epsilon": [1e-5]}, "must be a finite number, got an array"),
    ({"attention.sliding_window": 128, "attention.sliding_window_pattern": [True] * 5},
     "5 entries for 4 layers"),
    ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}, "RoPE scaling 'yarn' is not supported"),
    ({"rope.scaling.factor": float("inf")}, "scaling.factor' must be a finite number"),
])
def test_bad_metadata_is_named(extra, match):
    with pytest.raises(ValueError, match=match):
        Config.from_meta(_meta(**extra))


def test_rope_scaling_read_as_llama_cpp_does():
    """"linear" (the default type) divides positions by the factor; Gemma-3's window layers
    keep unscaled RoPE; the per-frequency divisors carry the scale (theta / factor)."""
    from nexvk.model.arch import Arch
    c = Config.from_meta(_meta(**{"rope.scaling.factor": 8.0, "feed_forward_length": 64,
                                  "rope.scaling.attn_factor": 1.5}))
    assert c.rope_scale == 8.0 and c.rope_attn_factor == 1.5
    a = Arch.from_config(c)
    assert a.rope_factors[0] == (8.0,) * 32 and a.rope_attn_factor == 1.5
    assert a.with_rope_factors((2.0,) * 32).rope_factors[3] == (16.0,) * 32
    assert Arch.from_config(Config.from_meta(_meta(feed_forward_length=64))).rope_factors[0] is None
    g = Config.from_meta(_meta("gemma3", **{"rope.scaling.factor": 8.0, "block_count": 6,
                                            "feed_forward_length": 64, "attention.sliding_window": 16}))
    ga = Arch.from_config(g)
    assert ga.rope_factors[0] is None and ga.rope_factors[5] == (8.0,) * 32   # layer 5: global
    phi = Config.from_meta(_meta("phi3", **{"attention.sliding_window": 2047}))
    assert phi.swa_layers == [] and Arch.from_config(phi).window == (0,) * 4


def test_biases_a_family_does_not_read_are_refused(tiny):
    """A llama file with a q bias asks for math the llama family does not do: refused."""
    from nexvk.model.model import Model
    p = tiny(tensors={"blk.0.attn_q.bias": (np.ones(32, np.float32), 0)})
    with pytest.raises(ValueError, match=r"bias tensors are not supported in 'llama' \(blk.0.attn_q.bias\)"):
        Model.load(p, ctx=16)


def test_architecture_must_be_a_string():
    with pytest.raises(ValueError, match="must be a string"):
        Config.from_meta({"general.architecture": ["llama"]})


def test_hybrid_layers_without_attention_are_planned():
    """Per-layer kv head counts may be 0 (a recurrent layer holds no KV cache)."""
    c = Config.from_meta(_meta(**{"attention.head_count_kv": [2, 0, 2, 0]}))
    assert kv_bytes(c, 10, "f16", "f16") == 2 * 2 * 10 * 2 * 64 * 2


def test_tiny_model_checks(tiny):
    """The tiny model itself passes every check (so the failures below are the changes')."""
    from nexvk.model.config import check_tensors
    g = open_gguf(tiny())
    check_tensors(Config.from_gguf(g), g)


@pytest.mark.parametrize("meta,tensors,match", [
    ({"llama.block_count": (1, 4, None)}, {}, r"block_count is 1 but the file has tensors for "
                                               r"blocks 0\.\.1"),
    ({"llama.block_count": (3, 4, None)}, {}, r"block_count is 3 but .* blocks 0\.\.1"),
    ({}, {"blk.1.attn_q.weight": None}, "missing tensor 'blk.1.attn_q.weight'"),
    ({}, {"output_norm.weight": None}, "missing tensor 'output_norm.weight'"),
    ({}, {"blk.0.ffn_norm.weight": (np.ones(1, np.float32), 0)},
     r"'blk.0.ffn_norm.weight' has shape \(1,\).*implies \(32,\)"),
    ({"llama.attention.head_count_kv": (2, 4, None)}, {},
     r"'blk.0.attn_k.weight' has shape \(16, 32\), but the metadata implies \(32, 32\)"),
    ({"llama.feed_forward_length": (48, 4, None)}, {},
     r"ffn_gate.weight' has shape \(64, 32\), but the metadata implies \(48, 32\)"),
])
def test_tensors_checked_against_metadata(tiny, meta, tensors, match):
    """Inconsistent files no longer run silently: Model.load names the mismatch (and plan
    already rejects a block_count that disagrees with the blk.N tensors)."""
    from nexvk.model.model import Model
    p = tiny(meta=meta, tensors=tensors)
    with pytest.raises(ValueError, match=match):
        Model.load(p, ctx=16)
    if "block_count" in match:
        with pytest.raises(ValueError, match=match):
            plan(p, 64)


def test_smollm2_with_block_count_29(model_path, tmp_path):
    """The issue's file: block_count 29 on the 30-layer SmolLM2 ran 29 layers silently."""
    data = bytearray(model_path.read_bytes())
    key = b"llama.block_count" + struct.pack("<II", 4, 30)  # name, UINT32, value
    at = data.index(key, 0, 1 << 20) + len(key) - 4
    data[at:at + 4] = struct.pack("<I", 29)
    p = tmp_path / "bc29.gguf"
    p.write_bytes(data)
    from nexvk.model.model import Model
    for fn in (lambda: plan(p, 512), lambda: Model.load(p, ctx=16)):
        with pytest.raises(ValueError, match=r"block_count is 29 but the file has tensors for "
                                             r"blocks 0\.\.29"):
            fn()


def test_memory_verdict_per_backend(model_path):
    """`plan --memory` once said a model fit by its stored size while the numpy backend holds
    float32 weights; now each backend is judged by what it holds."""
    p = plan(model_path, 512, "turbo3", "turbo3", "300MiB")
    kv = p.kv["turbo3/turbo3"]
    assert p.totals["numpy"] == p.total == p.weights_f32_bytes + kv > 300 * 2**20
    assert p.totals["vulkan"] == p.weights_bytes + kv + p.working_bytes < 300 * 2**20
    assert p.fits is True and "numpy does NOT fit, vulkan fits" in p.lines()[-1]
    assert plan(model_path, 512, "turbo3", "turbo3", "100MiB").fits is False
