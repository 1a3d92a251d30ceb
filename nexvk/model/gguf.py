"""Reading GGUF files with bounded memory and time, whatever the file claims.

`open_gguf(path)` returns a `GGUFFile`: metadata through `meta(key)`, `meta_array(key)`,
`strings(key)` and `array_len(key)`; the tensor table through `tensors` (name -> TensorInfo);
weights through `tensor(name)` (dequantized float32) or `raw(name)` (the stored bytes).
Everything that can go wrong with a user's file (missing, truncated, wrong magic, malformed
header, absurd counts, missing key or tensor) is a FileNotFoundError or ValueError naming the
file and the problem, never a numpy or struct traceback.

Why our own parser and not `gguf.GGUFReader`: the reader trusts every count in the header and
builds one numpy view per array element, so SmolLM2's 49k-token vocabulary costs ~150 MiB and
2 s (Gemma-3's 262k: 720 MiB and 19 s), a 102-byte file claiming 2^40 array elements grows
until memory runs out, and reads past the end come back as empty arrays. The GGUF v2/v3 header
is small and fully specified (ggml's docs/gguf.md): magic, version, tensor and key/value counts,
typed key/values, then one (name, dims, type, offset) record per tensor, then aligned data. We
parse it here, with the `gguf` package's own enums and tables (GGUFValueType,
GGMLQuantizationType, GGML_QUANT_SIZES) and its dequantizers, and check every count, string
length, array length, tensor shape, type and offset against the bytes left in the file BEFORE
allocating anything. Scalars are kept; arrays are kept as (offset, count) and read only when
asked: numeric ones as one np.frombuffer read, string ones as a list. Tensor bytes are read
with plain file reads (nothing stays mapped), so resident memory never grows with the file.
"""
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)           # v1 used 32-bit counts and is long obsolete
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                # GGML_MAX_DIMS
MAX_NAME = 63               # GGML_MAX_NAME - 1: tensor names llama.cpp accepts
MAX_DEPTH = 4               # nesting of arrays of arrays
_WINDOW = 1 << 20           # bytes read ahead while parsing the header

_T = GGUFValueType
_NUMERIC = {_T.UINT8: "<u1", _T.INT8: "<i1", _T.UINT16: "<u2", _T.INT16: "<i2",
            _T.UINT32: "<u4", _T.INT32: "<i4", _T.FLOAT32: "<f4", _T.BOOL: "<u1",
            _T.UINT64: "<u8", _T.INT64: "<i8", _T.FLOAT64: "<f8"}
_NUMERIC = {t: np.dtype(d) for t, d in _NUMERIC.items()}
_MIN_SIZE = {**{t: d.itemsize for t, d in _NUMERIC.items()}, _T.STRING: 8, _T.ARRAY: 12}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_MIN_KV = 8 + 1 + 4 + 1            # key length, 1-byte key, type, 1-byte value
_MIN_TENSOR = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, one dim, type, offset


@dataclass
class Field:
    """One metadata key/value. Scalars (and strings) carry `value`; arrays carry where their
    elements start (`offset`, absolute), their `count`, element type and byte size."""
    key: str
    type: GGUFValueType
    value: object = None
    elem_type: GGUFValueType = None
    count: int = 1
    offset: int = 0
    nbytes: int = 0


@dataclass
class TensorInfo:
    """One tensor record: `shape` is GGUF order (ne0 = the contiguous dim first)."""
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple
    n_elements: int
    n_bytes: int
    data_offset: int  # absolute, in the file


