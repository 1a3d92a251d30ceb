"""A user's broken model file must give one clear error naming the file, never a traceback
from inside numpy or struct; and reading any file costs at most its size in memory."""
import re
import shutil
import struct
import tracemalloc

import numpy as np
import pytest

from nexvk.model.gguf import open_gguf
from nexvk.model.model import Model
from nexvk.model.plan import plan


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        open_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"GG", b"\x00" * 4096, b"PK\x03\x04" + b"x" * 100],
                         ids=["empty", "two-bytes", "zeros", "zip"])
def test_not_gguf(tmp_path, content):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="not a GGUF file") as e:
        open_gguf(p)
    assert "bad.gguf" in str(e.value)


@pytest.mark.parametrize("n", [8, 200, 5000, 3_000_000, -16], ids=lambda n: f"first{n}")
def test_truncated(model_path, tmp_path, n):
    """Copies of the first n bytes of the real model (negative: all but the last |n| bytes)."""
    data = model_path.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:n])
    with pytest.raises(ValueError, match="truncated|malformed") as e:
        open_gguf(p)
    assert "cut.gguf" in str(e.value)
    with pytest.raises(ValueError):
        plan(p, 1024)


def test_truncated_model_load(model_path, tmp_path):
    p = tmp_path / "cut.gguf"
    p.write_bytes(model_path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="truncated"):
        Model.load(p, ctx=64)


def test_missing_tensor_named(model_path, tmp_path):
    g = open_gguf(model_path)
    with pytest.raises(ValueError, match="missing tensor 'blk.99.attn_q.weight'"):
        g.tensor("blk.99.attn_q.weight")
    with pytest.raises(ValueError, match="missing GGUF metadata key 'llama.nonexistent'"):
        g.meta("llama.nonexistent")


def test_valid_copy_opens(model_path, tmp_path):
    """The checks above must not reject an intact file (guards against over-eager checks)."""
    p = tmp_path / "copy.gguf"
    shutil.copy(model_path, p)
    g = open_gguf(p)
    assert g.meta("general.architecture") == "llama"
    assert g.tensor("blk.0.attn_k.weight").shape == (3 * 64, 576)


# ---- hostile headers: every count is checked against the file before anything is allocated --
U8, U32, U64, STR, ARR = 0, 4, 10, 8, 9


def _s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, payload):
    return _s(key) + struct.pack("<I", vtype) + payload


ARCH = _kv("general.architecture", STR, _s("llama"))


