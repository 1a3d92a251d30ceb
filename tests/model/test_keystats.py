"""Key statistics per model file (nexvk/model/keystats.py): the hardened cache's key
transform no longer depends on how a sequence arrives -- decode equals prefill, and a step
rolled back leaves the model as fresh (issue 16 item 7)."""
import numpy as np
import pytest

from nexvk.cache import CacheConfig
from nexvk.model import keystats
from nexvk.model.model import Model
from nexvk.quant.transform import KeyTransform

TURBO = CacheConfig("turbo3", "turbo3")


def test_moments_give_the_tables_a_fit_on_the_same_keys_gives(rng):
    """Statistics summed over appends of any size are KeyTransform.fit's on all the rows
    (positions before `skip` left out)."""
    L, hkv, H, d = 2, 2, 4, 16
    k = rng.standard_normal((40, hkv, d)) * np.linspace(0.2, 3, d) + 0.5
    q = rng.standard_normal((40, H, d)) * np.linspace(3, 0.2, d)
    m = keystats.Moments(L, hkv, d, skip=1)
    for a, b in ((0, 1), (1, 7), (7, 40)):
        m(1, a, k[a:b], q[a:b])
    m(0, 0, k, q)
    mean, scale = m.tables()
    t = KeyTransform(L, hkv, d, [True] * L)
    for layer in range(L):
        t.fit(layer, k[1:], q[1:])
        assert np.allclose(mean[layer], t.mean[layer], rtol=2e-3, atol=2e-3)
        assert np.allclose(scale[layer], t.scale[layer], rtol=2e-3)


def test_moments_by_position_block_count_the_positions_below_a_capacity(rng):
    L, hkv, H, d = 1, 1, 2, 16
    k = rng.standard_normal((40, hkv, d)) + np.linspace(0, 1, 40)[:, None, None]
    q = rng.standard_normal((40, H, d))
    m = keystats.Moments(L, hkv, d, n_blocks=3, block=8, skip=1)
    for a, b in ((0, 5), (5, 6), (6, 23), (23, 40)):   # the last block takes the rest
        m(0, a, k[a:b], q[a:b])
    assert m.n[:, 0].tolist() == [7, 8, 24]
    t = KeyTransform(L, hkv, d, [True])
    for cap, rows in ((9, 16), (16, 16), (17, 40), (100, 40), (None, 40)):
        t.fit(0, k[1:rows], q[1:rows])
        mean, scale = m.tables(cap)
        assert np.allclose(mean, t.mean, atol=2e-3) and np.allclose(scale, t.scale, rtol=2e-3)


def test_calibration_tokens_are_sequences_the_model_writes_from_bos(tiny):
    """Each sequence of the batch is what the model writes alone from BOS (top_k=1: greedy,
    so the batched sampling can be checked against a plain decode); the text is BOS and then
    the sequences one after another, the same for the same seed."""
    m = Model.load(tiny(), ctx=32)
    x = keystats.calibration_tokens(m, 20, 3, top_k=1, seed=0)
    bos = m.tokenizer.bos_id
    assert len(x) == 20 and x[0] == bos
    greedy, tok = [], bos
    m.reset()
    for pos in range(7):
        tok = int(np.argmax(m.forward([tok], pos)[-1]))
        greedy.append(tok)
    assert x[1:].tolist() == (greedy * 3)[:19]
    sampled = keystats.calibration_tokens(m, 20, 3, top_k=40, seed=0)
    assert np.array_equal(sampled, keystats.calibration_tokens(m, 20, 3, top_k=40, seed=0))
    assert not np.array_equal(sampled, x)


def test_statistics_are_cached_per_file_and_refreshed_on_demand(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path))
    monkeypatch.setitem(keystats.RECIPE, "tokens", 24)
    monkeypatch.setitem(keystats.RECIPE, "block", 8)
    path = tiny()
    mean, scale = keystats.key_stats(path).tables()
    assert mean.shape == scale.shape == (2, 1, 16) and (scale > 0).all()
    assert len(list((tmp_path / "keystats").glob("*.npz"))) == 1

    def fail(*a, **kw):
        raise AssertionError("computed again")
    real = keystats.compute
    monkeypatch.setattr(keystats, "compute", fail)
    again = keystats.key_stats(path).tables()          # from the cache directory
    assert np.array_equal(again[0], mean) and np.array_equal(again[1], scale)
    monkeypatch.setattr(keystats, "compute", real)
    fresh = keystats.key_stats(path, refresh=True)      # the same recipe: the same tables
    assert np.array_equal(fresh.tables()[0], mean) and np.array_equal(fresh.tables()[1], scale)
    m = Model.load(path, ctx=16, cache=TURBO)           # a cache of 16 positions: 2 blocks
    assert np.array_equal(m.config.key_mean, fresh.tables(16)[0])
    assert not np.array_equal(m.config.key_mean, mean) and m.cache.transform.ready.all()
    assert m.with_cache("turbo4", "turbo3").cache.transform.ready.all()


