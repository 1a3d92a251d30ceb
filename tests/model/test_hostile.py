"""Hostile input, second round (docs/robustness.md, its table lists every case): the command
line's low rows, presets, codes of the wrong width, a vocabulary shorter than the
embeddings, and crafted files run under a memory cap. Each test failed before its fix."""
import os
import subprocess
import sys
import tempfile

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


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
@pytest.mark.parametrize("backend", ["numpy", "vulkan"])
@pytest.mark.parametrize("name,value,qtype,match", [
    ("blk.0.attn_norm.weight", np.nan, 0, "'blk.0.attn_norm.weight' holds 1 non-finite"),
    ("blk.0.attn_norm.weight", np.inf, 0, "'blk.0.attn_norm.weight' holds 1 non-finite"),
    ("blk.1.attn_q.weight", np.nan, 1, "attn_q.weight.* non-finite"),      # F16 values
    ("blk.0.attn_v.weight", -np.inf, 8, "attn_v.weight.* non-finite"),     # a Q8_0 scale
    ("blk.0.attn_norm.weight", 1e30, 0, "non-finite|holds at most 65504"),  # finite; overflows
])
def test_non_finite_weights_and_logits_are_errors(request, tiny, fuzz, backend, name, value,
                                                  qtype, match):
    """One NaN, Inf or 1e30 in blk.0.attn_norm gave exit 0 and fluent wrong text on the
    device while numpy refused the file. Weights are now checked on the host as they load
    (values of f32/f16, fp16 scales of quantized blocks), and every backend's step refuses
    non-finite logits (what a finite 1e30 turns into), leaving the cache as it was."""
    from nexvk.model.model import Model
    dev = request.getfixturevalue("device") if backend == "vulkan" else None
    a = next(t for n, t, _ in fuzz.tiny_parts()[1] if n == name).copy()
    a.reshape(-1)[3] = value
    path = tiny(tensors={name: (a, qtype)})
    if np.isfinite(value):
        m = Model.load(path, ctx=16, backend=backend, device=dev)
        with pytest.raises(ValueError, match=match):
            m.generate("the tin", n=2)
        assert [m.cache.length(i) for i in range(2)] == [0, 0]
    else:
        with pytest.raises(ValueError, match=match):
            Model.load(path, ctx=16, backend=backend, device=dev)


def test_count_nonfinite_reads_every_weight_type():
    from nexvk.kernels import ggml_types
    for kind, wt in ggml_types.TYPES.items():
        raw = ggml_types.random_bytes(kind, 4, 256)
        assert ggml_types.count_nonfinite(kind, raw) == 0, kind
        for bad in (np.nan, np.inf, -np.inf):
            r = raw.copy()
            if wt.halves:   # the last fp16 field of block 3
                o = wt.halves[-1]
                r.reshape(-1, wt.block_bytes)[3, o:o + 2] = np.array([bad], "<f2").view(np.uint8)
            else:
                r.view("<f4" if kind == "f32" else "<f2")[5] = bad
            assert ggml_types.count_nonfinite(kind, r) == 1, (kind, bad)
            assert not np.isfinite(ggml_types.dequantize(kind, r, 4, 256)).all()


def test_streamed_tokens_are_the_whole_texts_tokens(model_path, wikitext):
    """ppl reads and tokenizes its file as a stream; the ids must be exactly those of one
    encode of the whole text (cuts every 3000 characters here, ~100 of them), for byte-level
    BPE (SmolLM2) and for SentencePiece with a space prefix (the tiny vocabulary)."""
    from test_tokenizer import _SentencePieceFile

    from nexvk.model.eval import stream_ids
    from nexvk.model.gguf import open_gguf
    from nexvk.model.tokenizer import Tokenizer
    text = wikitext[:300000]
    tok = Tokenizer(open_gguf(model_path))
    assert list(stream_ids(tok, text, block=3000)) == tok.encode(text, bos=False)
    spm = Tokenizer(_SentencePieceFile([("a", -1.0), ("b", -2.0), ("\u2581", -3.0),
                                        ("\u2581a", -0.5), ("ab", -0.7), ("\u2581ab", -0.2)],
                                       add_space_prefix=True))
    words = np.random.default_rng(0).choice(["a", "ab", "b", "ba", " ", "\n", "é"], 20000)
    text = "".join(words)
    assert list(stream_ids(spm, text, block=500, overlap=100)) == spm.encode(text, bos=False)


