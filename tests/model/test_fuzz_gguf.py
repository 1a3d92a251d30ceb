"""1,000 mutated GGUF files through plan, Model.load and generate (tools/fuzz_gguf.py), each
under an address-space cap and a time limit: every case either works or raises ValueError.
The harness itself is checked too: an injected exception, crash, hang or runaway allocation
must each be reported as that one case, and the campaign must go on after it."""
import pytest


def test_a_thousand_mutated_files(fuzz):
    s = fuzz.campaign(1000, seed=0, timeout=20)
    assert s["cases"] == 1000
    assert not s["failures"], "\n\n".join(
        f"case {f['i']} ({f['kind']}): {f['outcome']}\n{f.get('detail', '')}"
        for f in s["failures"][:3])
    kinds = [k.split("/") for k in s["kinds"]]  # "mutation/base model"
    assert {k for k, _ in kinds} == set(fuzz.KINDS) and {a for _, a in kinds} == set(fuzz.ARCHS)
    # both sides are exercised: many files are rejected, some still load and generate
    assert 0 < s["steps"].get("generate", 0) < 500 and s["steps"].get("plan", 0) > 100


@pytest.mark.parametrize("what,outcome", [("raise", "TypeError"), ("memory", "MemoryError"),
                                          ("abort", "crash"), ("hang", "hang")])
def test_the_harness_reports_each_kind_of_failure(fuzz, what, outcome):
    s = fuzz.campaign(6, seed=0, timeout=3, inject=(what, 2))
    assert s["cases"] == 6  # the cases after the failing one still ran
    (f,) = s["failures"]
    assert f["i"] == 2 and f["outcome"].startswith(outcome), f
