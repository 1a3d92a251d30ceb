"""Prompt caches (Model.save_state / load_state, --prompt-cache): a model that loads the file
of a processed prompt continues with exactly the logits of the uninterrupted run (numpy),
prefills only what follows the saved tokens, and refuses a file of another model or cache
format, or a truncated or altered one, leaving its cache as it was."""
import json
import re

import numpy as np
import pytest

from nexvk.model.model import Model

A = "The history of the city begins in the year 1200, when a small group of"
B = " farmers settled by the river and built a mill"


@pytest.fixture(scope="module")
def ids(model):
    tok = model.tokenizer
    return tok.encode(A), tok.encode(B)


@pytest.mark.parametrize("types", [("turbo3", "turbo3"), ("q8_0", "turbo4"), ("f16", "f16")])
def test_continue_from_file_is_exact(model, ids, tmp_path, types):
    a, b = ids
    m = model.with_cache(*types)
    m.forward(a, 0)
    m.save_state(tmp_path / "p.npz")
    want = [m.forward(b, len(a)).copy(), m.forward([42], len(a) + len(b)).copy()]
    fresh = model.with_cache(*types, ctx=256)  # another capacity: rows go by position
    fresh.load_state(tmp_path / "p.npz")
    assert fresh.tokens == a
    got = [fresh.forward(b, len(a)).copy(), fresh.forward([42], len(a) + len(b)).copy()]
    for w, g in zip(want, got):
        assert np.array_equal(w, g)


def test_only_the_rest_is_prefilled(model, ids, tmp_path):
    a, b = ids
    m = model.with_cache("turbo3", "turbo3")
    path = tmp_path / "p.npz"
    first = m.generate(A, n=8, prompt_cache=path)          # no file yet: written
    assert path.is_file() and m.stats["reused_tokens"] == 0
    fresh = model.with_cache("turbo3", "turbo3")
    assert fresh.generate(A, n=8, prompt_cache=path) == first
    assert fresh.stats["reused_tokens"] == len(a) - 1      # the last token runs for its logits
    fresh = model.with_cache("turbo3", "turbo3")
    fresh.generate(A + B, n=4, prompt_cache=path)
    assert fresh.stats["reused_tokens"] == len(a) and fresh.stats["prefill_tokens"] == len(b)
    # the file of the shorter prompt was replaced by this one's
    again = model.with_cache("turbo3", "turbo3")
    again.load_state(path)
    assert again.tokens == a + b


def test_file_bytes_against_f16(model, ids, tmp_path):
    """Codes, norms, sinks and key tables of 2 x 30 x 3 x 64 values per token: a fifth of
    f16 and a bit more at this length (the key tables weigh less with more tokens)."""
    a, b = ids
    m = model.with_cache("turbo3", "turbo3")
    m.forward((a + b) * 8, 0)
    size = m.save_state(tmp_path / "p.npz")
    f16 = len(m.tokens) * 2 * 30 * 3 * 64 * 2
    assert 0.15 < size / f16 < 0.3, size / f16


def test_other_model_or_format_is_refused(model, ids, tmp_path, tiny):
    a, _ = ids
    m = model.with_cache("turbo3", "turbo3")
    m.forward(a, 0)
    m.save_state(tmp_path / "p.npz")
    other = model.with_cache("turbo4", "turbo3")
    with pytest.raises(ValueError, match="another format.*k_types"):
        other.load_state(tmp_path / "p.npz")
    t = Model.load(tiny(), ctx=32, k_type="turbo3", v_type="turbo3")
    t.forward([1, 2, 3], 0)
    t.save_state(tmp_path / "tiny.npz")
    with pytest.raises(ValueError, match="another model"):
        m.load_state(tmp_path / "tiny.npz")


def _saved(model, a, path):
    """A turbo3 cache of tokens a saved to path."""
    m = model.with_cache("turbo3", "turbo3")
    m.forward(a, 0)
    m.save_state(path)
    return path


def test_damaged_files_are_never_loaded(model, ids, tmp_path):
    a, b = ids
    data = _saved(model, a, tmp_path / "p.npz").read_bytes()
    target = model.with_cache("turbo3", "turbo3")
    target.forward(b, 0)
    before = target.cache.state()
    cases = {"truncated": data[:len(data) // 2], "empty": b"", "not npz": b"hello" * 100}
    # altered: one byte of the codes flipped (the zip's CRC or the sha256 catches it)
    mid = data.index(b"k_codes5.npy") + 200
    cases["altered"] = data[:mid] + bytes([data[mid] ^ 0x40]) + data[mid + 1:]
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match="corrupt"):
            target.load_state(tmp_path / name)
        assert target.tokens == b
        after = target.cache.state()
        assert all(np.array_equal(before[k], after[k]) for k in before), name
    with pytest.raises(FileNotFoundError):
        target.load_state(tmp_path / "missing.npz")


def test_sha256_catches_what_the_zip_does_not(model, ids, tmp_path):
    """A file rewritten with consistent zip checksums but other codes, or another header,
    fails the sha256."""
    path = _saved(model, ids[0], tmp_path / "p.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    codes = arrays["k_codes3"]
    np.savez(tmp_path / "re.npz", **dict(arrays, k_codes3=codes ^ np.uint32(1)))
    header = json.loads(arrays["header"].tobytes())
    header["meta"] = "edited"
    np.savez(tmp_path / "head.npz", **dict(arrays, header=np.frombuffer(
        json.dumps(header).encode(), np.uint8)))
    for name in ("re.npz", "head.npz"):
        with pytest.raises(ValueError, match="checksum"):
            model.with_cache("turbo3", "turbo3").load_state(tmp_path / name)


@pytest.mark.device
def test_continue_from_file_on_the_device(vk_model, model, ids, tmp_path):
    """The whole step on the Vulkan device fits the key transform there: the file carries the
    device's tables and codes, and a fresh device cache continues exactly; a numpy model
    reads the same file (one layout for both stores)."""
    a, b = ids
    m = vk_model.with_cache("turbo3", "turbo3")
    m.forward(a, 0)
    m.save_state(tmp_path / "p.npz")
    want = m.forward(b, len(a)).copy()
    fresh = vk_model.with_cache("turbo3", "turbo3")
    fresh.load_state(tmp_path / "p.npz")
    assert np.array_equal(fresh.forward(b, len(a)), want)
    host = model.with_cache("turbo3", "turbo3")
    host.load_state(tmp_path / "p.npz")
    assert np.abs(host.cache.transform.mean).max() > 0  # the device's fitted means came along
    got = host.forward(b, len(a))
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_run_flag(model_path, tmp_path, capsys):
    """`nexvk run --prompt-cache FILE`: the first run writes FILE, the second prefills one
    token (the last, for its logits) and prints the same text."""
    from nexvk.cli import main
    outs = []
    for _ in range(2):
        with pytest.raises(SystemExit) as e:
            main(["run", "-m", str(model_path), "-p", A, "-n", "6", "-c", "128", "--backend",
                  "numpy", "--prompt-cache", str(tmp_path / "p.npz")])
        out = capsys.readouterr()
        assert e.value.code == 0, out.err
        outs.append(out)
    assert outs[0].out == outs[1].out
    assert "from" not in outs[0].err.split("prefill:")[1].splitlines()[0]
    assert re.search(r"prefill: 1 tokens .* \d+ more from .*p\.npz", outs[1].err), outs[1].err
