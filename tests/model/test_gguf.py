"""A user's broken model file must give one clear error naming the file, never a traceback
from inside numpy or struct."""
import shutil

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