def _decode(m, ids):
    m.reset()
    m.forward(ids[:1], 0)
    for i in range(1, len(ids)):
        out = m.forward(ids[i:i + 1], i)
    return out[-1].copy()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("vulkan", marks=pytest.mark.device)])
def test_decode_equals_a_prefill_of_the_same_rows(tiny, tmp_path, monkeypatch, request, backend):
    """One token at a time or all at once: the same keys, so the same codes and logits up to
    floating-point order. (Fitted per sequence, a decode centred every key on the first
    non-sink key alone.)"""
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path))
    monkeypatch.setitem(keystats.RECIPE, "tokens", 24)
    device = request.getfixturevalue("device") if backend == "vulkan" else None
    m = Model.load(tiny(), ctx=16, cache=TURBO.replace(backend=backend, device=device))
    ids = m.tokenizer.encode("the tin man sat on a tin can")[:12]
    m.reset()
    prefill = m.forward(ids, 0)[-1].copy()
    decode = _decode(m, ids)
    assert np.abs(decode - prefill).max() <= 1e-4 * np.abs(prefill).max()
    fitted = Model(m.cfg, Model.load(m.source, ctx=16).w, m.tokenizer, 16, cache=TURBO)
    decoded = _decode(fitted, ids)
    fitted.reset()
    assert np.abs(decoded - fitted.forward(ids, 0)[-1]).max() > \
        1e-3 * np.abs(prefill).max()    # what the statistics fix


@pytest.mark.parametrize("stats", ["file", "per sequence"])
def test_a_rolled_back_prefill_leaves_the_model_as_a_fresh_one(tiny, tmp_path, monkeypatch,
                                                               stats):
    """A prefill that fails after layer 0 stored its keys is rolled back (truncate); the next
    prompt at position 0, without reset(), gives what a fresh model gives. Fitted per
    sequence, layer 0's tables used to stay fitted on the failed prompt."""
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path))
    monkeypatch.setitem(keystats.RECIPE, "tokens", 24)
    m = Model.load(tiny(), ctx=16, cache=TURBO)
    if stats == "per sequence":
        m = Model(m.cfg, m.w, m.tokenizer, 16, cache=TURBO)
    first = m.tokenizer.encode("a tin can on the man")
    ids = m.tokenizer.encode("the tin man sat")
    real = m.cache.append

    def fail_at_layer_1(layer, *a, **kw):
        if layer == 1:
            raise KeyboardInterrupt
        return real(layer, *a, **kw)
    monkeypatch.setattr(m.cache, "append", fail_at_layer_1)
    with pytest.raises(KeyboardInterrupt):
        m.forward(first, 0)
    monkeypatch.undo()
    assert m.cache.length(0) == 0
    got = m.forward(ids, 0)
    want = m.with_cache().forward(ids, 0)
    assert np.array_equal(got, want)


def test_cli_first_append_and_key_stats_refresh(tiny, tmp_path, monkeypatch, capsys):
    from test_commands import run
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path))
    monkeypatch.setitem(keystats.RECIPE, "tokens", 24)
    path = str(tiny())
    text = tmp_path / "t.txt"
    text.write_text("the tin man sat on a tin can and the tin can sat on the man " * 8)
    ppl = ["ppl", "-m", path, "-f", str(text), "-c", "16", "--chunks", "2", "-ctk", "turbo3",
           "-ctv", "turbo3", "--kld"]
    rc, out, _ = run(ppl, capsys)
    assert rc == 0
    rc, out2, _ = run(ppl + ["--first-append", "2"], capsys)
    kld = [float(o.split("KLD")[1].split()[1]) for o in (out, out2) if "KLD" in o]
    assert rc == 0 and len(kld) == 2 and abs(kld[0] - kld[1]) <= 1e-3 * max(kld[0], 1e-3) + 1e-6
    rc, _, err = run(ppl + ["--first-append", "0"], capsys)
    assert rc == 2 and "first_append must be a number of tokens in 1..16" in err
    rc, out, _ = run(["calibrate", "-m", path, "--key-stats"], capsys)
    assert rc == 0 and "key statistics" in out
    before = keystats.key_stats(path).tables()
    monkeypatch.setitem(keystats.RECIPE, "block", 8)
    rc, out, _ = run(["calibrate", "-m", path, "--key-stats", "-f", str(text)], capsys)
    from_text = keystats.key_stats(path).tables()      # kept: the recipe plus the text's hash
    assert rc == 0 and not np.array_equal(from_text[0], before[0])
    rc, _, err = run(["calibrate", "-m", path], capsys)
    assert rc == 2 and "calibrate needs -f, --bits, --name" in err
