"""`nexvk bench --peer` plumbing without building llama.cpp: a stand-in llama_cpp module with
the calls e2e_peer makes (Llama, eval, reset, scores, n_tokens) checks that the peer row runs
the same prompt tokens and greedy steps, and that every row gets its ratio to the peer's
f16 row of the same model and context."""
import sys
import types

import numpy as np

from nexvk import bench


class FakeLlama:
    def __init__(self, path, n_ctx, **kw):
        self.kw, self.n_ctx, self.tokens = kw, n_ctx, []
        self.scores = np.zeros((n_ctx, 8), np.float32)

    def eval(self, ids):
        self.tokens += list(ids)
        self.scores[len(self.tokens) - 1, len(self.tokens) % 8] = 1

    def reset(self):
        self.tokens = []

    @property
    def n_tokens(self):
        return len(self.tokens)


def test_peer_row_and_ratios(monkeypatch, tiny):
    fake = types.SimpleNamespace(Llama=FakeLlama, __version__="0.fake",
                                 GGML_TYPE_F16=1, GGML_TYPE_Q8_0=8)
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    assert bench.peer_available()
    from nexvk.model.gguf import open_gguf
    from nexvk.model.tokenizer import Tokenizer
    path = tiny()
    row = bench.e2e_peer(path, Tokenizer(open_gguf(path)), "f16", ctx=40, decode_tokens=4,
                         name="tiny", threads=1)
    assert "error" not in row, row
    assert row["prompt_tokens"] == 36 and row["decode_tokens"] == 4 and row["peer"]
    ours = {"model": "tiny", "ctx": 40, "cache": "turbo3", "backend": "cpu",
            "prefill_tok_s": 2 * row["prefill_tok_s"], "decode_tok_s": row["decode_tok_s"] / 2}
    other = {"model": "tiny", "ctx": 80, "cache": "f16", "decode_tok_s": 1.0, "prefill_tok_s": 1.0}
    bench.add_peer_ratio([row, ours, other])
    assert ours["x_peer"] == 0.5 and ours["x_peer_prefill"] == 2.0 and row["x_peer"] == 1.0
    assert "x_peer" not in other                       # no peer row at that context
    bad = bench.e2e_peer(path, Tokenizer(open_gguf(path)), "turbo3", ctx=40, name="tiny")
    assert "error" in bad                              # a KV type llama.cpp has not: a row, no raise


def test_rounds_are_merged_into_medians():
    """--rounds N: each configuration's rows from N rounds become one row of medians with
    the decode range; a failure in any round is reported, not averaged away."""
    def row(dec, pre, cache="f16", backend="cpu"):
        return {"model": "m", "ctx": 512, "cache": cache, "backend": backend,
                "decode_tok_s": dec, "prefill_tok_s": pre}
    rows = [row(50.0, 300.0), row(40.0, 330.0, "turbo3"), row(100.0, 320.0, backend="llama.cpp"),
            row(60.0, 280.0), {"model": "m", "ctx": 512, "cache": "turbo3", "backend": "cpu",
                                "error": "boom"},
            row(90.0, 310.0, backend="llama.cpp"), row(30.0, 400.0), row(110.0, 330.0, backend="llama.cpp")]
    merged = bench.merge_rounds(rows)
    assert len(merged) == 3
    ours, bad, peer = merged
    assert ours["decode_tok_s"] == 50.0 and ours["prefill_tok_s"] == 300.0
    assert ours["decode_range"] == "30-60" and ours["rounds"] == 3
    assert bad["error"] == "boom"
    assert peer["decode_tok_s"] == 100.0 and peer["decode_range"] == "90-110"
    assert rows[0]["decode_tok_s"] == 50.0 and "rounds" not in rows[0]   # inputs untouched


def test_idle_thread_policy_shown_and_not_passed_to_llama_cpp(monkeypatch):
    """The bench header says how the cpu backend's idle threads wait (GOMP_SPINCOUNT changes
    decode speed by ~25% at 2048 keys: docs/cpu.md); the llama.cpp child runs with OpenMP's
    defaults, without the passive policy nexvk set or a spin count given for nexvk."""
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    assert bench.idle_threads() == "spin GOMP_SPINCOUNT=10000"
    rep = {"meta": {"nexvk": "0", "quick": False, "backends": ["cpu"], "device": None,
                    "started": "now", "loadavg": (0.1, 0.1, 0.1),
                    "idle_threads": bench.idle_threads()}}
    for k in ("memory", "error", "codec", "attention", "e2e", "concurrency"):
        rep[k] = []
    assert "idle threads: spin GOMP_SPINCOUNT=10000" in bench.format_report(rep).splitlines()[0]
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setenv("NEXVK_OMP_WAIT_POLICY_SET", "1")
    seen = {}

    def fake_peer(*a):
        seen.update({k: bench.os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")})
        return {}
    monkeypatch.setattr(bench, "e2e_peer", fake_peer)
    monkeypatch.setattr("nexvk.model.gguf.open_gguf", lambda p: None)
    monkeypatch.setattr("nexvk.model.tokenizer.Tokenizer", lambda g: None)
    bench._peer_in_child("m.gguf", "f16", 64, 4, "m", 1)
    assert seen == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
