"""Perplexity with llama.cpp's perplexity semantics on wikitext-2 (first 4 windows of 512,
second halves scored), and KL divergence of compressed caches against f16.

Reference: llama.cpp `llama-perplexity -m SmolLM2-135M-Instruct.Q4_1.gguf -f
wiki.test.raw -c 512 --chunks 4` reports 22.41 for this file with an f16 cache."""
import pytest

from nexvk.model.eval import perplexity


def test_f16_perplexity_matches_llama_cpp(model, wikitext):
    r = perplexity(model, wikitext, ctx=512, chunks=4, progress=False)
    assert r["n_tokens"] == 4 * 255  # tokens 257..511 of each window
    assert abs(r["ppl"] / 22.41 - 1) < 0.005, r


def test_q8_0_kld_is_tiny(model, wikitext):
    r = perplexity(model, wikitext, ctx=512, chunks=4, k_type="q8_0", v_type="q8_0", kld=True,
                   progress=False)
    assert abs(r["ppl_f16"] / 22.41 - 1) < 0.005, r
    assert 0 <= r["kld_mean"] <= 0.001, r
    assert r["top1_agree"] > 97, r


@pytest.mark.parametrize("k,v,bound", [("turbo4", "turbo4", 0.07), ("q8_0", "turbo3", 0.04),
                                       ("turbo3", "turbo3", 0.25)])
def test_turbo_kld_bounds(model, wikitext, k, v, bound):
    r = perplexity(model, wikitext, ctx=512, chunks=2, k_type=k, v_type=v, kld=True,
                   progress=False)
    assert 0 < r["kld_mean"] <= bound, r


def test_too_short_text(model):
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, "too short", ctx=512, progress=False)
