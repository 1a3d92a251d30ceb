"""A GGML weight on the device: its rows split into parts that each fit one storage buffer.

Lavapipe binds at most 128 MiB per storage buffer, so a 178 MB embedding (Gemma-3's Q8_0
262144 x 640) is two parts; the products and get_rows dispatch once per part, each covering
its rows. Bytes reach the device row chunk by row chunk (read, repack, upload), so loading a
weight never holds more than one chunk on the host.
"""
from dataclasses import dataclass

import numpy as np

from nexvk.kernels import ggml_types
from nexvk.kernels.upload import upload_words

CHUNK_BYTES = 16 << 20   # raw bytes repacked per upload step


@dataclass
class Part:
    row0: int            # first row of the weight held here
    rows: int
    buffer: object       # device Buffer (uint32 storage)
    w_off: int = 0       # word offset of this part's streams in the buffer

    def __post_init__(self):
        if self.w_off % 4:
            raise ValueError(f"weight part at word {self.w_off}: offsets must be multiples of 4 "
                             "(the shaders read quants 16 bytes at a time)")


class DeviceWeight:
    """(rows, cols) of GGML type `wtype` in device buffers, as `parts`."""

    def __init__(self, wtype, rows, cols, parts):
        self.wtype, self.rows, self.cols, self.parts = ggml_types.get(wtype), rows, cols, parts

    @property
    def nbytes(self):
        return sum(self.wtype.words(p.rows, self.cols) * 4 for p in self.parts)

    def __repr__(self):
        return (f"DeviceWeight({self.wtype.name}, {self.rows} x {self.cols}, "
                f"{len(self.parts)} part(s), {self.nbytes / 2**20:.1f} MiB)")

    @classmethod
    def upload(cls, dev, name, kind, rows, cols, read_rows, max_rows=None, parts=None):
        """Upload through `read_rows(r0, r1)` -> raw GGUF bytes of rows r0..r1-1, into storage
        buffers named `name`/<part>, or into the given `parts` (placed by WeightArenas).
        `max_rows` caps a part (default: the buffer limit)."""
        wt = ggml_types.get(kind)
        per_row = wt.words(1, cols) * 4
        fit = dev.max_buffer_bytes // per_row
        if fit < 1:
            raise ValueError(f"{name}: one row of {cols} {wt.name} values ({per_row} bytes) "
                             f"exceeds {dev.name}'s {dev.max_buffer_bytes} bytes per buffer")
        step = max(1, min(fit, max_rows or fit))
        if parts is None:
            parts = [Part(r0, min(step, rows - r0),
                          dev.pool.get(f"{name}/{i}", wt.words(min(step, rows - r0), cols),
                                       np.uint32, kind="storage"))
                     for i, r0 in enumerate(range(0, rows, step))]
        for part in parts:
            r0, n, buf, base = part.row0, part.rows, part.buffer, part.w_off
            h_off, s_off, _ = wt.streams(n, cols)
            qpr, hpr = wt.streams(1, cols)[:2]              # q and h words per row
            spr = wt.words(1, cols) - hpr                    # s words per row
            hpr -= qpr
            chunk = max(1, CHUNK_BYTES // wt.file_bytes(1, cols))
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                raw = read_rows(r0 + a, r0 + b)
                bad = ggml_types.count_nonfinite(wt, raw)
                if bad:  # checked on the host: the device would compute on with NaN
                    raise ValueError(f"{name}: {bad} non-finite values (NaN or Inf) in the "
                                     f"weights or their fp16 scales (rows {r0 + a}..{r0 + b - 1})")
                q, h, s = ggml_types.split(wt, raw, b - a, cols)
                upload_words(dev, buf, base + a * qpr, q)
                upload_words(dev, buf, base + h_off + a * hpr, h)
                upload_words(dev, buf, base + s_off + a * spr, s)
        return cls(wt, rows, cols, parts)

    @classmethod
    def from_bytes(cls, dev, name, kind, raw, rows, cols, max_rows=None):
        """From the raw GGUF bytes of the whole tensor."""
        wt = ggml_types.get(kind)
        raw = np.asarray(raw, np.uint8).reshape(-1)
        if raw.size != wt.file_bytes(rows, cols):
            raise ValueError(f"{name}: {wt.name} ({rows}, {cols}) is {wt.file_bytes(rows, cols)} "
                             f"bytes, got {raw.size}")
        rb = wt.file_bytes(1, cols)
        return cls.upload(dev, name, wt, rows, cols, lambda a, b: raw[a * rb:b * rb], max_rows)

    @classmethod
    def from_file(cls, dev, name, path, offset, kind, rows, cols, max_rows=None, parts=None):
        """From a tensor stored at byte `offset` of a GGUF file, read with plain file reads."""
        wt = ggml_types.get(kind)
        rb = wt.file_bytes(1, cols)

        def read(a, b):
            got = np.fromfile(path, np.uint8, count=(b - a) * rb, offset=offset + a * rb)
            if got.size != (b - a) * rb:
                raise ValueError(f"{path}: tensor {name} is cut short (rows {a}..{b})")
            return got
        return cls.upload(dev, name, wt, rows, cols, read, max_rows, parts)


class WeightArenas:
    """Places a model's weights in few storage buffers of at most the device's buffer limit.
    Why: a pipeline binds buffers, so one buffer per tensor means one compiled pipeline per
    layer and product; in shared buffers, every layer's product of the same type and shape
    shares one pipeline (the weight's offset is a push constant). Every tensor is planned
    first (place), then the buffers are made (parts) and filled (DeviceWeight.upload).
    A tensor that does not fit the current buffer starts a new one; one larger than a whole
    buffer is split by rows."""

    def __init__(self, dev, tag):
        self.dev, self.tag = dev, tag
        self.limit = dev.max_buffer_bytes // 4   # words per buffer
        self.used = [0]
        self._places = {}                        # name -> [(arena, w_off, row0, rows)]
        self._buffers = None

    def place(self, name, words_per_row, rows):
        """Reserve `rows` rows of `words_per_row` words for tensor `name`."""
        if self._buffers is not None:
            raise RuntimeError("the arenas exist already; place every tensor first")
        if words_per_row > self.limit:
            raise ValueError(f"{name}: one row of {4 * words_per_row} bytes exceeds "
                             f"{self.dev.name}'s {4 * self.limit} bytes per buffer")
        if self.used[-1] + words_per_row * rows > self.limit:
            self.used.append(0)
        out, r0 = [], 0
        while r0 < rows:
            fit = (self.limit - self.used[-1]) // words_per_row
            if fit == 0:
                self.used.append(0)
                continue
            n = min(fit, rows - r0)
            out.append((len(self.used) - 1, self.used[-1], r0, n))
            self.used[-1] += -(-n * words_per_row // 4) * 4   # the next part starts aligned
            r0 += n
        self._places[name] = out

    def parts(self, name):
        """The Parts of a placed tensor (making the buffers on first call)."""
        if self._buffers is None:
            self._buffers = [self.dev.pool.get(f"{self.tag}arena{i}", max(n, 1), np.uint32)
                             for i, n in enumerate(self.used)]
        return [Part(r0, n, self._buffers[a], off) for a, off, r0, n in self._places[name]]
