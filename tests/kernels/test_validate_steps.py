"""`nexvk validate` cases of the token-step kernels: they cover every weight type, and they do
fail when the twin is wrong or a kernel writes where it must not."""
import numpy as np

from nexvk import validate
from nexvk.kernels import ggml_types, mul_mv
from nexvk.kernels.oneshot import Scratch


def test_the_full_grid_covers_every_type_op_and_mode():
    names = [c.name for c in validate.step_cases()]
    for t in ggml_types.TYPES:
        for needle in [f"mul_mv fmt={t},", f"mul_mm fmt={t},", f"get_rows fmt={t},"]:
            assert any(n.startswith(needle) for n in names), needle
    for needle in ["mode=acc", "mode=last", "group=256", "neox=1", "act=gelu", "add fmt"]:
        assert any(needle in n for n in names), needle


def _case(kernel, **p):
    return validate.Case(kernel, dict(fmt="q4_k", rows=37, k=512, **p))


def test_a_wrong_twin_is_reported(device, monkeypatch):
    orig = mul_mv.ref
    monkeypatch.setattr(mul_mv, "ref", lambda *a, **k: orig(*a, **k) * np.float32(1.0001))
    r = validate.run_case(device, _case("mul_mv", mode="plain"))
    assert not r.ok and r.error > r.tol


def test_writing_one_row_too_far_is_caught(device, monkeypatch):
    orig = mul_mv.dispatches

    def shifted(*a, **k):
        return [(pipe, push[:2] + [push[2] + 1] + push[3:]) for pipe, push in orig(*a, **k)]
    monkeypatch.setattr(mul_mv, "dispatches", shifted)
    r = validate.run_case(device, _case("mul_mv", mode="plain"))
    assert not r.ok and "outside the output" in r.detail


def test_a_spare_token_written_is_caught(device, monkeypatch):
    """Tell the kernel one token more than the case has: the spare token's row must be seen."""
    orig = Scratch.dyn
    monkeypatch.setattr(Scratch, "dyn", lambda self, n, *a, **k: orig(self, n + 1, *a, **k))
    r = validate.run_case(device, validate.Case("mul_mm", dict(fmt="q8_0", rows=37, k=160, T=11,
                                                              mode="plain")))
    assert not r.ok and "outside the output" in r.detail