class _Cursor:
    """Sequential little-endian reads from a file; every length is checked against the
    bytes left before anything is read or allocated."""

    def __init__(self, f, size, name, pos=0):
        self.f, self.size, self.name = f, size, name
        self.pos = pos
        self.buf, self.base = b"", pos

    def need(self, n, what):
        if n > self.size - self.pos:
            raise ValueError(f"{self.name}: malformed or truncated GGUF: {what} needs {n} bytes "
                             f"at offset {self.pos}, but only {self.size - self.pos} remain")

    def take(self, n, what):
        """(buffer, offset) holding the next n bytes."""
        self.need(n, what)
        off = self.pos - self.base
        if off < 0 or off + n > len(self.buf):
            self.f.seek(self.pos)
            self.buf = self.f.read(min(max(n, _WINDOW), self.size - self.pos))
            self.base, off = self.pos, 0
            if len(self.buf) < n:
                raise ValueError(f"{self.name}: truncated GGUF: the file shrank while reading")
        self.pos += n
        return self.buf, off

    def skip(self, n, what):
        self.need(n, what)
        self.pos += n

    def u32(self, what):
        return _U32.unpack_from(*self.take(4, what))[0]

    def u64(self, what):
        return _U64.unpack_from(*self.take(8, what))[0]

    def string(self, what):
        n = self.u64(f"length of {what}")
        buf, off = self.take(n, what)
        try:
            return bytes(buf[off:off + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.name}: {what} is not valid UTF-8") from None

    def vtype(self, what):
        t = self.u32(f"type of {what}")
        try:
            return GGUFValueType(t)
        except ValueError:
            raise ValueError(f"{self.name}: {what} has unknown value type {t}") from None

    def count(self, elem_type, what):
        """An array length, checked against the smallest size its elements can have."""
        n = self.u64(f"length of {what}")
        self.need(n * _MIN_SIZE[elem_type], f"{n} elements of {what}")
        return n

    def skip_strings(self, n, what):
        """Skip n strings, checking each length (the walk a string array needs; inlined
        because token tables have 10^5 entries)."""
        unpack, size = _U64.unpack_from, self.size
        for _ in range(n):
            off = self.pos - self.base
            if 0 <= off and off + 8 <= len(self.buf):
                self.pos += 8
                length = unpack(self.buf, off)[0]
            else:
                length = unpack(*self.take(8, f"length of a string in {what}"))[0]
            if length > size - self.pos:
                self.need(length, f"a string in {what}")
            self.pos += length

    def value(self, vtype, what, keep=True, depth=0):
        """Read one value of type vtype; with keep=False, only skip it (returns None)."""
        if vtype in _NUMERIC:
            dtype = _NUMERIC[vtype]
            buf, off = self.take(dtype.itemsize, what)
            v = np.frombuffer(buf, dtype, 1, off)[0].item()
            return bool(v) if vtype == _T.BOOL else v
        if vtype == _T.STRING:
            if keep:
                return self.string(what)
            return self.skip_strings(1, what)
        if depth >= MAX_DEPTH:
            raise ValueError(f"{self.name}: {what} nests arrays more than {MAX_DEPTH} deep")
        elem = self.vtype(f"elements of {what}")
        n = self.count(elem, what)
        if elem in _NUMERIC:
            dtype = _NUMERIC[elem]
            if not keep:
                return self.skip(n * dtype.itemsize, what)
            buf, off = self.take(n * dtype.itemsize, what)
            a = np.frombuffer(buf, dtype, n, off)
            return (a != 0).tolist() if elem == _T.BOOL else a.tolist()
        if not keep:
            if elem == _T.STRING:
                return self.skip_strings(n, what)
            for _ in range(n):
                self.value(elem, what, False, depth + 1)
            return None
        return [self.value(elem, what, True, depth + 1) for _ in range(n)]


class GGUFFile:
    """An opened GGUF: metadata fields and the tensor table (no tensor data is held)."""

    def __init__(self, path, version, fields, tensors, alignment, data_offset, size):
        self.path = Path(path)
        self.version, self.alignment, self.data_offset, self.size = (version, alignment,
                                                                     data_offset, size)
        self.fields = fields    # key -> Field
        self.tensors = tensors  # name -> TensorInfo

    # ---- metadata ------------------------------------------------------------------------
    def has(self, key):
        return key in self.fields

    def _field(self, key):
        f = self.fields.get(key)
        if f is None:
            raise ValueError(f"{self.path.name}: missing GGUF metadata key '{key}'")
        return f

    def meta(self, key, default=KeyError):
        """The value of metadata `key` as a Python scalar, str or list."""
        f = self.fields.get(key)
        if f is None:
            if default is KeyError:
                raise ValueError(f"{self.path.name}: missing GGUF metadata key '{key}'")
            return default
        if f.type != _T.ARRAY:
            return f.value
        if f.elem_type == _T.STRING:
            return self.strings(key)
        if f.elem_type in _NUMERIC:
            return self.meta_array(key).tolist()
        with self._cursor(f.offset - 12, f.offset + f.nbytes) as cur:  # array of arrays
            return cur.value(_T.ARRAY, f"metadata '{key}'")

    def array_len(self, key):
        """Number of elements of array `key` (ValueError when missing or not an array)."""
        f = self._field(key)
        if f.type != _T.ARRAY:
            raise ValueError(f"{self.path.name}: metadata '{key}' is not an array")
        return f.count

    def meta_array(self, key):
        """A numeric array field as a numpy array (one read, no Python list)."""
        f = self._field(key)
        if f.type != _T.ARRAY or f.elem_type not in _NUMERIC:
            raise ValueError(f"{self.path.name}: metadata '{key}' is not a numeric array")
        a = np.frombuffer(self._read(f.offset, f.nbytes), _NUMERIC[f.elem_type], f.count)
        return a != 0 if f.elem_type == _T.BOOL else a

    def strings(self, key):
        """A string-array field as a list of str (invalid UTF-8 replaced)."""
        f = self._field(key)
        if f.type != _T.ARRAY or f.elem_type != _T.STRING:
            raise ValueError(f"{self.path.name}: metadata '{key}' is not a string array")
        buf, out, off = self._read(f.offset, f.nbytes), [], 0
        unpack, append = _U64.unpack_from, out.append
        for _ in range(f.count):  # lengths were checked when the file was opened
            n = unpack(buf, off)[0]
            off += 8
            append(str(buf[off:off + n], "utf-8", "replace"))
            off += n
        return out

    # ---- tensors -------------------------------------------------------------------------
    def has_tensor(self, name):
        return name in self.tensors

    def _tensor(self, name):
        t = self.tensors.get(name)
        if t is None:
            raise ValueError(f"{self.path.name}: missing tensor '{name}'")
        return t

    def raw(self, name):
        """The stored bytes of tensor `name`, np.uint8 (n_bytes,), read (not mapped)."""
        t = self._tensor(name)
        out = np.empty(t.n_bytes, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(t.data_offset)
            got = f.readinto(memoryview(out))
        if got != t.n_bytes:
            raise ValueError(f"{self.path.name}: truncated GGUF: tensor '{name}' has {got} of "
                             f"{t.n_bytes} bytes (was the file changed after opening?)")
        return out

    def tensor(self, name):
        """Tensor `name` dequantized to float32, numpy shape (rows, cols) = GGUF (ne1, ne0)
        (in general the GGUF dims reversed)."""
        from gguf.quants import dequantize
        t = self._tensor(name)
        try:
            w = dequantize(self.raw(name), t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{self.path.name}: tensor '{name}' has type {t.tensor_type.name}, "
                             "which this gguf package cannot dequantize") from None
        w = np.ascontiguousarray(w.reshape(tuple(reversed(t.shape))), dtype=np.float32)
        bad = w.size - int(np.count_nonzero(np.isfinite(w)))
        if bad:  # a NaN norm weight gave fluent wrong text on the device
            raise ValueError(f"{self.path.name}: tensor '{name}' holds {bad} non-finite "
                             "values (NaN or Inf)")
        return w

    def tensor_bytes(self):
        """Bytes of every tensor as stored (quantized) in the file."""
        return sum(t.n_bytes for t in self.tensors.values())

    # ---- file access ---------------------------------------------------------------------
    def _read(self, offset, n):
        with open(self.path, "rb") as f:
            f.seek(offset)
            buf = f.read(n)
        if len(buf) != n:
            raise ValueError(f"{self.path.name}: truncated GGUF (was the file changed after "
                             "opening?)")
        return buf

    def _cursor(self, start, end):
        return _Bounded(io.BytesIO(self._read(start, end - start)), end - start, self.path.name)


class _Bounded(_Cursor):
    """A cursor over an in-memory byte range, usable as a context manager."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


_OPENED = {}  # (resolved path, size, mtime_ns) -> GGUFFile (metadata scalars and tables only)


def open_gguf(path):
    """Open a GGUF file for reading, raising FileNotFoundError/ValueError with a clear message.

    An unchanged file (same path, size and mtime) is parsed once per process; what is kept is
    the scalars and the tensor table, not arrays or tensor data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _OPENED:
        with open(path, "rb") as f:
            _OPENED[key] = _parse(f, path, st.st_size)
    return _OPENED[key]


def _parse(f, path, size):
    head = f.read(8)
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        got = f"magic {head[:4]!r}, expected {GGUF_MAGIC!r}" if len(head) >= 4 else f"only {size} bytes"
        raise ValueError(f"{path}: not a GGUF file ({got})")
    cur = _Cursor(f, size, str(path), pos=4)
    version = cur.u32("version")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise ValueError(f"{path}: unsupported GGUF version {version}{hint}; "
                         f"supported: {', '.join(map(str, VERSIONS))}")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    cur.need(n_kv * _MIN_KV + n_tensors * _MIN_TENSOR,
             f"{n_kv} metadata entries and {n_tensors} tensor records")
    fields = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        if not key or key in fields:
            raise ValueError(f"{path}: malformed GGUF: {'empty' if not key else 'duplicate'} "
                             f"metadata key {key!r}")
        what = f"metadata '{key}'"
        vtype = cur.vtype(what)
        if vtype != _T.ARRAY:
            fields[key] = Field(key, vtype, cur.value(vtype, what))
            continue
        elem = cur.vtype(f"elements of {what}")
        n = cur.count(elem, what)
        start = cur.pos
        if elem in _NUMERIC:
            cur.skip(n * _NUMERIC[elem].itemsize, what)
        elif elem == _T.STRING:
            cur.skip_strings(n, what)
        else:
            for _ in range(n):
                cur.value(elem, what, keep=False, depth=1)
        fields[key] = Field(key, _T.ARRAY, None, elem, n, start, cur.pos - start)
    align = fields.get("general.alignment", Field("", _T.UINT32, DEFAULT_ALIGNMENT))
    if (align.type not in (_T.UINT32, _T.UINT64, _T.INT32) or align.value <= 0
            or align.value & (align.value - 1)):
        raise ValueError(f"{path}: general.alignment must be a power of two, got {align.value!r}")
    alignment = align.value
    records = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = cur.u32(f"dimension count of tensor '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"{path}: tensor '{name}' has {n_dims} dimensions (1..{MAX_DIMS})")
        dims = tuple(cur.u64(f"dimensions of tensor '{name}'") for _ in range(n_dims))
        raw_type = cur.u32(f"type of tensor '{name}'")
        records.append((name, dims, raw_type, cur.u64(f"offset of tensor '{name}'")))
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = {}
    for name, dims, raw_type, offset in records:
        t = _tensor_info(path, size, name, dims, raw_type, offset, alignment, data_offset)
        if name in tensors:
            raise ValueError(f"{path}: malformed GGUF: duplicate tensor '{name}'")
        tensors[name] = t
    spans = sorted((t.data_offset, t.data_offset + t.n_bytes, t.name) for t in tensors.values())
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"{path}: malformed GGUF: tensors '{a}' and '{b}' overlap")
    g = GGUFFile(path, version, fields, tensors, alignment, data_offset, size)
    arch = fields.get("general.architecture")
    if arch is None:
        raise ValueError(f"{path}: GGUF has no 'general.architecture' metadata")
    if arch.type != _T.STRING or not arch.value:
        raise ValueError(f"{path}: 'general.architecture' must be a non-empty string")
    return g


def _tensor_info(path, size, name, dims, raw_type, offset, alignment, data_offset):
    """A TensorInfo, once its name, type, shape and extent are known to be sound."""
    if not name or len(name.encode()) > MAX_NAME:
        raise ValueError(f"{path}: tensor name {name[:80]!r} is empty or over {MAX_NAME} bytes")
    try:
        ttype = GGMLQuantizationType(raw_type)
        block, type_size = GGML_QUANT_SIZES[ttype]
    except (ValueError, KeyError):
        raise ValueError(f"{path}: tensor '{name}' has unknown type {raw_type}") from None
    if dims[0] % block:
        raise ValueError(f"{path}: tensor '{name}' ({ttype.name}) has a first dimension of "
                         f"{dims[0]}, not a multiple of its block size {block}")
    n_elements = 1
    for n in dims:
        n_elements *= n  # Python ints: no overflow, and bounded by the check below
    n_bytes = n_elements // block * type_size
    start = data_offset + offset
    if offset % alignment:
        raise ValueError(f"{path}: tensor '{name}' offset {offset} is not a multiple of the "
                         f"alignment {alignment}")
    if start + n_bytes > size:
        raise ValueError(f"{path}: truncated GGUF: tensor '{name}' ({n_bytes} bytes at byte "
                         f"{start}) ends past the end of the file ({size} bytes)")
    return TensorInfo(name, ttype, dims, n_elements, n_bytes, start)