def _gguf(kvs=(ARCH,), tensors=(), version=3, n_tensors=None, n_kv=None, tail=b""):
    """Raw GGUF bytes: kvs are _kv() byte strings, tensors (name, dims, type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv)
    out += b"".join(kvs)
    for name, dims, ttype, offset in tensors:
        out += _s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ttype, offset)
    return out + tail


def _peak(fn, *args):
    """(result or exception, peak bytes traced by tracemalloc while fn ran)."""
    tracemalloc.start()
    try:
        try:
            out = fn(*args)
        except Exception as e:  # noqa: BLE001 - returned for the caller to check
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _bounded_failure(path, match):
    """plan (and open_gguf, unless the header itself is sound) fails with a ValueError
    matching `match`, within the file's size plus a small constant of memory (the 1 MiB
    read-ahead window and bookkeeping)."""
    budget = path.stat().st_size + (2 << 20)
    for fn in (open_gguf, lambda p: plan(p, 4096)):
        err, peak = _peak(fn, path)
        assert peak < budget, f"{peak / 2**20:.1f} MiB traced for a {path.stat().st_size}-byte file"
        if fn is open_gguf and not isinstance(err, Exception):
            continue  # a well-formed header whose values are wrong: plan must say so
        assert isinstance(err, ValueError), repr(err)
        assert re.search(match, str(err)), str(err)


HOSTILE = {  # the files, plus each other thing the parser checks
    "array-2^40-uint8": (_gguf([ARCH, _kv("x", ARR, struct.pack("<IQ", U8, 2**40))]),
                         "1099511627776 elements"),
    "2^40-tensors": (_gguf(n_tensors=2**40, tail=bytes(16 << 20)), "tensor records"),
    "2^40-metadata": (_gguf(n_kv=2**40), "metadata entries"),
    "string-2^63": (_gguf([ARCH, _kv("x", STR, struct.pack("<Q", 2**63))]), "needs"),
    "strings-2^40": (_gguf([ARCH, _kv("x", ARR, struct.pack("<IQ", STR, 2**40))]), "elements"),
    "nested-deep": (_gguf([ARCH, _kv("x", ARR, struct.pack("<IQ", ARR, 1) * 8)]), "nests arrays"),
    "unknown-value-type": (_gguf([ARCH, _kv("x", 13, b"")]), "unknown value type 13"),
    "duplicate-key": (_gguf([ARCH, ARCH]), "duplicate metadata key"),
    "empty-key": (_gguf([ARCH, _kv("", U8, b"\0")]), "empty metadata key"),
    "bad-utf8-key": (_gguf([ARCH, _kv(b"\xff\xfe", U8, b"\0")]), "not valid UTF-8"),
    "version-1": (_gguf(version=1), "unsupported GGUF version 1"),
    "big-endian": (_gguf(version=3 << 24), "big-endian"),
    "no-architecture": (_gguf([]), "no 'general.architecture'"),
    "architecture-not-str": (_gguf([_kv("general.architecture", U32, struct.pack("<I", 1))]),
                             "must be a non-empty string"),
    "alignment-3": (_gguf([ARCH, _kv("general.alignment", U32, struct.pack("<I", 3))]),
                    "power of two"),
    "5-dims": (_gguf(tensors=[("t", (1,) * 5, 0, 0)]), "5 dimensions"),
    "dim-2^63": (_gguf(tensors=[("t", (32, 2**63), 0, 0)]), "ends past the end"),
    "unknown-ggml-type": (_gguf(tensors=[("t", (32,), 99, 0)]), "unknown type 99"),
    "q8_0-ne0-not-32k": (_gguf(tensors=[("t", (33,), 8, 0)]), "not a multiple of its block"),
    "misaligned-offset": (_gguf(tensors=[("t", (1,), 0, 4)], tail=bytes(64)), "alignment"),
    "duplicate-tensor": (_gguf(tensors=[("t", (1,), 0, 0), ("t", (1,), 0, 32)],
                               tail=bytes(128)), "duplicate tensor"),
    "overlapping": (_gguf(tensors=[("a", (16,), 0, 0), ("b", (16,), 0, 32)], tail=bytes(160)),
                    "overlap"),
    "long-name": (_gguf(tensors=[("t" * 64, (1,), 0, 0)], tail=bytes(64)), "over 63 bytes"),
    "block_count-2^27": (_gguf([ARCH, _kv("llama.block_count", U32, struct.pack("<I", 2**27)),
                                _kv("llama.embedding_length", U32, struct.pack("<I", 64)),
                                _kv("llama.attention.head_count", U32, struct.pack("<I", 1))]),
                         "block_count 134217728 exceeds 512"),
}


@pytest.fixture(scope="module")
def warm(model_path):
    """plan once, so the codec tables plan computes (once per process) are not measured."""
    plan(model_path, 4096)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_header_fails_within_its_size(warm, tmp_path, name):
    data, match = HOSTILE[name]
    p = tmp_path / f"{name}.gguf"
    p.write_bytes(data)
    _bounded_failure(p, match)


def test_real_model_with_inflated_token_type_count(warm, model_path, tmp_path):
    """SmolLM2 with its token_type array length patched to 2^40 (the GGUFReader went past
    3.7 GB on this one)."""
    f = open_gguf(model_path).fields["tokenizer.ggml.token_type"]
    data = bytearray(model_path.read_bytes())
    assert struct.unpack_from("<Q", data, f.offset - 8)[0] == 49152  # the count precedes the data
    data[f.offset - 8:f.offset] = struct.pack("<Q", 2**40)
    p = tmp_path / "inflated.gguf"
    p.write_bytes(data)
    _bounded_failure(p, "token_type")


def test_large_valid_array_costs_its_size_not_more(tmp_path):
    """A valid file with a 1 MiB metadata array (778 MB and 9.5 s with GGUFReader) opens
    within its size, and the array comes back as one numpy view of one read."""
    p = tmp_path / "big-array.gguf"
    p.write_bytes(_gguf([ARCH, _kv("x", ARR, struct.pack("<IQ", U8, 1 << 20) + bytes(1 << 20))]))
    g, peak = _peak(open_gguf, p)
    assert peak < (2 << 20) + (1 << 20)
    a = g.meta_array("x")
    assert a.dtype == np.uint8 and a.shape == (1 << 20,) and g.array_len("x") == 1 << 20


def test_plan_and_strings_memory_on_the_real_model(model_path):
    """Parsing SmolLM2 keeps no per-token objects: the vocabulary is read only when asked."""
    from nexvk.model import gguf as gguf_mod
    gguf_mod._OPENED.clear()
    g, peak = _peak(open_gguf, model_path)
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB"
    assert g.array_len("tokenizer.ggml.tokens") == 49152
    tokens = g.strings("tokenizer.ggml.tokens")
    assert len(tokens) == 49152 and tokens[0] == "<|endoftext|>"
    types = g.meta_array("tokenizer.ggml.token_type")
    assert types.dtype == np.int32 and types.shape == (49152,)


def test_parser_agrees_with_gguf_reader(fuzz, tmp_path):
    """Metadata, tensor table, raw bytes and dequantized tensors equal the gguf package's own
    reader on the tiny model (F32, F16 and Q8_0 tensors, string and int arrays)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    p = fuzz.write_tiny_model(tmp_path / "tiny.gguf")
    g, r = open_gguf(p), GGUFReader(p)
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys == list(g.fields)
    for k in keys:
        a, b = r.fields[k].contents(), g.meta(k)
        assert a == b or np.allclose(a, b), k
    assert [t.name for t in r.tensors] == list(g.tensors)
    for t in r.tensors:
        u = g.tensors[t.name]
        assert (u.tensor_type, u.shape, u.n_bytes, u.data_offset) == (
            t.tensor_type, tuple(int(n) for n in t.shape), int(t.n_bytes), int(t.data_offset))
        assert np.array_equal(g.raw(t.name), np.asarray(t.data).reshape(-1).view(np.uint8))
        ref = dequantize(t.data, t.tensor_type).reshape(tuple(reversed(u.shape)))
        np.testing.assert_array_equal(g.tensor(t.name), ref)


