"""Hostile input, second round (docs/robustness.md, its table lists every case): the command
line's low rows, presets, codes of the wrong width, a vocabulary shorter than the
embeddings, and crafted files run under a memory cap. Each test failed before its fix."""
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from test_commands import REPO, one_line_error, run

V = __import__("gguf").GGUFValueType


def test_prompt_bytes_that_are_not_utf8_are_replaced(tiny, capsys):
    """-p with bytes that are not UTF-8 (Python sees surrogate escapes) was a TypeError
    traceback from the tokenizer; they now become U+FFFD, as ppl reads its files."""
    prompt = os.fsdecode(b"the \xff\xfe tin")
    rc, out, err = run(["run", "-m", str(tiny()), "-p", prompt, "-n", "2", "-c", "32",
                        "--backend", "numpy"], capsys)
    assert rc == 0 and out.startswith("the \ufffd\ufffd tin"), err


@pytest.mark.parametrize("argv,match", [
    (["run", "-m", "{m}", "-p", "x", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["run", "-m", "{m}", "-p", "x", "-n", "1", "--device", "99", "--backend", "numpy"],
     "Vulkan device"),
    (["ppl", "-m", "{m}", "-f", "{tmp}"], "is a directory; -f takes a text file"),
    (["plan", "{m}", "--memory", "0"], "memory size '0' is less than one byte"),
    (["calibrate", "-m", "{m}", "-f", "{txt}", "--bits", "nan", "--name", "x"],
     "bits must be a finite number"),
    (["calibrate", "-m", "{m}", "-f", "{txt}", "--bits", "0", "--name", "x"],
     "bits must be a finite number"),
])
def test_low_rows_are_one_line_errors(tiny, tmp_path, monkeypatch, capsys, argv, match):
    """Before: numpy's 'expected non-negative integer' after loading; device 99 ignored;
    'text file not found' for a directory; --memory 0 taken as no budget (exit 0); --bits nan
    calibrated and saved a preset of NaN bits."""
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path / "home"))
    txt = tmp_path / "t.txt"
    txt.write_text("the tin " * 400)
    args = [a.format(m=tiny(), tmp=tmp_path, txt=txt) for a in argv]
    one_line_error(*run(args, capsys)[::2], match)
    assert not (tmp_path / "home" / "presets").exists()


def test_validate_checks_its_json_path_first(tmp_path, monkeypatch, capsys):
    """A bad --json path failed only after the whole grid had run (minutes), losing it."""
    import nexvk.validate
    monkeypatch.setattr(nexvk.validate, "validate", lambda *a, **k: pytest.fail("grid ran"))
    rc, _, err = run(["validate", "--quick", "--no-layer", "--json",
                      str(tmp_path / "no" / "such" / "r.json")], capsys)
    one_line_error(rc, err, "No such file or directory")


def test_validate_leaves_no_temporary_directory(device, tmp_path):
    """Each `nexvk validate` left a nexvk-validate-* directory (the layer's log) behind."""
    p = subprocess.run([sys.executable, "-m", "nexvk", "validate", "--quick", "--filter",
                        "rms_norm", "--json", str(tmp_path / "r.json")], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize("content,match", [
    (b"[1, 2]", "a JSON list, not an object"),
    (b'{"version": 1, "k_type": ["turbo3"], "v_type": "turbo3", "layer_types": "", "sinks": 1}',
     "'k_type' must be a string"),
    (b'{"version": 1, "k_type": "turbo3", "v_type": "turbo3", "layer_types": "", "sinks": 1e400}',
     "'sinks' must be an integer"),
    (b'{"version": 1, "k_type": "turbo3", "v_type": "turbo3", "layer_types": "", "sinks": -1}',
     "sinks must be a number of positions >= 0"),
    (b'{"version": 1, "k_type": "turbo3", "v_type": "turbo3", "sinks": 1}', "no 'layer_types'"),
    (b'{"version": 1, "k_type": "\xff\xfe"}', "not a valid nexvk preset"),
    (b'{"version": 1,', "not a valid nexvk preset"),
])
def test_malformed_presets_are_one_line_errors(tiny, tmp_path, monkeypatch, capsys, content,
                                               match):
    """A preset that is JSON but not an object, or with fields of the wrong type, was an
    AttributeError/TypeError/OverflowError traceback."""
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path))
    m = tiny()
    path = tmp_path / "presets" / m.stem / "bad.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    for argv in (["plan", str(m), "--preset", "bad"],
                 ["run", "-m", str(m), "-p", "x", "-n", "1", "--preset", "bad"]):
        one_line_error(*run(argv, capsys)[::2], match)


@pytest.mark.parametrize("backend", ["numpy", "vulkan"])
def test_codes_of_another_width_are_refused(request, backend):
    """Codes one word narrower were broadcast into the staging rows and decoded silently on
    vulkan (numpy failed with a reshape error)."""
    from nexvk import codec
    from nexvk.quant import Encoded
    dev = request.getfixturevalue("device") if backend == "vulkan" else None
    c = codec("turbo3", 64, backend=backend, device=dev)
    enc = c.encode(np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32))
    for codes, scales in ((enc.codes[:, :-1], enc.scales), (enc.codes[:, :1], enc.scales),
                          (enc.codes.astype(np.int64), enc.scales), (enc.codes, enc.scales[:4])):
        with pytest.raises(ValueError, match="must be (uint32|float16)"):
            c.decode(Encoded(enc.format, enc.shape, codes, scales))
    assert np.array_equal(c.decode(enc), c.decode(Encoded(enc.format, enc.shape, enc.codes,
                                                          enc.scales)))


def test_vocab_size_must_match_the_token_list(tiny, fuzz):
    """A vocab_size (and embedding) of 300 rows with 263 tokens loaded, and sampled ids past
    the token list decoded to nothing; llama.cpp refuses such a file too."""
    from nexvk.model.model import Model
    emb = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    p = tiny(meta={"llama.vocab_size": (300, V.UINT32, None)},
             tensors={"token_embd.weight": (emb, 8)})
    with pytest.raises(ValueError, match="300 token embeddings .* lists 263 tokens"):
        Model.load(p, ctx=16)