def test_ppl_reads_only_what_the_chunks_need(tiny, tmp_path):
    """`ppl --chunks 1` on an 87 MB text took 2.5 GB (the whole file tokenized) and then a
    Rust abort. On a 48 MB file under a 3 GiB address-space cap it now reads what one window
    needs; the child's peak RSS is checked."""
    big = tmp_path / "big.txt"
    line = " = Robert Boulter = \n Robert Boulter is an English film , television actor .\n"
    with open(big, "w") as f:
        for _ in range(48):
            f.write(line * ((1 << 20) // len(line)))

    rc, out, err, rss = capped(["ppl", "-m", str(tiny()), "-f", str(big), "-c", "64",
                                "--chunks", "2", "--backend", "numpy"])
    assert rc == 0, err[-2000:]
    assert "2 windows of 64" in out, out
    assert rss < 600 << 20, rss


# NOTE: Linux keeps a process's peak RSS across exec, and a forked child starts with its
# parent's resident pages: a child forked straight from a big pytest process would report
# pytest's size. So a small launcher (its own peak is pytest's; a fork of it starts afresh)
# runs the command and reports the command's own exit code and peak RSS.
_LAUNCH = """
import os, resource, subprocess, sys
cap, report = int(sys.argv[1]), sys.argv[2]
p = subprocess.Popen(sys.argv[3:],
                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
_, status, usage = os.wait4(p.pid, 0)
with open(report, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def capped(args, cap=3 << 30):
    """`nexvk ARGS` in a child under an address-space cap: (exit code, stdout, stderr, the
    child's peak RSS in bytes)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as report:
        subprocess.run([sys.executable, "-c", _LAUNCH, str(cap), report.name, sys.executable,
                        "-m", "nexvk", *args], cwd=REPO, stdout=out, stderr=err, text=True,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"},
                       check=True)
        rc, maxrss = (int(x) for x in report.read().split())
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read(), maxrss << 10


def _spm_file(tiny, fuzz, pieces):
    """The tiny gemma3 model with `pieces` [(text, score)] added to its SentencePiece
    vocabulary (and token_embd grown to match)."""
    from gguf import GGMLQuantizationType as Q
    meta = {k: v for k, v, _, _ in fuzz.tiny_parts(arch="gemma3")[0]}
    tokens = meta["tokenizer.ggml.tokens"] + [t for t, _ in pieces]
    scores = meta["tokenizer.ggml.scores"] + [s for _, s in pieces]
    types = meta["tokenizer.ggml.token_type"] + [1] * len(pieces)
    emb = np.random.default_rng(0).standard_normal((len(tokens), 32)).astype(np.float32)
    return tiny(arch="gemma3", meta={"tokenizer.ggml.tokens": (tokens, V.ARRAY, V.STRING),
                                     "tokenizer.ggml.scores": (scores, V.ARRAY, V.FLOAT32),
                                     "tokenizer.ggml.token_type": (types, V.ARRAY, V.INT32)},
                tensors={"token_embd.weight": (emb, Q.Q8_0)})


@pytest.mark.parametrize("pieces", [
    [("a" * k, -float(k)) for k in range(2, 2001)],     # a, aa, ..., a x 2000: 2.4 MB
    [("b" * (1 << 20), -1.0)],                           # one piece of 1 MiB
], ids=["chain", "long"])
def test_crafted_sentencepiece_files_are_one_line_under_a_memory_cap(tiny, fuzz, pieces):
    """The issue's files: 3.7 GB and a Rust abort (chain), 155 s of CPU (one 1 MiB piece).
    Now one line, well under the cap; the child's peak RSS is checked."""
    rc, _, err, rss = capped(["run", "-m", str(_spm_file(tiny, fuzz, pieces)), "-p", "a", "-n", "1",
                              "-c", "16", "--backend", "numpy"])
    one_line_error(rc, err, "SentencePiece pieces too long to index")
    assert rss < 600 << 20, rss


_THREADS = """
import sys, threading
from nexvk.model.model import Model
path, n = sys.argv[1], 3
ref = Model.load(path, ctx=64, backend="vulkan").generate("the tin", n=8)
for rep in range(1):
    out = {}
    def work(i):
        out[i] = Model.load(path, ctx=64, backend="vulkan").generate("the tin", n=8)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [out.get(i) for i in range(n)] == [ref] * n, (rep, ref, out)
print("ok")
"""


def test_threads_load_and_generate_on_one_device(device, tiny):
    """Two concurrent Model.load(backend="vulkan") segfaulted (2 runs in 3), or generated only
    <|endoftext|>: the weight upload's staging buffer, the pool and the pipeline and graph
    caches were shared without a lock. Three threads, in a child process so
    that a crash is a failure of this test alone (without the validation layer, which only
    slows it: it sees one thread's commands, not races between threads)."""
    p = tiny(n_layers=2, dim=64, n_heads=4, n_kv=2, ffn=128)
    env = {k: v for k, v in os.environ.items() if k != "VK_INSTANCE_LAYERS"}
    r = subprocess.run([sys.executable, "-c", _THREADS, str(p)], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-3000:])


def test_uploads_from_threads_keep_their_own_words(device):
    """The upload staging buffer is the device's: without the device lock, one thread's words
    went into another thread's buffer (or Kompute crashed). Four threads upload distinct words
    to buffers of their own, switching threads as often as Python allows."""
    import threading

    from nexvk.kernels.upload import upload_words
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    bufs = [device.pool.get(f"test-threads/{i}", 4096, np.uint32, kind="device") for i in range(4)]
    bad = []

    def work(i):
        for rep in range(30):
            words = np.full(4096, i * 1000 + rep, np.uint32)
            upload_words(device, bufs[i], 0, words)
            device.run(downloads=[bufs[i]])
            if not np.array_equal(bufs[i].host, words):
                bad.append((i, rep))
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        sys.setswitchinterval(old)
        device.release("test-threads/")
    assert not bad, bad[:5]


def test_device_heap_is_checked_before_allocating(device, monkeypatch):
    """Buffers were allocated with no look at the device-local heap the driver reports (past
    it, the driver fails or the process dies); now a buffer that would pass it is refused
    with a ValueError before anything is allocated."""
    from nexvk.cache import KVCache
    pool = device.pool
    assert pool.heap_bytes == device.info["memory_bytes"] > 0
    monkeypatch.setattr(pool, "heap_bytes", pool.device_bytes + (4 << 20))  # 4 MiB left
    before = pool.allocations
    with pytest.raises(ValueError, match="device-local heap; lower the context"):
        KVCache(4, 2, 64, 16384, k_type="f16", v_type="f16", backend="vulkan", device=device)
    assert pool.allocations - before < 8  # it stopped at the first buffer past the heap
    KVCache(1, 1, 64, 64, k_type="f16", v_type="f16", backend="vulkan", device=device)  # fits