def test_nested_arrays_and_bools(tmp_path):
    p = tmp_path / "nested.gguf"
    inner = struct.pack("<IQ", U32, 2) + struct.pack("<2I", 1, 2)
    p.write_bytes(_gguf([ARCH, _kv("nest", ARR, struct.pack("<IQ", ARR, 2) + inner * 2),
                         _kv("flags", ARR, struct.pack("<IQ", 7, 3) + b"\x00\x02\x01"),
                         _kv("flag", 7, b"\x05")]))
    g = open_gguf(p)
    assert g.meta("nest") == [[1, 2], [1, 2]]
    assert g.meta("flags") == [False, True, True] and g.meta("flag") is True
    with pytest.raises(ValueError, match="not a numeric array"):
        g.meta_array("nest")
    with pytest.raises(ValueError, match="not a string array"):
        g.strings("flags")
    with pytest.raises(ValueError, match="not an array"):
        g.array_len("flag")


def test_raw_is_read_not_mapped_and_file_changes_are_caught(fuzz, tmp_path):
    p = fuzz.write_tiny_model(tmp_path / "tiny.gguf")
    g = open_gguf(p)
    t = g.tensors["token_embd.weight"]
    raw = g.raw("token_embd.weight")
    assert raw.flags.writeable and raw.base is None  # its own memory, not a view of a mapping
    assert raw.tobytes() == p.read_bytes()[t.data_offset:t.data_offset + t.n_bytes]
    with open(p, "r+b") as f:  # the file shrinks after it was opened
        f.truncate(t.data_offset + 10)
    with pytest.raises(ValueError, match="truncated"):
        g.raw("token_embd.weight")
