"""Reading GGUF files: one place that turns the `gguf` package's failures into clear errors.

`open_gguf(path)` returns a `GGUFFile` with `meta(key)` for metadata and `tensor(name)` for a
weight dequantized to float32. Everything that can go wrong with a user's file (missing,
truncated, wrong magic, malformed header, missing key or tensor) is raised as FileNotFoundError
or ValueError naming the file and the problem, never as a numpy or struct traceback.
"""
from pathlib import Path

import numpy as np

GGUF_MAGIC = b"GGUF"


class GGUFFile:
    """An opened GGUF: metadata fields and the tensor table (memory-mapped, nothing loaded)."""

    def __init__(self, path, reader):
        self.path = Path(path)
        self.reader = reader
        self.fields = reader.fields
        self.tensors = {t.name: t for t in reader.tensors}  # name -> gguf ReaderTensor

    # ---- metadata ------------------------------------------------------------------------
    def has(self, key):
        return key in self.fields

    def meta(self, key, default=KeyError):
        """The value of metadata `key` as a Python scalar, str or list."""
        f = self.fields.get(key)
        if f is None:
            if default is KeyError:
                raise ValueError(f"{self.path.name}: missing GGUF metadata key '{key}'")
            return default
        try:
            return f.contents()
        except Exception as e:  # malformed field payload
            raise ValueError(f"{self.path.name}: cannot read metadata '{key}': {e}") from None

    def meta_array(self, key):
        """A numeric array field as a numpy array without going through Python lists."""
        from gguf import GGUFValueType
        f = self.fields.get(key)
        if f is None:
            raise ValueError(f"{self.path.name}: missing GGUF metadata key '{key}'")
        if f.types[0] != GGUFValueType.ARRAY or f.types[-1] == GGUFValueType.STRING:
            raise ValueError(f"{self.path.name}: metadata '{key}' is not a numeric array")
        return np.concatenate([f.parts[i] for i in f.data]) if f.data else np.zeros(0)

    def strings(self, key):
        """A string-array field as a list of str (fast path for token tables)."""
        f = self.fields.get(key)
        if f is None:
            raise ValueError(f"{self.path.name}: missing GGUF metadata key '{key}'")
        try:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        except Exception as e:
            raise ValueError(f"{self.path.name}: cannot read metadata '{key}': {e}") from None

    # ---- tensors -------------------------------------------------------------------------
    def has_tensor(self, name):
        return name in self.tensors

    def tensor(self, name):
        """Tensor `name` dequantized to float32, numpy shape (rows, cols) = GGUF (ne1, ne0)."""
        from gguf.quants import dequantize
        t = self.tensors.get(name)
        if t is None:
            raise ValueError(f"{self.path.name}: missing tensor '{name}'")
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{self.path.name}: tensor '{name}' has type {t.tensor_type.name}, "
                             "which this gguf package cannot dequantize") from None
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 (fastest) first
        return np.ascontiguousarray(w.reshape(shape), dtype=np.float32)

    def tensor_bytes(self):
        """Bytes of every tensor as stored (quantized) in the file."""
        return sum(int(t.n_bytes) for t in self.tensors.values())


_OPENED = {}  # (resolved path, size, mtime_ns) -> GGUFFile


def open_gguf(path):
    """Open a GGUF file for reading, raising FileNotFoundError/ValueError with a clear message.

    # NOTE: GGUFReader builds one numpy view per vocabulary entry (~2 s for a 49K vocab), so an
    # unchanged file (same path, size and mtime) is parsed once per process and shared.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _OPENED:
        _OPENED[key] = _open(path, st.st_size)
    return _OPENED[key]


def _open(path, size):
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4:
        raise ValueError(f"{path}: not a GGUF file (only {size} bytes)")
    if head != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {head!r}, expected {GGUF_MAGIC!r})")
    from gguf import GGUFReader
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:
        # A cut-off download shows up as a short read or an out-of-range offset somewhere in
        # the header or tensor table; the package reports those as assorted low-level errors.
        raise ValueError(f"{path}: malformed or truncated GGUF ({size} bytes): "
                         f"{type(e).__name__}: {e}") from None
    g = GGUFFile(path, reader)
    # The reader memory-maps tensors lazily, so check every tensor's extent against the file.
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ValueError(f"{path}: truncated GGUF: tensor '{t.name}' ends at byte {end} "
                             f"but the file has {size} bytes")
    if "general.architecture" not in g.fields:
        raise ValueError(f"{path}: GGUF has no 'general.architecture' metadata")
    return g
