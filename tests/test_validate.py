"""The validation harness: its quick grid passes on the device, and it does catch errors."""
import json

import numpy as np
import pytest

from nexvk import validate
from nexvk.quant import formats

QUICK = validate.cases(quick=True)


@pytest.mark.parametrize("case", QUICK, ids=[c.name for c in QUICK])
def test_quick_case(device, case):
    r = validate.run_case(device, case)
    assert r.ok, f"{case.name}: error {r.error:.3g} (tol {r.tol:.0e}) {r.detail}"


def test_full_grid_covers_what_models_use():
    names = [c.name for c in validate.cases()]
    for needle in ["d=256", "gqa=3", "gqa=8", "mode=prefill", "ctx=63", "ctx=9000",
                   "sparse=1e-06", "data=large", "data=small", "data=zeros", "kfmt=q8_0,vfmt=turbo3"]:
        assert any(needle in n for n in names), needle


def test_a_wrong_reference_is_reported(device, monkeypatch):
    """Perturb the numpy twin: the device no longer matches and the case must fail."""
    orig = formats.Turbo.decode_compute
    monkeypatch.setattr(formats.Turbo, "decode_compute",
                        lambda self, c, s: orig(self, c, s) * np.float32(1.001))
    r = validate.run_case(device, validate.Case("dequantize", dict(fmt="turbo3", d=64)))
    assert not r.ok and r.error > 1e-5


@pytest.mark.parametrize("kernel,word", [("quantize", 0), ("quantize", 1), ("dequantize", 0)])
def test_a_kernel_writing_out_of_bounds_is_caught(device, monkeypatch, kernel, word):
    """Make a kernel write one row too many (word 0: the row count its bounds check uses)
    or shift the quantizer's destination by one vector (word 1): the sentinels (or the
    codes) must catch it."""
    orig = device.run

    def shifted(uploads=(), dispatches=(), downloads=()):
        for b in uploads:
            if b.name.endswith("/dyn"):
                b.host[word] += 1
        return orig(uploads, dispatches, downloads)
    monkeypatch.setattr(device, "run", shifted)
    params = dict(fmt="turbo3", d=64) | (dict(data="gauss") if kernel == "quantize" else {})
    r = validate.run_case(device, validate.Case(kernel, params))
    assert not r.ok, r


def test_cli_writes_a_json_report(device, tmp_path):
    from nexvk.cli import main
    from nexvk.device import spirv
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as e:
        main(["validate", "--quick", "--filter", "dequantize", "--json", str(out), "--no-layer"])
    assert e.value.code == 0
    rep = json.loads(out.read_text())
    assert rep["ok"] and rep["device"]["name"] and len(rep["cases"]) == 12
    assert {r["module"] for r in rep["spirv_val"]} == set(spirv.shipped())
