"""The cpu backend (compiled kernels, weights as stored) against the numpy model: the same
logits (1e-3 of the largest logit, per position) over 64 prefill and 64 decode positions and
the same greedy text; the tiny llama and gemma3 models for the family differences (q/k
norms, post norms, GELU, a sliding window); weights held as stored; threads; a decode step
allocates nothing."""
import gc
import tracemalloc

import numpy as np
import pytest

from nexvk.cpu.weights import CpuWeight

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def cpu_model(model_path):
    from nexvk.model.model import Model
    return Model.load(model_path, ctx=512, k_type="f16", v_type="f16", backend="cpu")


def _positions(m, ids, follow):
    """Logits of every prefill position of ids, then one decode step per token of follow."""
    m.reset()
    rows = [m.forward(ids, 0).copy()]
    for tok in follow:
        rows.append(m.forward([tok], m.pos).copy())
    return np.concatenate(rows)


def _rel(a, b):
    return np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)


def test_cpu_logits_match_numpy(model, cpu_model, wikitext):
    """f16 cache: with turbo formats a last-bit difference in a product flips a code now and
    then (test_device.py explains), so the 1e-3 bound is for the f16 cache."""
    ids = model.tokenizer.encode(wikitext[:4000])[:128]
    ref, got = (_positions(m.with_cache("f16", "f16", ctx=160), ids[:64], ids[64:])
                for m in (model, cpu_model))
    assert got.shape == ref.shape == (128, model.arch.vocab_size)
    rel = _rel(got, ref)
    assert rel.max() <= 1e-3, f"worst position {rel.argmax()}: {rel.max():.2e}"
    assert np.array_equal(got.argmax(1), ref.argmax(1))


def test_cpu_greedy_text_matches_numpy(model, cpu_model):
    texts = [m.with_cache("f16", "f16", ctx=128).generate(PROMPT, n=64) for m in (model, cpu_model)]
    assert texts[0] == texts[1]
    assert len(texts[0]) > 100


def test_short_and_long_prefill_steps_agree(cpu_model):
    """A prompt of MV_ROWS or fewer rows runs row by row, a longer one through the panels:
    the same logits either way (to the 1e-3 a product's summation order moves them)."""
    from nexvk.cpu.ops import MV_ROWS
    m = cpu_model.with_cache("f16", "f16", ctx=64)
    ids = np.arange(500, 500 + 3 * MV_ROWS)
    whole = m.forward(ids, 0).copy()
    m.reset()
    parts = np.concatenate([m.forward(ids[i:i + MV_ROWS], i).copy()
                            for i in range(0, len(ids), MV_ROWS)])
    assert _rel(parts, whole).max() <= 1e-3


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tiny_models_match_numpy(tiny, arch):
    from nexvk.model.model import Model
    path = tiny(arch=arch, n_layers=2)
    ms = [Model.load(path, ctx=48, backend=b, max_batch=16) for b in ("numpy", "cpu")]
    ids = np.arange(3, 40) % ms[0].arch.vocab_size
    ref, got = (_positions(m, ids[:30], ids[30:]) for m in ms)
    assert _rel(got, ref).max() <= 1e-3   # f16 cache rounding turns 1e-7 into ~3e-4


def test_cpu_weights_are_held_as_stored(cpu_model, model_path):
    """Q4_1 matrices keep their nibbles (float32 scales added), Q8_0 its bytes: within 25% of
    the file's tensor bytes, under a quarter of the numpy backend's float32."""
    from nexvk.model.gguf import open_gguf
    w = cpu_model.w
    assert isinstance(w.layers[0].attn_q, CpuWeight) and w.layers[0].attn_q.nib
    g = open_gguf(model_path)
    assert w.nbytes <= 1.25 * g.tensor_bytes()
    assert w.nbytes <= 0.25 * 4 * sum(t.n_elements for t in g.tensors.values())


def test_threads_flag(model_path, cpu_model):
    from nexvk.cpu import jit
    from nexvk.model.model import Model
    one = cpu_model.with_cache(threads=1)
    assert one.ops.threads == 1
    assert cpu_model.ops.threads == jit.max_threads()
    for bad in (0, jit.max_threads() + 1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be"):
            cpu_model.with_cache(threads=bad)
    with pytest.raises(ValueError, match="loaded for the cpu backend"):
        Model(cpu_model.cfg, cpu_model.w, cpu_model.tokenizer, 64, backend="numpy")


def test_decode_steps_allocate_nothing(cpu_model):
    """After a 64-token prefill and one decode step (which sizes the scratch), decode steps
    keep Python's traced memory flat, and numba's runtime makes the same allocations in
    every step, all freed: the struct that wraps each array argument of a kernel call
    (NRT counts those), never a data buffer that would grow with the steps."""
    from numba.core.runtime import _nrt_python, rtsys
    m = cpu_model.with_cache("f16", "f16", ctx=256)
    tok = int(np.argmax(m.forward(np.arange(1000, 1064), 0, last_only=True)[-1]))
    tok = int(np.argmax(m.forward([tok], m.pos)[-1]))
    _nrt_python.memsys_enable_stats()
    counts = []
    gc.collect()
    tracemalloc.start()
    for step in range(128):
        before = rtsys.get_allocation_stats()
        tok = int(np.argmax(m.forward([tok], m.pos)[-1]))
        after = rtsys.get_allocation_stats()
        counts.append((after.alloc - before.alloc, after.free - before.free))
        if step == 15:
            gc.collect()
            early = tracemalloc.get_traced_memory()[0]
    gc.collect()
    late = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    _nrt_python.memsys_disable_stats()
    assert len(set(counts)) == 1 and counts[0][0] == counts[0][1], set(counts)
    assert late - early < 64 * 1024, (early, late)


def test_plan_counts_the_cpu_weights_exactly(cpu_model, model_path):
    from nexvk.model.plan import plan
    p = plan(model_path, 2048, "turbo3", "turbo3")
    assert p.weights_cpu_bytes == cpu_model.w.nbytes
    assert p.totals["cpu"] == p.weights_cpu_bytes + p.kv[p.label] + p.cpu_working_bytes
    assert p.totals["cpu"] < p.totals["numpy"] / 3
