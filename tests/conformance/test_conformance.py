"""nexvk's logits against Hugging Face transformers' on tiny random models of each family
(llama with Llama-3 RoPE scaling, qwen2, qwen3, phi3 with LongRoPE), on every backend.

The fixtures (GGUF + expected logits) come from tools/make_conformance.py, which needs torch
and transformers; these tests need neither. Bound: max |nexvk - transformers| over a
position's logits <= 1e-3 of that position's largest |logit|, for the F32 files and for the
Q8_0 files (whose reference is transformers with the same dequantized matrices), with an f16
cache, after one prefill and after decoding the last tokens one at a time. That error is the
f16 cache's rounding (up to 9e-4 on phi3): against transformers with its keys and values
rounded to float16 (the fixtures' second reference) the bound is TOL_F16KV, five times
tighter (measured: 2e-6 .. 8e-5; what remains is a key or value rounding the other way where
torch and nexvk differ in a last bit before rounding). The KV formats' KL divergence from f16 is reported per
family (`-s` shows the table).

Every backend in nexvk's registry (nexvk.backends) is compared: a new one joins by being
registered. On lavapipe every model shape compiles its own pipelines (minutes for all eight files), so the
device runs the F32 files and, of the Q8_0 ones, Phi-3's: the one whose fused tensors are
read as row ranges of quantized blocks.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from nexvk.backends import BACKENDS as REGISTRY
from nexvk.model.eval import kld
from nexvk.model.gguf import open_gguf
from nexvk.model.model import Model
from nexvk.model.tokenizer import Tokenizer

HERE = Path(__file__).resolve().parent
FAMILIES = ("llama3", "qwen2", "qwen3", "phi3")
QUANTS = ("f32", "q8_0")
BACKENDS = {name: b.device for name, b in REGISTRY.items()}   # name -> needs a Vulkan device
DECODE = 4                                    # tokens decoded one at a time after the prefill
TOL = 1e-3
TOL_F16KV = 2e-4


@pytest.fixture
def backend(request):
    if BACKENDS[request.param]:
        request.getfixturevalue("device")  # skips (or fails in CI) without a device
    return request.param


def _runs():
    """(family, quant, backend) of every comparison (see the module docstring)."""
    return [pytest.param(f, q, b, marks=[pytest.mark.device] if device else [])
            for b, device in BACKENDS.items() for f in FAMILIES for q in QUANTS
            if not device or q == "f32" or f == "phi3"]


def cases(family, quant, f16kv=False):
    """[(ctx, tokens, transformers' logits)] of a fixture; f16kv: the logits of transformers
    with its keys and values rounded to float16."""
    z = np.load(HERE / f"{family}.{quant}.npz")
    n = len([k for k in z.files if k.startswith("tokens_")])
    key = "logits_f16kv_" if f16kv else "logits_"
    return [(int(z[f"ctx_{i}"]), z[f"tokens_{i}"], z[f"{key}{i}"]) for i in range(n)]


def rel_err(got, want):
    """Per position: max |got - want| / max |want|."""
    return np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)


@pytest.mark.parametrize("family,quant,backend", _runs(), indirect=["backend"])
def test_logits_match_transformers(family, quant, backend):
    for (ctx, tokens, want), (_, _, want16) in zip(cases(family, quant), cases(family, quant, True)):
        m = Model.load(HERE / f"{family}.{quant}.gguf", ctx=ctx, backend=backend)
        prefill = m.forward(tokens, 0).copy()
        m.reset()
        n = len(tokens) - DECODE
        rows = [m.forward(tokens[:n], 0, last_only=True).copy()]
        rows += [m.forward([t], m.pos).copy() for t in tokens[n:]]
        decode = np.concatenate(rows)
        for what, got, first in (("prefill", prefill, 0), ("decode", decode, n - 1)):
            for ref, tol in ((want, TOL), (want16, TOL_F16KV)):
                err = rel_err(got, ref[first:])
                assert err.max() <= tol, (f"{family} ctx {ctx} {what}: row {err.argmax()} "
                                          f"{err.max():.2e} > {tol}")


def test_fixtures_exercise_what_they_claim():
    """The fixtures hold the traits under test (so a converter change cannot quietly drop
    one): Llama-3 rope_freqs with all three bands, Phi-3 long and short factors plus its
    attention factor, Qwen2 biases, Qwen3 q/k norms, fused Phi-3 tensors."""
    g = {f: open_gguf(HERE / f"{f}.f32.gguf") for f in FAMILIES}
    freqs = g["llama3"].tensor("rope_freqs.weight")
    assert freqs.min() == 1.0 and freqs.max() == 8.0 and ((freqs > 1) & (freqs < 8)).any()
    assert g["phi3"].has_tensor("rope_factors_long.weight")
    assert g["phi3"].meta("phi3.rope.scaling.attn_factor") > 1.0
    assert g["phi3"].has_tensor("blk.0.attn_qkv.weight") and not g["phi3"].has_tensor("blk.0.ffn_gate.weight")
    assert np.abs(g["qwen2"].tensor("blk.0.attn_k.bias")).max() > 0.5
    assert g["qwen3"].has_tensor("blk.0.attn_q_norm.weight")
    assert [c[0] for c in cases("phi3", "f32")] == [64, 16]   # long factors, then short


def test_wrong_factors_are_caught():
    """The comparison can fail: the phi3 model with its short factors at the long context
    (the wrong choice for 24 tokens past its 16 training positions) misses the bound."""
    ctx, tokens, want = cases("phi3", "f32")[0]
    m = Model.load(HERE / "phi3.f32.gguf", ctx=ctx)
    m.arch = m.arch.with_rope_factors(m.w.rope["rope_factors_short.weight"])
    m.ops._tables.clear()
    assert rel_err(m.forward(tokens, 0), want).max() > 100 * TOL


def _kld(p, q):
    """Mean KL(p || q) over the positions, as `nexvk ppl --kld` computes it."""
    return float(kld(p, q).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_formats_kld(family, capsys):
    """Mean KL(f16 || format) over the prefill positions for each KV format (numpy), reported;
    every format must stay a distribution close to f16's (finite, below 0.5 nats), q8_0
    closer than the 3-bit formats, and on qwen2 (large key biases, the case the hardened
    cache's centring is for) hardened turbo3 closer than plain."""
    ctx, tokens, _ = cases(family, "f32")[0]
    m = Model.load(HERE / f"{family}.f32.gguf", ctx=ctx)
    ref = m.forward(tokens, 0).copy()
    klds = {}
    for name, fmt, opts in (("q8_0", "q8_0", {}), ("turbo4", "turbo4", {}),
                            ("turbo3", "turbo3", {}), ("turbo3 plain", "turbo3", {"plain": True})):
        klds[name] = _kld(ref, m.with_cache(fmt, fmt, cache_opts=opts).forward(tokens, 0))
    with capsys.disabled():
        print(f"\n{family} KLD vs f16: " + ", ".join(f"{k} {v:.2e}" for k, v in klds.items()))
    assert all(np.isfinite(v) and v < 0.5 for v in klds.values()), klds
    assert klds["q8_0"] < min(klds["turbo3"], klds["turbo3 plain"]), klds
    if family == "qwen2":
        assert klds["turbo3"] < klds["turbo3 plain"], klds


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe"])
def test_tokenizer_matches_reference(pre):
    """Byte-level BPE with the pre-tokenizer llama.cpp names `pre`: the ids the reference
    (the model's original regex with the `regex` module, then rank-ordered merges) gives."""
    tok = Tokenizer(open_gguf(HERE / f"tokenizer_{pre}.gguf"))
    want = json.loads((HERE / f"tokenizer_{pre}.json").read_text())
    for text, ids in want.items():
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
