"""The hardened cache on SmolLM2: KLD bounds on a short wikitext-2 window, per-layer formats
reaching the model, the ppl/plan CLI showing the configuration, and `nexvk calibrate` on a
two-layer cut of the model (every layer costs two forward passes there)."""
import dataclasses
import json

import numpy as np
import pytest

from nexvk.cli import main
from nexvk.model.calibrate import allocate, load_preset, preset_path
from nexvk.model.eval import perplexity
from nexvk.quant.formats import make

# measured on this window (the first 256 tokens of wikitext-2 test, numpy): plain turbo3 0.313;
# hardened, with the model file's key statistics (nexvk/model/keystats.py, recipe 3): turbo3
# 0.0698, turbo4/turbo3 0.0356 (recipe 2: 0.0716 and 0.0444; fitted on the window itself,
# before issue 15: 0.0925 and 0.0304); the bounds leave about 30% margin for float32
# summation-order differences (which can also change the text the model writes itself)
BOUNDS = {("turbo3", "turbo3"): 0.091, ("turbo4", "turbo3"): 0.047}


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def base():
    return {}


@pytest.mark.parametrize("k,v", list(BOUNDS))
def test_hardened_kld_on_a_window(model, wikitext, base, k, v):
    kw = dict(ctx=256, chunks=1, k_type=k, v_type=v, kld=True, progress=False, kld_base=base)
    text = wikitext[:20000]  # tokenizing the whole file would cost more than the windows
    hard = perplexity(model, text, cache_opts={}, **kw)
    assert "keys centred and scaled on 30/30 layers, first 1 position in f16" in hard["cache"]
    bits = (make(k, 64).bits_per_value + make(v, 64).bits_per_value) / 2
    sink = (16 - bits) / 256                  # one f16 position instead of codes
    tables = 16 * 64 * 2 / (256 * 128)        # f16 mean and scale per head, over K and V
    raw = 32 * 64 / (256 * 128)               # the sink's raw float32 key
    assert hard["bits_per_value"] == pytest.approx(bits + sink + tables + raw)
    assert 0 < hard["kld_mean"] <= BOUNDS[k, v], hard
    if (k, v) == ("turbo3", "turbo3"):
        plain = perplexity(model, text, cache_opts={"plain": True}, **kw)
        assert "plain" in plain["cache"] and plain["bits_per_value"] == 3.25
        assert plain["kld_mean"] >= 2.5 * hard["kld_mean"], (plain, hard)


def test_layer_types_reach_every_layer(model):
    ids = model.tokenizer.encode("The capital of France is")
    q8 = model.with_cache("q8_0", "q8_0")
    mixed = model.with_cache("turbo3", "turbo3", cache_opts={"layer_types": "0-29:q8_0/q8_0"})
    some = model.with_cache("turbo3", "turbo3", cache_opts={"layer_types": "0-28:q8_0/q8_0"})
    outs = []
    for m in (q8, mixed, some):
        m.reset()
        outs.append(m.forward(ids, 0)[-1].copy())
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_ppl_cli_shows_the_configuration_and_its_bits(model_path, wikitext, tmp_path, capsys):
    text = tmp_path / "wiki.txt"
    text.write_text(wikitext[:20000])
    rc, out, _ = run(["ppl", "-m", str(model_path), "-f", str(text), "-c", "64", "--chunks", "1",
                      "-ctk", "turbo3", "-ctv", "turbo3", "--sinks", "2",
                      "--layer-types", "0:q8_0/turbo4", "--kld"], capsys)
    assert rc == 0
    assert "cache: turbo3/turbo3 [0:q8_0/turbo4], keys centred and scaled on 29/30 layers, first 2 " \
           "positions in f16;" in out
    assert "bits/value at 64 tokens" in out and "KLD mean" in out
    rc, _, err = run(["ppl", "-m", str(model_path), "-f", str(text), "--layer-types", "0:q8_0"],
                     capsys)
    assert rc == 2 and "LAYER[-LAST]:K/V" in err and "Traceback" not in err


def test_allocate_spends_the_budget_where_kld_is():
    kld = np.array([[0.05, 0.001, 0.001], [0.002, 0.002, 0.001]])   # K of layer 0 hurts most
    costs = np.broadcast_to(np.array([2.0, 3.0, 4.0]), (2, 3, 3))       # turbo2/3/4 bytes
    errs = np.array([3.4, 1.0, 0.27])
    choice, predicted = allocate(kld, costs, errs, budget=3.0 * 6)     # 3 "bits" on average
    assert choice[0, 0] == 2                                            # K0 gets turbo4
    assert (costs[0, 0, 0] * 0 + np.take_along_axis(costs, choice[..., None], 2).sum()) <= 18
    assert predicted == pytest.approx((kld * errs[choice]).sum())
    with pytest.raises(ValueError, match="budget"):
        allocate(kld, costs, errs, budget=11.0)


def two_layer(model):
    """The model's first two layers only (a real, if useless, transformer): calibration costs
    2 x layers + 2 forward passes, which keeps this test to seconds."""
    from nexvk.model.model import Model
    from nexvk.model.weights import Weights
    cfg = dataclasses.replace(model.cfg, n_layers=2, n_kv_heads=model.cfg.n_kv_heads[:2])
    w = model.w
    return Model(cfg, Weights(w.tok_embd, w.output, w.output_norm, w.layers[:2]),
                 model.tokenizer, ctx=64)


def test_calibrate_writes_a_preset_that_plan_and_ppl_use(model, model_path, wikitext,
                                                         tmp_path, monkeypatch, capsys):
    from nexvk.model.calibrate import calibrate, save_preset
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path))
    small = two_layer(model)
    preset = calibrate(small, wikitext, bits=3.5, ctx=64, chunks=1, progress=False)
    assert preset["bits_per_value"] <= 3.5 and len(preset["kld_per_layer"]["k"]) == 2
    assert all(x > 0 for x in preset["kld_per_layer"]["k"] + preset["kld_per_layer"]["v"])
    path = save_preset(model_path, "t35", preset)
    assert path == preset_path(model_path, "t35") and path.is_file()
    c = load_preset(model_path, "t35")
    assert (c.k_type, c.v_type) == ("turbo3", "turbo3") and c.sinks == 1
    assert c.layer_types == preset["layer_types"]
    # the full model's plan with a preset made for it (the 2-layer one does not fit)
    full = dict(preset, layer_types="0:turbo4/turbo3,1-29:turbo3/turbo2")
    path.write_text(json.dumps(full))
    rc, out, _ = run(["plan", str(model_path), "-c", "512", "--preset", "t35"], capsys)
    assert rc == 0 and "KV turbo3/turbo3 [0:turbo4/turbo3,1-29:turbo3/turbo2]" in out
    rc, _, err = run(["plan", str(model_path), "--preset", "t35", "-ctk", "q8_0"], capsys)
    assert rc == 2 and "drop -ctk" in err
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a valid nexvk preset"):
        load_preset(model_path, "t35")
    with pytest.raises(FileNotFoundError, match="nexvk calibrate --name other"):
        load_preset(model_path, "other")
    with pytest.raises(ValueError, match="preset name"):
        preset_path(model_path, "../up")
